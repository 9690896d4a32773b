"""Errors that reach the user as one line: what is wrong and how to fix it."""


class LoralabError(Exception):
    """Base class: the CLI prints these as a single line, without a traceback."""


class ConfigError(LoralabError):
    """A configuration value is invalid; raised before any model loads."""


class DataError(LoralabError):
    """The data cannot be used as configured (missing file, columns, empty after filtering)."""


class ModelError(LoralabError):
    """The base model cannot be found or loaded as configured."""


class FreezeError(LoralabError):
    """Targets matched nothing, or a base weight is trainable."""


class MergeCheckError(LoralabError):
    """The merged model's outputs differ from the adapter model's beyond tolerance."""


class CheckpointError(LoralabError):
    """A checkpoint did not read back as it was saved, or cannot be resumed from."""
