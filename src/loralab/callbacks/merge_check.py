"""After fit: merge the adapter into the base and prove the merged model gives the same logits,
then save it with `save_pretrained`, load it back with plain transformers and compare again.

A k-bit (bitsandbytes) base is merged into a dequantized float copy, not requantized: the report
says so, measures the dequantization alone, and uses the `quantized_<bits>bit` tolerance."""

from __future__ import annotations

import copy
import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from loralab.callbacks.contributions import SummaryContributor
from loralab.console import to_log_files
from loralab.distributed import sharded_strategy
from loralab.errors import ConfigError, MergeCheckError, first_line
from loralab.io import write_dir, write_json
from loralab.loggers import attach_file
from loralab.models.quantized import dequantized_copy, quantization_of
from loralab.rundir import ADAPTER_WEIGHTS, MERGE_REPORT
from loralab.tasks import get_task
from loralab.timing import phase_of, timed

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = {
    "float32": 1e-4,
    "bfloat16": 2e-2,
    "float16": 5e-3,
    "quantized_4bit": 3e-2,
    "quantized_8bit": 5e-2,
}


def compare_logits(ref: torch.Tensor, got: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    """Max absolute error, max error relative to the largest |logit|, and top-1 agreement,
    over the positions where `mask` is 1 (all positions for classification logits)."""
    ref, got = ref.float(), got.float()
    if mask is not None and ref.dim() == 3:
        keep = mask.bool()
        ref, got = ref[keep], got[keep]
    diff = (ref - got).abs()
    max_abs = diff.max().item() if diff.numel() else 0.0
    scale = ref.abs().max().item() if ref.numel() else 1.0
    return {
        "max_abs_err": max_abs,
        "max_rel_err": max_abs / max(scale, 1e-12),
        "top1_agreement": (ref.argmax(-1) == got.argmax(-1)).float().mean().item(),
    }


@contextmanager
def kept_trainable(model: torch.nn.Module) -> Iterator[None]:
    """Restore every parameter's requires_grad on exit: peft's `disable_adapter()` switches
    gradients back on for every adapter tensor when it ends (LoRA-FA's frozen A included)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


def merged_copy(peft_model: torch.nn.Module) -> torch.nn.Module:
    """A merged copy of the model: W0 + ΔW folded in, adapter layers removed, and each module
    trained in full (a classification head) replaced by its trained copy. peft's own merge does the
    last step for LoRA but not for every method (VeRA's fails on a head that is not a Linear)."""
    model = copy.deepcopy(peft_model)
    unwrap_trained_copies(model)
    return model.merge_and_unload()


def unwrap_trained_copies(peft_model: torch.nn.Module) -> None:
    """Put each modules_to_save module's trained copy in place of its wrapper, in place."""
    from peft.utils import ModulesToSaveWrapper

    for name, module in list(peft_model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, child = name.rpartition(".")
            setattr(peft_model.get_submodule(parent), child, module.modules_to_save[module.active_adapters[0]])


class MergeCheck(SummaryContributor, pl.Callback):
    """Fails the run (MergeCheckError) when merged logits differ beyond the dtype's tolerance."""

    def __init__(
        self,
        run_dir: str,
        merged_dir: str,
        probe_examples: int = 8,
        tolerance: dict[str, float] | None = None,
        save_merged: bool = True,
        model: Any = None,
        adapter_dir: str | None = None,
        rebuild: str = "auto",
    ) -> None:
        if rebuild not in ("auto", "always", "never"):
            raise ConfigError(f"merge_check.rebuild must be auto, always or never, got {rebuild!r}")
        # the model source and the saved final adapter: what a sharded run's check rebuilds from
        self.model_source = model
        self.adapter_dir = Path(adapter_dir) if adapter_dir else None
        self.rebuild = rebuild
        self.run_dir = Path(run_dir)
        self.merged_dir = Path(merged_dir)
        self.probe_examples = probe_examples
        self.tolerance = {**DEFAULT_TOLERANCE, **(dict(tolerance) if tolerance else {})}
        self.save_merged = save_merged
        self.report: dict = {}

    def merge(self, peft_model: torch.nn.Module) -> torch.nn.Module:
        """A merged copy of the model (see merged_copy)."""
        return merged_copy(peft_model)

    def probe_batch(self, trainer: pl.Trainer) -> dict:
        """A fixed batch: the first `probe_examples` validation examples (the same whatever the
        number of processes, whose validation loaders each hold a share)."""
        dm = trainer.datamodule
        rows = dm.val_set.with_format(columns=["input_ids", "labels"])
        return dm.collator()([rows[i] for i in range(min(self.probe_examples, len(rows)))])

    def rebuilt_model(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.nn.Module:
        """The adapter model rebuilt on this process from the base and the saved final adapter.
        Under FSDP or ZeRO-3 no process holds the trained model whole; the saved adapter was
        gathered from every shard and checked by hash, so this is the trained model."""
        from peft import PeftModel

        if self.model_source is None or self.adapter_dir is None:
            raise ConfigError("merge_check needs model and adapter_dir to rebuild the model: keep them in its config")
        base = self.model_source.load_model(pl_module.adapter.task, trainer.datamodule.labels)
        return PeftModel.from_pretrained(base, str(self.adapter_dir)).eval()

    @timed("merge_check")
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        sharded = sharded_strategy(trainer)
        rebuild = self.rebuild == "always" or (self.rebuild == "auto" and sharded)
        if sharded and not rebuild:
            raise ConfigError(
                f"merge_check.rebuild=never, but under {type(trainer.strategy).__name__} no process holds the "
                "trained model whole: set callbacks.merge_check.rebuild=auto"
            )
        labels = trainer.datamodule.labels
        try:
            if rebuild:
                rebuilt = self.rebuilt_model(trainer, pl_module)
                self.report = self.check(pl_module, self.probe_batch(trainer), rebuilt, labels=labels)
                self.report["rebuilt_from"] = str(self.adapter_dir)
            else:
                self.report = self.check(pl_module, self.probe_batch(trainer), labels=labels)
        except Exception as exc:  # noqa: BLE001 (any failure of the merge is the run's one-line error)
            to_log_files("the merge check failed:\n" + traceback.format_exc())
            where = (
                f"the trained adapter is saved in {self.adapter_dir}" if self.adapter_dir else "the adapter is saved"
            )
            self.report = {
                "passed": False,
                "error": first_line(exc),
                "message": f"merge check could not merge or compare the model ({first_line(exc)}); {where}; "
                "the traceback is in train.log",
            }
        path = write_json(self.run_dir / MERGE_REPORT, self.report)
        attach_file(trainer.loggers, path, self.run_dir)
        for logger in trainer.loggers:
            logger.log_metrics(
                {f"merge/{k}": float(v) for k, v in self.report.get("merged", {}).items()},
                step=trainer.global_step,
            )
        if not self.report["passed"]:
            raise MergeCheckError(self.report["message"])

    def check(
        self,
        pl_module: pl.LightningModule,
        batch: dict,
        peft_model: torch.nn.Module | None = None,
        labels: list[str] | None = None,
    ) -> dict:
        """Run the comparisons on `peft_model` (default: the trained model in `pl_module`) and
        return the report (does not raise on a mismatch). With the model source and the saved
        adapter known, the saved adapter is loaded onto a fresh base and compared too."""
        peft_model = pl_module.model if peft_model is None else peft_model
        task = pl_module.adapter.task
        was_training = peft_model.training
        with kept_trainable(peft_model):
            peft_model.eval()
            try:
                report = self._compare(pl_module, peft_model, batch, task, labels)
            finally:
                if was_training:
                    peft_model.train()
        tol = report["tolerance_rel"]
        failures = [
            f"{stage}: max relative logit error {report[stage]['max_rel_err']:.3g} > {tol:g}"
            for stage in ("merged", "reloaded", "saved_adapter")
            if stage in report and "max_rel_err" in report[stage] and report[stage]["max_rel_err"] > tol
        ]
        saved = report.get("saved_adapter", {})
        if saved.get("error"):
            failures.append(f"saved adapter: {saved['error']}")
        for kind in ("missing_keys", "unexpected_keys"):
            if saved.get(kind):
                keys = saved[kind]
                failures.append(f"saved adapter has {len(keys)} {kind.replace('_', ' ')} ({', '.join(keys[:2])})")
        # a merge that dropped the adapter entirely would pass when the adapter moves the logits
        # by less than the tolerance: then the check cannot tell, and says so
        report["vacuous"] = report["adapter_effect"]["max_rel_err"] <= tol
        report["passed"] = not failures
        quantized = "quantized_base" in report
        report["message"] = (
            "merge check passed"
            if not failures
            else "merge check failed (" + "; ".join(failures) + "): the merged model or the saved adapter does not "
            "reproduce the adapter model"
            + (" (quantized base: the error includes dequantization)" if quantized else "")
            + "; see merge_report.json"
        )
        if report["vacuous"]:
            log.warning("the adapter moves the logits less than the tolerance (B = 0?): the merge check proves little")
        return report

    def _compare(
        self, pl_module: pl.LightningModule, peft_model: torch.nn.Module, batch: dict, task: str, labels: list | None
    ) -> dict:
        device = next(peft_model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        dtype = str(next(peft_model.parameters()).dtype).replace("torch.", "")
        quantized = quantization_of(peft_model)
        if quantized:
            dtype = quantized["compute_dtype"]
        tol_name = f"quantized_{quantized['bits']}bit" if quantized else dtype
        tol = self.tolerance.get(tol_name, self.tolerance["float32"])
        mask = get_task(task).logit_mask(batch)
        _logits = get_task(task).logits

        ref = _logits(peft_model, batch)
        with peft_model.disable_adapter():
            base = _logits(peft_model, batch)
        extra: dict = {}
        if quantized:
            # merging into k-bit weights would requantize W0 + ΔW: merge into a float copy instead
            float_model = dequantized_copy(peft_model)
            with float_model.disable_adapter():
                extra["dequantization"] = compare_logits(base, _logits(float_model, batch), mask)
            extra["quantized_base"] = {**quantized, "merged_into": f"a copy dequantized to {dtype}"}
            extra["error_includes_dequantization"] = True
            unwrap_trained_copies(float_model)
            merged_model = float_model.merge_and_unload()
        else:
            merged_model = self.merge(peft_model)
        merged = _logits(merged_model, batch)
        report: dict = {
            "dtype": dtype,
            "tolerance_name": tol_name,
            "tolerance_rel": tol,
            "probe_examples": int(batch["input_ids"].shape[0]),
            # how far the adapter moves the logits: near zero means the check proves little
            "adapter_effect": compare_logits(base, ref, mask),
            "merged": compare_logits(ref, merged, mask),
            **extra,
        }
        if self.save_merged:

            def fill(tmp: Path) -> None:
                merged_model.save_pretrained(tmp)
                pl_module.tokenizer.save_pretrained(tmp)

            with phase_of(pl_module, "save"):
                write_dir(self.merged_dir, fill)
            report["merged_dir"] = str(self.merged_dir)
            del merged_model
            merged = _logits(self._reload(task, dtype).to(device).eval(), batch)
            report["reloaded"] = compare_logits(ref, merged, mask)
        else:
            del merged_model
        if self.model_source is not None and self.adapter_dir is not None and self.adapter_dir.is_dir():
            # the saved artefact, not the live model: adapter/ in plain peft on a base loaded afresh
            report["saved_adapter"] = self._check_saved(task, labels, batch, merged, mask, device)
        return report

    def _check_saved(
        self, task: str, labels: list | None, batch: dict, merged: torch.Tensor, mask: torch.Tensor, device: Any
    ) -> dict:
        """Load adapter/ with `PeftModel.from_pretrained` onto a freshly loaded base (nothing shared
        with the trained model) and compare its logits with the merged model's; name any key the
        file lacks or has beyond what the adapter's config implies."""
        from peft import PeftModel, get_peft_model_state_dict
        from safetensors.torch import load_file

        found = set(load_file(str(self.adapter_dir / ADAPTER_WEIGHTS)))
        base = self.model_source.load_model(task, labels)
        out: dict = {"adapter_dir": str(self.adapter_dir), "compared_with": "merged/" if self.save_merged else "merged"}
        try:
            loaded = PeftModel.from_pretrained(base, str(self.adapter_dir)).to(device).eval()
        except KeyError as exc:  # peft looks up each module's tensors by key
            return {**out, "error": "PeftModel.from_pretrained failed", "missing_keys": [str(exc.args[0])]}
        except Exception as exc:  # noqa: BLE001 (whatever keeps plain peft from loading it)
            return {**out, "error": f"PeftModel.from_pretrained failed ({first_line(exc)})"}
        expected = set(get_peft_model_state_dict(loaded))
        out["missing_keys"] = sorted(expected - found)
        out["unexpected_keys"] = sorted(found - expected)
        return {**out, **compare_logits(merged, get_task(task).logits(loaded, batch), mask)}

    def _reload(self, task: str, dtype: str) -> torch.nn.Module:
        return get_task(task).model_class().from_pretrained(self.merged_dir, dtype=getattr(torch, dtype))

    def summary_fields(self) -> dict:
        """The merge result for summary.json."""
        if not self.report:
            return {}
        return {
            "merge_passed": self.report["passed"],
            "merge_max_abs_err": self.report.get("merged", {}).get("max_abs_err"),
            "merge_max_rel_err": self.report.get("merged", {}).get("max_rel_err"),
            "reload_max_abs_err": self.report.get("reloaded", {}).get("max_abs_err"),
            "saved_adapter_max_rel_err": self.report.get("saved_adapter", {}).get("max_rel_err"),
            "merged_dir": self.report.get("merged_dir"),
            **(
                {
                    "merge_quantized_bits": self.report["quantized_base"]["bits"],
                    "merge_dequantization_max_rel_err": self.report["dequantization"]["max_rel_err"],
                }
                if "quantized_base" in self.report
                else {}
            ),
        }
