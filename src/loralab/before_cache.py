"""The untrained model's figures, kept between runs (`cache_before`, on by default).

Two figures of every run are measured on the model before it trains: the validation before training
(`validate_before`: val loss, ppl and the task's metrics, generation included) and forgetting's
`ce_before`. Where the adapter starts as an exact no-op, that model computes exactly what the base
computes, so every run on the same base, data and machine measures the same numbers again: a sweep
of 27 runs measured them 27 times. They are kept in `paths.cache_dir/before/` instead, under a key of
everything that decides them:

- the weights evaluated: a SHA-256 of the base's parameters and buffers (the adapter's own tensors
  are left out: they add exactly zero), and the model's class;
- what is evaluated: the tokenized val batches and generation prompts and references (or the probe's
  blocks), the batch sizes (padding changes float rounding), the generation and scoring settings;
- how it is computed: precision, device, torch / transformers / peft versions, the CPU's instruction
  sets and torch's thread count (each may change the last bits of a loss).

An adapter is an exact no-op when every adapter layer adds zero by construction: peft LoRA layers
whose B factors are all zero (plain LoRA, no DoRA or other variant path), VeRA layers whose
lambda_b is all zero. A model with any other adapter layer, with a module trained whole (a new
classification head), or under several processes is measured as before, and so is every run with
`cache_before=false`. summary.json's `before_cached` says which figures were read, from which
run. Nothing else differs: validation draws no random numbers, so training is the same run."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loralab.io import write_json

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
FORMAT = 1


def adds_nothing(model: torch.nn.Module) -> bool:
    """Whether every adapter layer of `model` adds exactly zero to its base layer's output (and
    no module of the base is replaced by a trained copy)."""
    import torch
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import ModulesToSaveWrapper

    try:
        from peft.tuners.vera import VeraLayer
    except ImportError:  # pragma: no cover - a peft without VeRA
        VeraLayer = ()  # noqa: N806

    found = False
    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            return False
        if not isinstance(module, BaseTunerLayer):
            continue
        found = True
        if isinstance(module, LoraLayer):
            for name in module.lora_A:
                if module.use_dora.get(name) or getattr(module, "lora_variant", {}).get(name) is not None:
                    return False
                b = module.lora_B[name]
                if any(bool(torch.any(p != 0)) for p in b.parameters()):
                    return False
            for name in getattr(module, "lora_embedding_B", {}):
                if bool(torch.any(module.lora_embedding_B[name] != 0)):
                    return False
        elif isinstance(module, VeraLayer):
            if any(bool(torch.any(p != 0)) for p in module.vera_lambda_b.values()):
                return False
        else:
            return False
    return found


def _adapter_tensors(model: torch.nn.Module) -> set[int]:
    """ids of the tensors that belong to adapter layers (their own parameters and buffers)."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            for attr in (*module.adapter_layer_names, *module.other_param_names):
                value = getattr(module, attr, None)
                if isinstance(value, torch.nn.Module):  # ModuleDict, ParameterDict, BufferDict
                    ids.update(id(t) for t in value.parameters())
                    ids.update(id(t) for t in value.buffers())
    return ids


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers by name, dtype and shape, without the adapter
    layers' own tensors."""
    import torch

    skip = _adapter_tensors(model)
    digest = hashlib.sha256()
    tensors = [*model.named_parameters(remove_duplicate=True), *model.named_buffers(remove_duplicate=True)]
    for name, tensor in tensors:
        if id(tensor) in skip:
            continue
        # a wrapped layer's weight is `<layer>.base_layer.weight`: the base's own name either way
        name = name.replace(".base_layer.", ".")
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\0".encode())
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        if data.numel():
            digest.update(data.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def environment(precision: str, device: str) -> dict:
    """What may change the last bits of a figure computed on this machine."""
    import peft
    import torch
    import transformers

    try:
        flags = sorted(
            f
            for f in Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split()
            if f.startswith(("avx", "amx", "fma", "sse", "f16c"))
        )
    except (OSError, IndexError):
        flags = [platform.processor()]
    return {
        "precision": precision,
        "device": device,
        # another GPU model may round otherwise (TF32, other kernels)
        "gpu": torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "threads": torch.get_num_threads(),
        "cpu": flags,
        "machine": platform.machine(),
    }


def inputs_digest(*parts: Any) -> str:
    """SHA-256 of tensors, lists and plain values (what is evaluated and how)."""
    import torch

    digest = hashlib.sha256()

    def add(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
            digest.update(value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)
        elif isinstance(value, dict):
            digest.update(b"{")
            for k in sorted(value, key=str):
                add(str(k))
                add(value[k])
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(b"[")
            for item in value:
                add(item)
            digest.update(b"]")
        else:
            digest.update(json.dumps(value, default=str).encode() + b"\0")

    for part in parts:
        add(part)
    return digest.hexdigest()


class BeforeCache:
    """Figures of the untrained model by key, in `root` (one small JSON file each)."""

    def __init__(self, root: str | Path, weights: str, env: dict, run_dir: str | None = None) -> None:
        self.root = Path(root).expanduser() / "before"
        self.weights = weights
        self.env = env
        self.run_dir = run_dir

    @classmethod
    def for_model(
        cls, model: Any, cache_dir: str | Path, precision: str, device: str, run_dir: str | None = None
    ) -> BeforeCache | None:
        """The cache for this model, or None where its figures must be measured (an adapter that
        does not start as an exact no-op)."""
        if not adds_nothing(model):
            return None
        started = time.perf_counter()
        weights = weights_digest(model)
        log.debug("before-training cache: base weights hashed in %.1f s", time.perf_counter() - started)
        return cls(
            cache_dir, f"{type(model.get_base_model()).__name__}:{weights}", environment(precision, device), run_dir
        )

    def _path(self, kind: str, inputs: str) -> Path:
        key = inputs_digest(FORMAT, kind, self.weights, self.env, inputs)
        return self.root / f"{kind}-{key[:40]}.json"

    def get(self, kind: str, inputs: str) -> dict | None:
        """The figures kept for `kind` and these inputs, with where they came from; None if none."""
        path = self._path(kind, inputs)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or not isinstance(record.get("figures"), dict):
            return None
        return record

    def put(self, kind: str, inputs: str, figures: dict) -> None:
        """Keep `figures` (best effort: a cache that cannot be written is a debug line, not a failure)."""
        record = {
            "figures": figures,
            "kind": kind,
            "measured_by": self.run_dir,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "weights": self.weights,
            "environment": self.env,
            "pid": os.getpid(),
        }
        try:
            write_json(self._path(kind, inputs), record)
        except OSError as exc:
            log.debug("before-training cache not written: %s", exc)
