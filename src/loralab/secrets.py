"""Keeping credentials out of what a run writes.

Credentials reach loralab through the environment (WANDB_API_KEY, HF_TOKEN, ...), never through
the config or the command line: the command line is saved with the run (run_meta.json, Hydra's
.hydra/overrides.yaml, W&B's metadata). `check_command_line` refuses a secret there before Hydra
writes anything; `redact` replaces secrets in what loralab writes itself (the resolved config,
run_meta.json, the config logged to W&B and CSV), should one arrive through an interpolation such
as ${oc.env:HF_TOKEN}.
"""

from __future__ import annotations

import os
import re
from typing import Any

# environment variables whose values are secrets
SECRET_ENV = re.compile(r"(TOKEN|API_KEY|APIKEY|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
# config keys whose values are secrets (not `pad_token`, `max_new_tokens`: whole names only)
SECRET_KEY = re.compile(
    r"^(token|hf_token|hub_token|access_token|auth_token|api_key|apikey|wandb_api_key|secret|password|passwd)$",
    re.IGNORECASE,
)
# what a Hugging Face token looks like, should one be typed on the command line (a W&B key is 40
# hex digits, like a git commit: recognised only by its value in the environment)
SECRET_SHAPES = (re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),)
MIN_LENGTH = 8  # shorter values (`1`, `true`) would match everywhere
REDACTED = "<redacted>"


def secret_values() -> dict[str, str]:
    """The environment's secrets, value -> variable name."""
    return {v: k for k, v in os.environ.items() if SECRET_ENV.search(k) and len(v) >= MIN_LENGTH}


def redact(node: Any, secrets: dict[str, str] | None = None) -> Any:
    """`node` (dicts, lists, strings) with every secret value, and every value under a secret's key,
    replaced by <redacted>."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(node, dict):
        return {k: REDACTED if _secret_key(k, v) else redact(v, secrets) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(redact(v, secrets) for v in node)
    if isinstance(node, str):
        for value in secrets:
            node = node.replace(value, REDACTED)
    return node


def _secret_key(key: Any, value: Any) -> bool:
    return isinstance(key, str) and SECRET_KEY.match(key.rsplit(".", 1)[-1]) is not None and value is not None


def check_command_line(argv: list[str]) -> str | None:
    """Why `argv` must be refused (a secret in it), or None."""
    secrets = secret_values()
    for arg in argv:
        key, _, value = arg.partition("=")
        named = next((name for v, name in secrets.items() if v in arg), None)
        if named or (value and _secret_key(key.lstrip("+~"), value)) or any(p.search(arg) for p in SECRET_SHAPES):
            what = f"the value of ${named}" if named else f"{key.lstrip('+~')}=..." if value else "a token"
            return (
                f"the command line holds a secret ({what}); command lines are saved with the run: pass "
                "credentials through the environment instead (WANDB_API_KEY, HF_TOKEN)"
            )
    return None
