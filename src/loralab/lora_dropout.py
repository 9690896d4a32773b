"""LoRA dropout, computed with less work than peft's `nn.Dropout` (two switches, both on by default).

`compute.shared_dropout`: the adapters that read the same tensor (q, k and v read the attention's
normalised input; gate and up the MLP's) get the same dropped copy, drawn once, instead of one mask
and one copy each. Each adapter still sees every input element kept with probability 1 - p and
scaled by 1 / (1 - p); what changes is that the adapters on one input share their mask. Four masks
per decoder layer instead of seven on a Llama, and autograd keeps one dropped copy where it kept
three. Sharing is scoped to one call of the adapters' common parent module (the attention block,
the MLP): the parent's forward hooks empty the cache when it starts and when it ends. So nothing is
held between calls, and a recomputation (gradient checkpointing re-running a layer) starts empty
and draws the same masks in the same order from the replayed random state, as the first pass did.
An adapter alone under its parent (o_proj, down_proj, the output head) keeps a mask of its own.

`compute.fast_dropout` (CPU tensors): the mask is drawn as 16-bit random integers, four from each
64-bit draw of torch's generator, compared with a threshold, and applied by a masked fill; torch's
CPU dropout draws a float Bernoulli mask element by element, divides it by 1 - p and multiplies
(its mask, a float, is what autograd keeps; here a bool). The keep probability is 1 - p rounded to
a multiple of 2^-16 (off by at most 2^-17 = 7.6e-6), and the scale is the exact inverse of that
probability, so every element keeps its expectation. Where rounding would keep everything or
nothing (p within 2^-17 of 0 or 1), and on other devices (CUDA's dropout is one fused kernel),
torch's own dropout runs. Both draw from torch's default generator: seeded runs repeat exactly."""

from __future__ import annotations

from typing import Any

import torch

LEVELS = 1 << 16  # a 16-bit random integer takes this many values


def kept_levels(p: float) -> int:
    """Of the 65,536 values of a 16-bit random integer, how many keep an element at dropout rate p."""
    return round((1.0 - p) * LEVELS)


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """x with each element kept with probability kept_levels(p) / 2^16 and scaled by its inverse
    (p must leave 0 < kept_levels(p) < 2^16)."""
    keep = kept_levels(p)
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(1 << 63), None)
    draws = words.view(torch.int16)[:n].view(x.shape)  # uniform over [-2^15, 2^15)
    drop = draws >= keep - LEVELS // 2
    return x.masked_fill(drop, 0).mul_(LEVELS / keep)


class LoraDropout(torch.nn.Dropout):
    """nn.Dropout whose mask is drawn by `fast_dropout` on CPU tensors when `fast` (and p allows)."""

    def __init__(self, p: float, fast: bool = False) -> None:
        super().__init__(p)
        self.fast = bool(fast) and 0 < kept_levels(p) < LEVELS

    def drop(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast and x.device.type == "cpu":
            return fast_dropout(x, self.p)
        return super().forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(x) if self.training else x


class SharedDropout(LoraDropout):
    """LoraDropout that returns the same output for the same input tensor (by identity) while its
    cache is open; `forget()` empties it. In eval mode, the input itself."""

    def __init__(self, p: float, fast: bool = False) -> None:
        super().__init__(p, fast)
        self._seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        hit = self._seen.get(id(x))
        if hit is not None and hit[0] is x:
            return hit[1]
        out = self.drop(x)
        # the input is held with its output, so its id cannot be reused while cached
        self._seen[id(x)] = (x, out)
        return out

    def forget(self, *_: Any) -> None:
        """Empty the cache (a forward hook of the parent module: before and after each call)."""
        self._seen.clear()

    def __getstate__(self) -> dict:
        # copies and pickles never carry cached activations
        state = self.__dict__.copy()
        state["_seen"] = {}
        return state


def install_dropout(model: torch.nn.Module, share: bool = True, fast: bool = False) -> tuple[int, int]:
    """Replace the LoRA layers' dropout (rate p > 0): with `share`, siblings under one parent
    module that drop at the same rate get one SharedDropout, opened and emptied by that parent's
    forward; with `fast`, every replaced dropout (and each other LoRA dropout) draws its mask by
    `fast_dropout`. Returns (layers now sharing, layers with the fast mask). Layers without dropout
    (p = 0: an identity) are left alone."""
    from loralab.variants.lora import ADAPTER, lora_layers

    names = dict(model.named_modules())
    groups: dict[tuple[str, float], list[Any]] = {}
    for name, layer in lora_layers(model).items():
        dropout = layer.lora_dropout[ADAPTER]
        if type(dropout) is torch.nn.Dropout and dropout.p > 0:
            groups.setdefault((name.rpartition(".")[0], dropout.p), []).append(layer)
    shared = fast_count = 0
    for (parent_name, p), layers in groups.items():
        if share and len(layers) > 1:
            replacement = SharedDropout(p, fast)
            parent = names[parent_name]
            parent.register_forward_pre_hook(replacement.forget)
            parent.register_forward_hook(replacement.forget)
            shared += len(layers)
            replacements = [replacement] * len(layers)
        elif fast:
            replacements = [LoraDropout(p, fast) for _ in layers]
        else:
            continue
        for layer, replacement in zip(layers, replacements, strict=True):
            replacement.train(layer.lora_dropout[ADAPTER].training)
            layer.lora_dropout[ADAPTER] = replacement
            fast_count += int(replacement.fast)
    return shared, fast_count
