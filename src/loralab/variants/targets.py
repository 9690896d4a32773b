"""Which modules a target pattern selects, decided by peft's own matching: a list of names (exact or
dotted suffix), a regex (full match on the module's full name) or `all-linear` (every Linear and
Conv1D but the output head); nothing inside a module trained in full (modules_to_save, a
classification head) gets an adapter. Then the checks peft does not make: module types an adapter
can wrap, tied weights, rank against width."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loralab.errors import FreezeError
from loralab.tasks import get_task
from loralab.tasks.seq_cls import PEFT_HEAD_NAMES

if TYPE_CHECKING:  # imported by the config checks, before torch loads
    from torch import nn


def task_heads(model: nn.Module, task: str) -> list[str]:
    """The modules the task trains in full because a pretrained checkpoint has no weights for them
    (a classification head, whatever its modules are called)."""
    return get_task(task).heads(model)


@dataclass
class Resolution:
    """What an adapter config selects in a model, by peft's own rules: the modules each target
    pattern adapts, the modules each modules_to_save entry trains in full (a classification
    head's entries included), and what a pattern selects that trains in full instead."""

    targets: dict[str, list[str]]
    saves: dict[str, list[str]]
    heads: list[str] = field(default_factory=list)
    excluded: dict[str, list[str]] = field(default_factory=dict)

    def modules_to_save(self, cfg: object) -> list[str] | None:
        """The modules_to_save list to give peft: the config's entries and the head's modules
        (peft adds classifier and score itself)."""
        entries = list(cfg.modules_to_save or [])
        entries += [h for h in self.heads if h not in entries and h not in PEFT_HEAD_NAMES]
        return entries or None


def _entries(cfg: object, heads: list[str], task: str) -> list[str]:
    """Every modules_to_save entry peft will hold: the config's, the head's, and peft's own."""
    extra = [*heads, *PEFT_HEAD_NAMES] if get_task(task).labelled else []
    return list(dict.fromkeys([*(cfg.modules_to_save or []), *extra]))


def _peft_view(targets: str | list[str], saves: list[str], task: str) -> Any:
    """A peft LoraConfig holding only what peft's target matching reads."""
    from peft import LoraConfig

    from loralab.variants.lora import peft_task

    targets = list(targets) if isinstance(targets, (list, tuple)) else targets
    return LoraConfig(r=1, target_modules=targets, modules_to_save=list(saves) or None, task_type=peft_task(task))


def resolve_targets(model: nn.Module, cfg: object, task: str = "causal_lm") -> Resolution:
    """Which modules `cfg.target_modules` adapts and `cfg.modules_to_save` trains in `model`, as
    peft decides it (its matching, its `all-linear`, its rule that nothing inside a module trained
    in full gets an adapter). Works on a meta-device skeleton."""
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers, check_target_module_exists

    heads = task_heads(model, task)
    entries = _entries(cfg, heads, task)
    names = [n for n, _ in model.named_modules() if n]
    view = _peft_view(cfg.target_modules, entries, task)
    bare = _peft_view(cfg.target_modules, [], task)
    if cfg.target_modules == "all-linear":
        _maybe_include_all_linear_layers(view, model)
        _maybe_include_all_linear_layers(bare, model)
    chosen = [n for n in names if check_target_module_exists(view, n)]
    wanted = [n for n in names if check_target_module_exists(bare, n)]

    def by_pattern(found: list[str]) -> dict[str, list[str]]:
        if isinstance(cfg.target_modules, str):
            return {cfg.target_modules: found}
        return {t: [n for n in found if n == t or n.endswith("." + t)] for t in cfg.target_modules}

    excluded = {k: v for k, v in by_pattern([n for n in wanted if n not in set(chosen)]).items() if v}
    # peft wraps every module whose name ends with an entry (not only at a dot)
    all_names = [n for n, _ in model.named_modules(remove_duplicate=False) if n]
    saves: dict[str, list[str]] = {}
    taken: set[str] = set()
    for entry in entries:  # a module counts under the first entry that selects it
        saves[entry] = [n for n in all_names if n.endswith(entry) and n not in taken]
        taken.update(saves[entry])
    user = set(cfg.modules_to_save or [])
    saves = {e: v for e, v in saves.items() if v or e in user}
    return Resolution(by_pattern(chosen), saves, heads, excluded)


def check_matches(resolution: Resolution, cfg: object) -> None:
    """Every target pattern and modules_to_save entry must select at least one module."""
    for pattern, names in resolution.targets.items():
        if names:
            continue
        inside = resolution.excluded.get(pattern)
        if inside:
            raise FreezeError(
                f"target module pattern {pattern!r} selects only modules that train in full as modules_to_save "
                f"({', '.join(inside[:2])}), and peft puts no adapter inside those: target other modules, or "
                "drop the entry from variant.modules_to_save"
            )
        raise FreezeError(
            f"target module pattern {pattern!r} matches no module in the model: fix "
            "variant.target_modules (list the model's modules with model.named_modules())"
        )
    for entry in cfg.modules_to_save or []:
        if not resolution.saves.get(entry):
            raise FreezeError(
                f"modules_to_save entry {entry!r} matches no module in the model: fix variant.modules_to_save"
            )


def check_targets(model: nn.Module, cfg: object, task: str = "causal_lm") -> Resolution:
    """Resolve `cfg.target_modules` and `cfg.modules_to_save` in `model` as peft will; fail on a
    pattern that selects nothing."""
    resolution = resolve_targets(model, cfg, task)
    check_matches(resolution, cfg)
    return resolution


def match_targets(model: nn.Module, targets: str | list[str], task: str = "causal_lm") -> dict[str, list[str]]:
    """Pattern -> the module names it adapts, in model order (peft's rules)."""
    from types import SimpleNamespace

    return resolve_targets(model, SimpleNamespace(target_modules=targets, modules_to_save=None), task).targets


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
