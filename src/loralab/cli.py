"""The command line: `loralab-train` (and `python -m loralab`). Refuses bad overrides and configs in
one line before Hydra writes anything and before torch loads, then runs the training recipe
(loralab.train) under Hydra and reports a failure as one line."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from loralab.config.paths import CONF_DIR
from loralab.rundir import SUMMARY_FILE, quote_override, read_json, resolve_same_as


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
    text = "; ".join(parts)
    return text + _fix_hint(message)


def _fix_hint(message: str) -> str:
    """How to fix the override errors whose Hydra message does not say it."""
    import re

    merging = re.search(r"Error merging override ([^=\s]+)=(\S*)", message)
    if merging and "is not a ListConfig, list or tuple" in message:
        return f": pass a list, e.g. {merging.group(1)}=[{merging.group(2)}]"
    parsing = re.search(r"Error parsing override '([^=']+)=", message)
    if parsing:
        key = parsing.group(1)
        return f": quote a value with brackets, backslashes or spaces, e.g. \"{key}='...'\""
    return ""


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
    from loralab.validation import check_config

    check_config(cfg)


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


# ---- the console script -------------------------------------------------------------------
def objective_value(summary: dict, metric: str | None) -> float | None:
    """The value a sweeper (Optuna) optimises: `metric` from the final validation, None when the
    run failed or did not measure it (the sweeper records the trial as failed)."""
    if not metric:
        return None
    after = summary.get("after") or {}
    value = after.get(metric)
    if value is None and after:
        logging.getLogger("loralab").error(
            "objective %r was not measured by this run (it measured %s): set objective= one of them",
            metric,
            ", ".join(sorted(after)),
        )
    if value is None and summary.get("same_as"):  # a skipped job: the earlier run's value
        found = resolve_same_as(summary, summary.get("run_dir", "."))
        value = (read_json(found / SUMMARY_FILE).get("after") or {}).get(metric) if found else None
    return float(value) if isinstance(value, (int, float)) else None


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from loralab.train import run  # torch and the libraries load here, after the checks above

    try:
        return objective_value(run(cfg), cfg.get("objective"))
    except Exception as exc:
        report_failure(exc)
        return None


def main() -> None:
    """Console script `loralab-train` (and `python -m loralab`): the command line refused or
    checked before torch loads, then Hydra's run."""
    from loralab.console import quiet_libraries, take_verbose_flag
    from loralab.secrets import check_command_line
    from loralab.validation import register_schemas

    sys.argv = [sys.argv[0], *take_verbose_flag(sys.argv[1:])]
    quiet_libraries()  # before the libraries load: their bars and start-up lines off (--verbose: on)
    refused = check_command_line(sys.argv[1:])  # before Hydra saves the command line
    if refused:
        print(f"loralab: error: {refused}", file=sys.stderr)
        sys.exit(2)
    register_schemas()
    if any(a in HELP_FLAGS for a in sys.argv[1:]):
        print_help(sys.argv[1:], CONF_DIR)
        return
    run_dir = precheck_composition(sys.argv[1:], CONF_DIR)
    if run_dir is not None:  # the time-stamped directory is taken: this run gets its own
        sys.argv.append(run_dir)
    _hydra_main()
