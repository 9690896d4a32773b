"""Command-line plumbing: one-line errors for bad overrides, closing W&B whatever happens."""

from __future__ import annotations

import os
import sys


def one_line_error(message: str) -> str:
    """Hydra's multi-line composition error as one line (search path and schema entries dropped)."""
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


def precheck_composition(argv: list[str], conf_dir: str) -> None:
    """Compose a single run once before Hydra does, and check it, so that an unknown option or key
    or a bad value is reported as one line and nothing is written. Multiruns, flags and hydra.*
    overrides are left to Hydra (and validate() in train)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    if os.environ.get("HYDRA_FULL_ERROR") == "1" or any(a.startswith("-") for a in argv):
        return
    from loralab.config import validate
    from loralab.errors import LoralabError

    overrides = [a for a in argv if not a.lstrip("+~").startswith("hydra.")]
    try:
        with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
            # the config checks too, before Hydra makes the run directory: a refused config writes nothing
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)  # for ${hydra:...} interpolations, as in the run
            with open_dict(cfg):
                del cfg["hydra"]
            validate(cfg)
            _check_model_location(cfg)
    except LoralabError as exc:
        print(f"loralab: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (HydraException, OmegaConfBaseException) as exc:
        cause = f"\n{exc.__cause__}" if exc.__cause__ else ""
        print(f"loralab: error: {one_line_error(str(exc) + cause)}", file=sys.stderr)
        sys.exit(2)
    except ValueError as exc:  # e.g. a group option given as a number: precision=32
        print(
            f"loralab: error: {one_line_error(str(exc))}: a config group takes an option name "
            "(for precision: 32-true, bf16-mixed, 16-mixed)",
            file=sys.stderr,
        )
        sys.exit(2)
    finally:
        GlobalHydra.instance().clear()


def _check_model_location(cfg) -> None:
    """Build the model source (it checks that a local model directory or packaged file exists;
    no weights load), so that a wrong path is refused before Hydra makes the run directory."""
    from hydra.utils import instantiate

    from loralab.errors import LoralabError

    try:
        instantiate(cfg.model)
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


def close_wandb(failed: bool) -> None:
    """Finish the W&B run of this process, marking it failed when the run failed."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1 if failed else 0)
