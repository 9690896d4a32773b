"""What a run prints: loralab's own progress and results. The start-up lines, adverts, deprecation
warnings and progress bars of the libraries underneath are kept quiet unless asked for with
`loralab-train --verbose` (or LORALAB_VERBOSE=1); their errors, and warnings loralab cannot
foresee, still show."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

VERBOSE_ENV = "LORALAB_VERBOSE"
VERBOSE_FLAG = "--verbose"

# loggers whose records below the level are start-up chatter: Lightning's "GPU available: False",
# its litlogger advert and "`Trainer.fit` stopped"; matplotlib's font cache; bitsandbytes' CPU
# kernel notice (it is imported by peft whether or not a k-bit base is used)
QUIET_LOGGERS = {
    "lightning.pytorch.utilities.rank_zero": logging.WARNING,
    "lightning.fabric.utilities.rank_zero": logging.WARNING,
    "matplotlib": logging.WARNING,
    "bitsandbytes": logging.ERROR,
}
# environment settings read by the libraries when they are imported: progress bars (tqdm's, the
# hub's, datasets'), transformers' advisory warnings, W&B's own lines
QUIET_ENV = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "WANDB_SILENT": "true",
}


def verbose() -> bool:
    """Whether the libraries' own output was asked for."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def take_verbose_flag(argv: list[str]) -> list[str]:
    """`argv` without --verbose, which sets LORALAB_VERBOSE=1 (Hydra would refuse the flag)."""
    if VERBOSE_FLAG in argv:
        os.environ[VERBOSE_ENV] = "1"
    return [a for a in argv if a != VERBOSE_FLAG]


def _deepspeed_errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def quiet_libraries() -> None:
    """Before the libraries are imported: their bars, adverts and deprecation warnings off."""
    if verbose():
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    # DeepSpeed (imported by transformers when installed) logs "Setting accelerator to CPU" on its
    # own handler at import; its logger object exists from here, and keeps this filter
    logging.getLogger("DeepSpeed").addFilter(_deepspeed_errors_only)
    # deprecations inside the libraries (transformers, peft, Lightning, torch) are theirs to fix
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


@contextlib.contextmanager
def log_to_stderr(name: str = "loralab") -> Iterator[None]:
    """loralab's records on stderr before Hydra sets up logging (the first run's model conversion
    happens in the checks that precede it)."""
    logger = logging.getLogger(name)
    if logger.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def to_log_files(text: str) -> None:
    """Write `text` into the run's log file (train.log) only: what the console shows in a table,
    the log keeps as plain lines."""
    record = logging.LogRecord("loralab", logging.INFO, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
