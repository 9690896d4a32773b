"""compute.compile: torch.compile of the model's repeated blocks (its decoder layers: the classes
transformers names in `_no_split_modules`) for the training steps, regional compilation as
torchtune and transformers do it: one graph per block kind, reused by every layer of that kind,
so that compiling costs one layer's time, not the model's.

Only the training steps run compiled. Validation, generation, the merge check and the saves run
the same modules eagerly: they run in eval mode, with key/value caches and growing lengths,
shapes a training graph does not cover, and a compiled block could not be copied for the merge
check. Inductor's C++ backend compiles on a CPU (it needs a C compiler), Triton on CUDA."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def repeated_blocks(model: Any) -> list[Any]:
    """The model's blocks by transformers' own list of them (`_no_split_modules`), in order."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(hf, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


class BlockCompiler:
    """Compiles a model's blocks once, and switches them between compiled (training steps) and
    eager (everything else) by setting what nn.Module.compile sets."""

    def __init__(self, model: Any) -> None:
        import torch

        self.blocks = repeated_blocks(model)
        # one compiled callable per block; torch compiles each block kind once and reuses the graph
        self.compiled = {id(b): torch.compile(b._call_impl) for b in self.blocks}
        self.on = False

    def __len__(self) -> int:
        return len(self.blocks)

    def train_mode(self) -> None:
        for block in self.blocks:
            block._compiled_call_impl = self.compiled[id(block)]
        self.on = True

    def eager_mode(self) -> None:
        for block in self.blocks:
            block._compiled_call_impl = None
        self.on = False
