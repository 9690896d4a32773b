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


def _describe(names: list[str], model: nn.Module, limit: int = 2) -> str:
    shown = ", ".join(f"{n} ({type(model.get_submodule(n)).__name__})" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def adaptable(module: nn.Module) -> bool:
    """Whether peft's LoRA-family layers can wrap this module (linear, embedding, convolution,
    transformers' Conv1D, multi-head attention): containers such as a decoder layer cannot."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    kinds = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention, Conv1D)
    return isinstance(module, kinds)


def check_adaptable(model: nn.Module, targets: dict[str, list[str]]) -> None:
    """Refuse a pattern that selects modules no adapter can wrap (a regex such as '.*' selects the
    model, its layers and their blocks too), before peft fails on the first one."""
    for pattern, names in targets.items():
        bad = [n for n in names if not adaptable(model.get_submodule(n))]
        if bad:
            raise FreezeError(
                f"variant.target_modules {pattern!r} selects {len(bad)} module(s) an adapter cannot wrap: "
                f"{_describe(bad, model)}; adapters go on Linear, Embedding and Conv layers: narrow the pattern, "
                "e.g. variant.target_modules='.*_proj'"
            )


def _owners(model: nn.Module) -> dict[int, list[str]]:
    """Parameter id -> the modules holding it directly (tied weights have several)."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), []).append(name)
    return owners


def check_tied(model: nn.Module, targets: dict[str, list[str]], saves: dict[str, list[str]]) -> None:
    """Refuse an adapter or a trained copy on a weight the model shares between modules (tied input
    and output embeddings): merging into a shared weight changes the other module too, and a trained
    copy unties them, so the merged model would not reproduce the trained one."""
    owners = _owners(model)
    for key, matches, why in (
        ("variant.target_modules", targets, "merging the adapter into it would change both"),
        (
            "variant.modules_to_save",
            saves,
            "a trained copy would untie them and the merged model would not reload as trained",
        ),
    ):
        for names in matches.values():
            for name in names:
                for param in model.get_submodule(name).parameters(recurse=False):
                    others = [o for o in owners.get(id(param), []) if o != name]
                    if others:
                        raise FreezeError(
                            f"{key} selects {name}, whose weight is tied to {others[0]} (the model shares one "
                            f"tensor between them): {why}; remove {name.rsplit('.', 1)[-1]} from {key}"
                        )


def max_rank(module: nn.Module) -> int | None:
    """The largest rank a weight update of this module can have: min(d_in, d_out)."""
    from torch import nn

    if isinstance(module, nn.Embedding):
        return min(module.num_embeddings, module.embedding_dim)
    weight = getattr(module, "weight", None)
    if weight is None or weight.dim() < 2:
        return None
    return min(weight.shape[0], weight[0].numel())


def check_rank(model: nn.Module, targets: dict[str, list[str]], r: int) -> None:
    """Refuse r above a target's min(d_in, d_out): B·A then adds parameters without adding rank
    (and PiSSA's SVD has no r-th singular vector to start from)."""
    limits = [(rank, n) for names in targets.values() for n in names if (rank := max_rank(model.get_submodule(n)))]
    if not limits:
        return
    smallest, name = min(limits)
    if r > smallest:
        raise FreezeError(
            f"variant.r={r} exceeds the rank a weight update of {name} can have (min(d_in, d_out) = {smallest}): "
            f"above it B·A adds parameters, not rank; set variant.r <= {smallest}, or leave that module out of "
            "variant.target_modules"
        )


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
