"""`loralab-rerun`: run an experiment again from what its run directory saved, and check that it
gives the same numbers.

loralab-rerun outputs/dates_lora/2026-11-25_10-00-00            # into outputs/dates_lora/reruns/<run>-<time>
loralab-rerun outputs/dates_lora/2026-11-25_10-00-00 --verify   # then compare, exit 1 on a difference
loralab-rerun RUN_DIR --verify trainer.max_steps=80             # a changed setting (verify reports it)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from loralab.errors import LoralabError
from loralab.reporting.run_meta import FORMAT_VERSION
from loralab.reporting.summary import forgetting_figures
from loralab.rundir import GIT_DIFF, RunDir, RunFileError, check_writable

log = logging.getLogger("loralab")


class RerunError(LoralabError):
    """A run directory that cannot be rerun or verified."""


def load_original(run_dir: Path) -> tuple[Any, dict]:
    """The saved resolved config and run_meta.json of a run directory, checked."""
    if not run_dir.is_dir():
        raise RerunError(f"{run_dir} is not a directory: pass the run directory a training run wrote")
    run = RunDir(run_dir)
    try:
        meta = run.meta(needed="pass the run directory a training run wrote (it holds run_meta.json)")
    except RunFileError as exc:
        raise RerunError(str(exc)) from exc
    version = meta.get("format_version")
    if version is None or not run.config_file(meta).is_file():
        raise RerunError(
            f"{run_dir} was written by an older loralab (no saved resolved config): rerun it by hand with its "
            f"overrides: loralab-train {' '.join(meta.get('overrides') or [])}".rstrip()
        )
    if version > FORMAT_VERSION:
        raise RerunError(f"{run_dir} was written by a newer loralab (format {version}); upgrade loralab to rerun it")
    return run.resolved_config(meta), meta


def environment_differences(meta: dict, run_dir: Path) -> list[str]:
    """What differs between the original run's code and packages and this machine's."""
    from loralab.reporting.run_meta import git_state, package_versions

    notes = []
    then = meta.get("git") or {}
    now = git_state(Path(__file__).resolve().parents[2])
    old_diff = RunDir(run_dir).saved_diff(then.get("diff_file"))
    if then.get("commit") != now.get("commit"):
        notes.append(f"git commit differs: original {then.get('commit')}, now {now.get('commit')}")
    elif (old_diff or None) != (now.get("diff") or None):
        notes.append(
            f"the source tree's uncommitted changes differ from the original run's (commit {now.get('commit')}; "
            f"the original's are in {run_dir / (then.get('diff_file') or GIT_DIFF)})"
        )
    versions = package_versions()
    changed = [
        f"{name} {old} -> {versions.get(name)}"
        for name, old in (meta.get("packages") or {}).items()
        if versions.get(name) != old
    ]
    if changed:
        notes.append("package versions differ: " + ", ".join(changed))
    return notes


def _kind(value: Any) -> str | None:
    """The kind of a saved config value an override must keep (None: any)."""
    if isinstance(value, bool):
        return "a boolean (true or false)"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    return None


def _same_kind(old: Any, new: Any) -> bool:
    kind = _kind(old)
    if kind is None or new is None:
        return True
    if kind == "a number":
        return isinstance(new, (int, float)) and not isinstance(new, bool)
    return _kind(new) == kind


def rerun_config(original: Any, run_dir: Path, new_dir: Path, overrides: list[str], cwd: str | None = None) -> Any:
    """The original resolved config, writing into `new_dir`, fresh (no resume), with `overrides`
    (each keeping the kind of value the saved config has there). Relative paths the original run
    saved are taken relative to the directory it was started in (`cwd`), as it took them."""
    from omegaconf import OmegaConf

    from loralab.config.paths import resolve_paths
    from loralab.reporting.run_meta import relocate

    data = OmegaConf.to_container(original, resolve=False)
    old = str(data["paths"]["run_dir"])
    data = relocate(data, [(old, str(new_dir))])
    data["resume"] = None
    data["ckpt_path"] = None
    wandb = (data.get("logger") or {}).get("wandb")
    if isinstance(wandb, dict) and wandb.get("name"):
        wandb["name"] = f"{wandb['name']}_rerun"
    cfg = OmegaConf.create(data)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RerunError(f"override {item!r}: write key=value, e.g. trainer.max_steps=80")
        current = OmegaConf.select(cfg, key, default="__missing__")
        if isinstance(current, str) and current == "__missing__":
            raise RerunError(f"override {item!r}: the saved config has no key {key!r}")
        if OmegaConf.is_config(current):
            raise RerunError(
                f"override {item!r}: {key} is a config section; a rerun changes values (e.g. {key}.<field>=...), "
                f"not config groups: for another {key}, run loralab-train {key}=... with the original overrides"
            )
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except Exception as exc:  # a malformed value: YAML or OmegaConf says why
            raise RerunError(
                f"override {item!r} is not a valid value ({str(exc).splitlines()[0]}): check its brackets and "
                "quotes, e.g. 'variant.target_modules=[q_proj,v_proj]'"
            ) from exc
        new = OmegaConf.select(cfg, key)
        new = OmegaConf.to_container(new) if OmegaConf.is_config(new) else new
        if not _same_kind(current, new):
            raise RerunError(
                f"override {item!r}: {key} is {_kind(current)} in the saved config ({current!r}), got {new!r}: "
                f"e.g. {key}={current}"
            )
    resolve_paths(cfg, base=cwd)
    return cfg


def _tensors(adapter_dir: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for path in sorted(adapter_dir.glob("*.safetensors")):
        out.update({f"{path.name}:{k}": v for k, v in load_file(path).items()})
    return out


def verify(original_dir: Path, new_dir: Path) -> list[str]:
    """Differences between two runs: status, step count, trainable count, every final metric
    (exact float equality) and every adapter tensor (bitwise)."""
    import torch

    original, new = RunDir(original_dir), RunDir(new_dir)
    try:
        a = original.summary(needed="the original run has no summary")
        b = new.summary(needed="the rerun wrote no summary")
    except RunFileError as exc:
        raise RerunError(str(exc)) from exc
    diffs = []
    for key in ("status", "global_step", "trainable_params", "final_train_loss"):
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: {a.get(key)} -> {b.get(key)}")
    # the final validation metrics, the held-out test split's and forgetting
    before = {**(a.get("after") or {}), **(a.get("test") or {}), **forgetting_figures(a)}
    after = {**(b.get("after") or {}), **(b.get("test") or {}), **forgetting_figures(b)}
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            diffs.append(f"{key}: {before.get(key)!r} -> {after.get(key)!r}")
    ta, tb = _tensors(original.adapter_dir), _tensors(new.adapter_dir)
    if not ta:
        diffs.append(f"the original run has no adapter tensors in {original.adapter_dir}")
    for name in sorted(set(ta) | set(tb)):
        if name not in ta or name not in tb:
            diffs.append(f"adapter tensor {name}: only in the {'rerun' if name in tb else 'original'}")
        elif ta[name].dtype != tb[name].dtype or ta[name].shape != tb[name].shape:
            old, new = ta[name], tb[name]
            diffs.append(f"adapter tensor {name}: {old.dtype}{list(old.shape)} -> {new.dtype}{list(new.shape)}")
        elif not torch.equal(ta[name], tb[name]):
            err = (ta[name].double() - tb[name].double()).abs().max().item()
            diffs.append(f"adapter tensor {name}: differs (max abs difference {err:.3g})")
    return diffs


def _log_to(run_dir: Path) -> None:
    """Console and train.log, as a Hydra run has them."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(RunDir(run_dir).train_log_path)):
        handler.setFormatter(fmt)
        root.addHandler(handler)


def rerun(
    run_dir: str | Path, out: str | Path | None = None, overrides: list[str] | None = None, check: bool = False
) -> int:
    """Run again; with `check`, compare with the original. Returns the exit code."""
    import torch

    from loralab.reporting import run_meta
    from loralab.reporting.run_meta import config_hash
    from loralab.validation import validate

    run_dir = Path(run_dir).expanduser().resolve()
    original, meta = load_original(run_dir)
    run = RunDir(run_dir)
    summary = run.summary(lenient=True)
    if check and summary.get("status") != "completed":
        raise RerunError(f"{run_dir} did not complete (see its summary.json): there is nothing to verify against")
    problem = run.adapter_problem(summary) if check else None
    if problem:  # found before the rerun trains, not blamed on it afterwards
        raise RerunError(
            f"the original run's adapter is damaged ({problem}): there is nothing to verify against; rerun "
            "without --verify to train it again"
        )
    # beside the original, under reruns/: never a job directory of a sweep (a sweep's report and
    # its resume would count it as a job)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    new_dir = Path(out).expanduser().resolve() if out else run_dir.parent / "reruns" / f"{run_dir.name}-{stamp}"
    if new_dir.exists() and not new_dir.is_dir():
        raise RerunError(f"--out {new_dir} is a file: pass a new directory")
    if new_dir.exists() and any(new_dir.iterdir()):
        raise RerunError(f"{new_dir} already exists and is not empty: pass --out to a new directory")
    try:
        check_writable(new_dir, "--out" if out else "the rerun directory")
    except LoralabError as exc:
        raise RerunError(str(exc)) from None
    cfg = rerun_config(original, run_dir, new_dir, overrides or [], cwd=meta.get("cwd"))
    validate(cfg)  # bad overrides fail here, before anything loads
    _log_to(new_dir)
    for note in environment_differences(meta, run_dir):
        print(f"loralab-rerun: warning: {note}", file=sys.stderr)
    threads = (meta.get("host") or {}).get("torch_threads")
    if threads and threads != torch.get_num_threads():
        log.info(
            "using %d torch threads as the original run did (this process had %d)", threads, torch.get_num_threads()
        )
        torch.set_num_threads(threads)
    run_meta.RERUN = {
        "rerun_of": str(run_dir),
        "original_overrides": meta.get("overrides"),
        "overrides": overrides or [],
    }
    log.info("rerunning %s into %s", run_dir, new_dir)

    from loralab.train import run

    run(cfg)
    if not check:
        return 0
    diffs = verify(run_dir, new_dir)
    if config_hash(cfg) != meta.get("config_hash"):
        diffs.insert(
            0, f"config hash: {meta.get('config_hash')} -> {config_hash(cfg)} (overrides: {' '.join(overrides or [])})"
        )
    if diffs:
        print(
            f"loralab-rerun: verify failed: {len(diffs)} difference(s) between {run_dir} and {new_dir}:",
            file=sys.stderr,
        )
        for line in diffs[:12]:
            print(f"  {line}", file=sys.stderr)
        if len(diffs) > 12:
            print(f"  ... and {len(diffs) - 12} more", file=sys.stderr)
        return 1
    n = len(_tensors(RunDir(new_dir).adapter_dir))
    print(f"loralab-rerun: verify passed: final metrics and {n} adapter tensors are bitwise identical ({new_dir})")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="loralab-rerun", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run directory (it holds run_meta.json and config.yaml)")
    parser.add_argument("--verify", action="store_true", help="compare final metrics and adapter tensors bitwise")
    parser.add_argument("--out", help="the new run directory (default: <run_dir parent>/reruns/<name>-<time>)")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' start-up lines and bars too")
    parser.add_argument("overrides", nargs="*", help="key=value changes to the saved config")
    args = parser.parse_intermixed_args(argv)
    from loralab.commands import run_command

    def body() -> int:
        from loralab.secrets import check_command_line

        refused = check_command_line(args.overrides)
        if refused:
            raise RerunError(refused)
        return rerun(args.run_dir, args.out, args.overrides, check=args.verify)

    run_command("loralab-rerun", body, args.verbose)


if __name__ == "__main__":
    main()
