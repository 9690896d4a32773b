"""Commands that use a finished run: loralab-eval, loralab-generate, loralab-export."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from loralab.errors import LoralabError


def run_command(prog: str, body: Callable[[], int | None], verbose: bool = False) -> None:
    """Run a command's body; a loralab error or a file error ends it with one line and exit 2."""
    from loralab.console import VERBOSE_ENV, quiet_libraries

    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    quiet_libraries()
    try:
        code = body()
    except OSError as exc:  # a file that cannot be read or written, where it happened
        if not exc.filename:
            raise
        print(f"{prog}: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        # objects built by hydra.utils.instantiate arrive wrapped in an InstantiationException
        error = exc if isinstance(exc, LoralabError) else exc.__cause__
        if not isinstance(error, LoralabError):
            raise
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
