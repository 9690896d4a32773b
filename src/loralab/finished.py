"""A finished run, opened for use after training (loralab-eval, loralab-generate, loralab-export):
checked first (a directory that is not a run, a run that did not complete, a missing or damaged
adapter are refused in one line), then its model loaded as it was trained: the base with the
adapter in adapter/ (plain peft), or the standalone model in merged/. Nothing is written into the
run directory here.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loralab.errors import LoralabError
from loralab.reporting.run_meta import FORMAT_VERSION
from loralab.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS, RunDir, RunFileError

MERGED_DIR = "merged"


class RunUseError(LoralabError):
    """A run directory that cannot be used as asked."""


@dataclass
class FinishedRun:
    run: RunDir
    cfg: Any  # the resolved config the run saved (OmegaConf)
    summary: dict

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def merged_dir(self) -> Path:
        return self.path / MERGED_DIR

    @classmethod
    def open(cls, path: str | Path, command: str) -> FinishedRun:
        """The completed run at `path`, or RunUseError saying why it cannot be used."""
        path = Path(path)
        if not path.is_dir():
            raise RunUseError(f"{path} is not a directory: pass the run directory loralab-train wrote (outputs/...)")
        run = RunDir(path)
        try:
            summary = run.summary()
            meta = run.meta()
        except RunFileError as exc:
            raise RunUseError(str(exc)) from exc
        if summary is None and meta is None:
            inside = [p.name for p in sorted(path.iterdir()) if RunDir(p).is_run()][:3] if path.is_dir() else []
            hint = f" (it holds runs: {', '.join(inside)}; pass one of them)" if inside else ""
            raise RunUseError(f"{path} is not a loralab run directory: it has no summary.json or run_meta.json{hint}")
        status = (summary or {}).get("status")
        if status == "skipped" and summary.get("same_as"):  # a sweep job that repeated a finished run
            found = run.resolve_same_as(summary)
            if found is None:
                raise RunUseError(f"{path} was skipped as a repeat of {summary['same_as']}, which is gone")
            return cls.open(found.path, command)
        if status != "completed":
            why = (summary or {}).get("error")
            said = "no summary.json: still running, or killed"
            if status:
                said = f"status {status}" + (f": {why}" if why else "")
            raise RunUseError(
                f"{path} is not a completed run ({said}): {command} needs a finished run; resume it "
                "(loralab-train ... resume=auto) or rerun it (loralab-rerun) first"
            )
        if (meta or {}).get("format_version", 0) > FORMAT_VERSION:
            raise RunUseError(f"{path} was written by a newer loralab: upgrade loralab to use it")
        problem = run.adapter_problem(summary)
        if problem is None:
            for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                if not (run.adapter_dir / name).is_file():
                    problem = f"{run.adapter_dir / name} is missing"
        if problem:
            raise RunUseError(f"{path}: the saved adapter is not usable ({problem}); retrain or rerun the run")
        cfg = run.resolved_config(meta)
        if cfg is None:
            raise RunUseError(
                f"{path} has no saved config ({run.config_file(meta).name}): the run directory is damaged"
            )
        return cls(run, cfg, summary)

    # ---- the model ---------------------------------------------------------------------------
    def source(self) -> Any:
        from hydra.utils import instantiate

        return instantiate(self.cfg.model)

    def task(self) -> Any:
        """The task the run trained: the one run_meta.json records, for the run's data format and
        model (a config read; the data files are not needed)."""
        if getattr(self, "_task", None) is None:
            from loralab.tasks import choose_task

            recorded = (self.run.meta(lenient=True).get("data") or {}).get("task")
            if not recorded:
                raise RunUseError(f"{self.path}: run_meta.json does not say which task the run trained")
            source = self.source()
            self._task = choose_task(recorded, self.cfg.data.format, source.is_encoder_decoder(), source.name)
        return self._task

    def labels(self) -> list[str] | None:
        return (self.run.meta(lenient=True).get("data") or {}).get("labels")

    def load(self, merged: bool = False, device: str = "cpu") -> tuple[Any, Any]:
        """(model in eval mode, tokenizer): the base with adapter/, or merged/."""
        source = self.source()
        tokenizer = source.load_tokenizer()
        task = self.task()
        if merged:
            if not (self.merged_dir / "config.json").is_file():
                raise RunUseError(
                    f"{self.path} saved no merged model in merged/ (callbacks.merge_check.save_merged=false): "
                    "drop --merged to use the base with adapter/"
                )
            model = task.model_class().from_pretrained(self.merged_dir)
        else:
            import torch
            from peft import PeftModel

            # a base drawn at random from the run's seed (model.seed=null) is drawn as training drew it
            torch.manual_seed(int(self.cfg.seed))
            base = source.load_model(task.name, self.labels())
            model = PeftModel.from_pretrained(base, str(self.run.adapter_dir))
        return model.to(device).eval(), tokenizer


def package_versions() -> dict[str, str]:
    out = {}
    for name in ("loralab", "torch", "transformers", "peft"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
