"""One LoRA dropout mask per input (compute.shared_dropout): the adapters that read the same
tensor (q, k and v read the attention's normalised input; gate and up the MLP's) get the same
dropped copy, drawn once, instead of one mask and one copy each. Each adapter still sees every
input element kept with probability 1 - p and scaled by 1 / (1 - p); what changes is that the
adapters on one input share their mask. Four masks per decoder layer instead of seven on a Llama,
and autograd keeps one dropped copy where it kept three.

Sharing is scoped to one call of the adapters' common parent module (the attention block, the
MLP): the parent's forward hooks empty the cache when it starts and when it ends. So nothing is
held between calls, and a recomputation (gradient checkpointing re-running a layer) starts empty
and draws the same masks in the same order from the replayed random state, as the first pass
did. An adapter alone under its parent (o_proj, down_proj, the output head) keeps its own
dropout: there is nothing to share."""

from __future__ import annotations

from typing import Any

import torch


class SharedDropout(torch.nn.Dropout):
    """nn.Dropout that returns the same output for the same input tensor (by identity) while its
    cache is open; `forget()` empties it. In eval mode, the input itself."""

    def __init__(self, p: float) -> None:
        super().__init__(p)
        self._seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        hit = self._seen.get(id(x))
        if hit is not None and hit[0] is x:
            return hit[1]
        out = super().forward(x)
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


def share_dropout(model: torch.nn.Module) -> int:
    """Give the LoRA layers that are siblings under one parent module (and drop at the same rate
    p > 0) one SharedDropout, opened and emptied by that parent's forward; the number of layers now
    sharing. Layers without dropout (p = 0: an identity), and a layer alone under its parent, are
    left alone."""
    from loralab.variants.lora import ADAPTER, lora_layers

    names = dict(model.named_modules())
    groups: dict[tuple[str, float], list[Any]] = {}
    for name, layer in lora_layers(model).items():
        dropout = layer.lora_dropout[ADAPTER]
        if type(dropout) is torch.nn.Dropout and dropout.p > 0:
            groups.setdefault((name.rpartition(".")[0], dropout.p), []).append(layer)
    count = 0
    for (parent_name, p), layers in groups.items():
        if len(layers) < 2:
            continue
        shared = SharedDropout(p)
        shared.train(layers[0].lora_dropout[ADAPTER].training)
        for layer in layers:
            layer.lora_dropout[ADAPTER] = shared
        parent = names[parent_name]
        parent.register_forward_pre_hook(shared.forget)
        parent.register_forward_hook(shared.forget)
        count += len(layers)
    return count
