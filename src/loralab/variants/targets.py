"""Which modules a target pattern selects: a list of names (exact or dotted suffix, as in peft),
a regex (full match on the module's full name) or `all-linear` (every linear layer but the output head)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from loralab.errors import FreezeError

if TYPE_CHECKING:  # imported by the config checks, before torch loads
    from torch import nn

OUTPUT_HEADS = ("lm_head", "score", "classifier")


def _linear_names(model: nn.Module) -> list[str]:
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = []
    for name, module in model.named_modules():
        # GPT-2 style models use transformers' Conv1D as their linear layer
        if not isinstance(module, (nn.Linear, Conv1D)) or module is out_emb:
            continue
        if name.split(".")[-1] in OUTPUT_HEADS:
            continue
        names.append(name)
    return names


def _suffix_match(names: list[str], key: str) -> list[str]:
    return [n for n in names if n == key or n.endswith("." + key)]


def match_targets(model: nn.Module, targets: str | list[str]) -> dict[str, list[str]]:
    """Pattern -> the module names it selects, in model order."""
    names = [n for n, _ in model.named_modules() if n]
    if targets == "all-linear":
        return {"all-linear": _linear_names(model)}
    if isinstance(targets, str):
        rx = re.compile(targets)
        return {targets: [n for n in names if rx.fullmatch(n)]}
    return {t: _suffix_match(names, t) for t in targets}


def match_modules_to_save(model: nn.Module, entries: list[str] | None) -> dict[str, list[str]]:
    """modules_to_save entry -> module names (peft ignores entries that match nothing; we do not)."""
    names = [n for n, _ in model.named_modules() if n]
    return {e: _suffix_match(names, e) for e in entries or []}


def check_matches(target_matches: dict, save_matches: dict) -> None:
    """Every target pattern and modules_to_save entry must select at least one module."""
    for pattern, names in target_matches.items():
        if not names:
            raise FreezeError(
                f"target module pattern {pattern!r} matches no module in the model: fix "
                "variant.target_modules (list the model's modules with model.named_modules())"
            )
    for entry, names in save_matches.items():
        if not names:
            raise FreezeError(
                f"modules_to_save entry {entry!r} matches no module in the model: fix variant.modules_to_save"
            )


def check_targets(model: nn.Module, cfg: object) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Match `cfg.target_modules` and `cfg.modules_to_save` in `model`; fail on a pattern that
    selects nothing. Returns (target matches, modules_to_save matches)."""
    targets = match_targets(model, cfg.target_modules)
    saves = match_modules_to_save(model, cfg.modules_to_save)
    check_matches(targets, saves)
    return targets, saves


def trains(name: str, adapter_params: re.Pattern, bias: str) -> bool:
    """Whether a parameter of a peft model trains: the adapter's own tensors (`adapter_params`,
    modules_to_save copies included) and the biases that `bias` (none, all, lora_only) selects."""
    if adapter_params.search(name):
        return True
    if name.endswith(".bias"):
        return bias == "all" or (bias == "lora_only" and ".base_layer." in name)
    return False


def layer_of(name: str) -> str:
    """The transformer layer index in a module name, or 'other'."""
    m = re.search(r"\.(?:layers|h|layer|blocks)\.(\d+)\.", name + ".")
    return m.group(1) if m else "other"
