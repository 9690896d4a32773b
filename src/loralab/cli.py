"""Command-line plumbing: one-line errors for bad overrides, closing W&B whatever happens."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loralab.errors import Interrupted


def one_line_error(message: str) -> str:
    """Hydra's multi-line composition error as one line (search path and schema entries dropped)."""
    if message.startswith("LexerNoViableAltException"):
        # an override with characters the grammar takes only inside quotes (emoji, most non-ASCII symbols)
        override = message.split(":", 1)[1].strip().splitlines()[0]
        key = override.split("=", 1)[0]
        return (
            f"cannot parse the override {override!r}: its value holds characters that Hydra accepts only in "
            f"quotes: quote the value, e.g. \"{key}='...'\" (a list: \"{key}=['...']\")"
        )
    parts: list[str] = []
    for line in (raw.strip() for raw in message.splitlines()):
        if line.startswith(("Config search path", "Set the environment variable")):
            break
        if not line or line.startswith(("_schema_", "full_key:", "object_type=", "reference_type=")):
            continue
        if parts and parts[-1].endswith(":"):
            parts[-1] += " " + line
        elif parts and parts[-1].startswith("Available options"):
            parts[-1] += ", " + line
        else:
            parts.append(line.rstrip("."))
    return "; ".join(parts)


HELP_FLAGS = ("--help", "-h")
FLAGS_HELP = """== Flags ==
-m, --multirun    a sweep: comma-separated values are its axes (variant=lora,vera variant.r=4,8)
--verbose         the libraries' own start-up lines, warnings and progress bars too (LORALAB_VERBOSE=1)
--cfg job         print the composed config and exit (--resolve: with interpolations resolved)
--hydra-help      Hydra's own help (its flags and groups)"""


def print_help(argv: list[str], conf_dir: str) -> None:
    """`loralab-train --help`: the config groups a user chooses from (not the schemas the YAML files
    extend, whose names start with `_`), the config composed with the given overrides, the flags."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType
    from omegaconf import OmegaConf

    overrides = [a for a in argv if not a.startswith("-")]
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()

        def groups(parent: str = "") -> list[str]:
            found = []
            for name in loader.list_groups(parent):
                group = f"{parent}/{name}" if parent else name
                if group == "hydra" or group.startswith("hydra/"):
                    continue  # Hydra's own groups: --hydra-help
                if loader.get_group_options(group, ObjectType.CONFIG):
                    found.append(group)
                found += groups(group)
            return found

        lines = []
        for group in sorted(groups()):
            options = [o for o in sorted(loader.get_group_options(group, ObjectType.CONFIG)) if not o.startswith("_")]
            if options:
                lines.append(f"{group}: {', '.join(options)}")
        cfg = compose("train", overrides=overrides)
    GlobalHydra.instance().clear()
    print(
        "loralab-train: config-driven LoRA experiments (README.md; every refusal: docs/bad-inputs.md)\n\n"
        "== Configuration groups ==\nCompose your configuration from those groups (group=option)\n\n"
        + "\n".join(lines)
        + "\n\n== Config ==\nOverride anything in the config (foo.bar=value)\n\n"
        + OmegaConf.to_yaml(cfg)
        + "\n"
        + FLAGS_HELP
    )


def quote_override(value: str) -> str:
    """A value as a quoted Hydra override string (paths with spaces, commas or `$` stay whole)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("${", "\\${") + "'"


def precheck_composition(argv: list[str], conf_dir: str) -> str | None:
    """Compose a single run once before Hydra does, and check it, so that an unknown option or key,
    a bad value, a target the model cannot take or an output directory that cannot be used is
    reported as one line and nothing is written. Multiruns are checked when they start (every job,
    loralab.sweep.SweepReport); other flags (--cfg, --help) are left to Hydra. With
    HYDRA_FULL_ERROR=1 the same checks raise with their tracebacks.

    Returns a `hydra.run.dir=` override to add when the time-stamped run directory already exists
    (another run started in the same second): the new run gets a directory of its own."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    if any(a.startswith("-") for a in argv):
        return None
    from loralab.errors import LoralabError

    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    try:
        with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
            # the config checks too, before Hydra makes the run directory: a refused config writes nothing
            cfg = compose("train", overrides=argv, return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)  # for ${hydra:...} interpolations, as in the run
            run_dir = str(cfg.hydra.run.dir)
            pinned = any(a.lstrip("+~").startswith("hydra.run.dir=") for a in argv)
            extra = None
            if not pinned and Path(run_dir).exists():
                n = 2
                while Path(f"{run_dir}_{n}").exists():
                    n += 1
                run_dir = f"{run_dir}_{n}"
                extra = f"hydra.run.dir={quote_override(run_dir)}"
            with open_dict(cfg):
                del cfg["hydra"]
            from loralab.console import log_to_stderr

            with log_to_stderr():  # the first run converts the default model here
                check_before_run(cfg, run_dir)
            return extra
    except LoralabError as exc:
        if full_error:
            raise
        print(f"loralab: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (HydraException, OmegaConfBaseException) as exc:
        if full_error:
            raise
        cause = f"\n{exc.__cause__}" if exc.__cause__ else ""
        print(f"loralab: error: {one_line_error(str(exc) + cause)}", file=sys.stderr)
        sys.exit(2)
    except ValueError as exc:  # e.g. a group option given as a number: precision=32
        if full_error or "Config group override" not in str(exc):
            raise
        print(
            f"loralab: error: {one_line_error(str(exc))}: a config group takes an option name "
            "(for precision: 32-true, bf16-mixed, 16-mixed)",
            file=sys.stderr,
        )
        sys.exit(2)
    finally:
        GlobalHydra.instance().clear()


def check_before_run(cfg, run_dir: str) -> None:
    """Everything that can be known before a run writes or loads anything: where the run writes
    (its directory must not hold a run that trained, and it and the cache must be writable; the
    first run's model conversion writes the cache), then the config itself (check_config)."""
    from loralab.rundir import check_new_run_dir, check_writable

    check_new_run_dir(run_dir, cfg.get("resume"), cfg.get("ckpt_path"))
    check_writable(run_dir, "hydra.run.dir")
    check_writable(cfg.paths.cache_dir, "paths.cache_dir (LORALAB_CACHE)")
    check_config(cfg)


def check_config(cfg, skeletons: dict | None = None):
    """The checks of one run's config, as a single run and every job of a sweep get them: its
    values, the W&B environment, the model's location, and the targets against the model's module
    tree (built without weights; `skeletons` keeps one per model across a sweep's jobs). Returns
    the typed config."""
    from omegaconf import OmegaConf

    from loralab.validation import validate
    from loralab.variants import get_variant

    typed = validate(cfg)
    if any("wandb" in str((node or {}).get("_target_", "")) for node in (cfg.get("logger") or {}).values()):
        from loralab.loggers import check_wandb_env

        check_wandb_env()
    skeletons = {} if skeletons is None else skeletons
    key = (OmegaConf.to_yaml(cfg.model, resolve=True), typed.data.task)
    if key not in skeletons:
        skeletons[key] = _check_model_location(cfg).skeleton(typed.data.task)
    get_variant(typed.variant.name).check_targets(skeletons[key], typed.variant, typed.data.task)
    return typed


def _check_model_location(cfg):
    """Build the model source (it checks that a local model directory or packaged file exists;
    no weights load), so that a wrong path is refused before Hydra makes the run directory."""
    from hydra.utils import instantiate

    from loralab.errors import LoralabError

    try:
        return instantiate(cfg.model)
    except Exception as exc:  # instantiate wraps what the source raised
        if isinstance(exc.__cause__, LoralabError):
            raise exc.__cause__ from None
        raise


def report_failure(exc: Exception) -> None:
    """A failed run: one line and exit 2 for loralab's own errors (a traceback for anything else).
    In a multirun the job's summary.json records the failure and the sweep goes on; the sweep
    exits non-zero at its end (loralab.sweep.SweepReport)."""
    import logging

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from loralab.errors import DISK_FULL, Interrupted, LoralabError

    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise exc
    # objects built by hydra.utils.instantiate arrive wrapped in an InstantiationException
    error = exc if isinstance(exc, LoralabError) else exc.__cause__
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:  # a log or W&B file: one line, not a traceback
        error = LoralabError(
            f"writing {exc.filename or 'a file'} failed: {exc.strerror}: free space there, "
            "then continue with resume=auto"
        )
    if isinstance(error, Interrupted):  # a sweep stops too: the signal was for the whole command
        print(f"loralab: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        log = logging.getLogger("loralab")
        if isinstance(error, LoralabError):
            log.error("job %s failed: %s", HydraConfig.get().job.num, error)
        else:
            log.exception("job %s failed", HydraConfig.get().job.num)
        return
    if not isinstance(error, LoralabError):
        raise exc
    print(f"loralab: error: {error}", file=sys.stderr)
    sys.exit(2)


@contextlib.contextmanager
def interrupts_before_fit() -> Iterator[None]:
    """Ctrl-C or SIGTERM while the data and the model load (before the training loop, where
    StopOnSignal takes over): the run stops with one line and the status `interrupted`, not a
    traceback and `failed`. Nothing was trained, so there is nothing to continue from."""
    message = (
        "stopped by {name} before training started (while loading the data and the model): nothing was "
        "trained; run the command again"
    )

    def on_sigterm(signum: int, frame: Any) -> None:
        raise Interrupted(message.format(name="SIGTERM"), signum)

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main else None
    try:
        yield
    except KeyboardInterrupt as exc:
        raise Interrupted(message.format(name="SIGINT"), signal.SIGINT) from exc
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def close_wandb(failed: bool) -> None:
    """Finish the W&B run of this process, marking it failed when the run failed."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1 if failed else 0)
