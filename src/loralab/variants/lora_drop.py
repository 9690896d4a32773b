"""LoRA-drop (Zhou et al., COLING 2025): measure where LoRA matters, keep it there, share elsewhere.

1. Train a plain LoRA on every target module for `stage1_steps` steps on a sample D_s of the
   training data (`sample_fraction`, stratified by label for classification).
2. Importance of each adapted module i: g_i = Σ_{x in D_s} ‖s·B_i·A_i·x_i‖² over the non-padding
   positions, normalised to I_i = g_i / Σ_j g_j; per transformer layer, g sums its modules.
3. Keep the smallest set, by decreasing I, whose cumulative importance reaches `threshold`.
4. Stage 2 (the run proper): kept modules get their own LoRA; every other module shares one LoRA
   pair per weight shape: one Parameter, one storage. Fresh adapters by default.

Saving expands the shared pairs (peft clones aliased tensors), so the adapter is an ordinary peft
LoRA adapter. On resume the selection is read back from the checkpoint's variant.json.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loralab.errors import ConfigError
from loralab.tasks import get_task
from loralab.variants.lora import ADAPTER, adapter_info, is_trainable, lora_config, lora_layers
from loralab.variants.registry import AdapterInfo, BuildContext, VariantSpec, register_variant
from loralab.variants.schema import LoraVariantConfig
from loralab.variants.targets import Resolution, check_targets, layer_of

if TYPE_CHECKING:  # torch and peft load with the model, after the config checks
    import torch
    from peft.tuners.lora import LoraLayer

log = logging.getLogger(__name__)

GRANULARITIES = ("module", "layer")
PLOT_FILE = "lora_drop_importance.png"


@dataclass
class LoraDropConfig(LoraVariantConfig):
    """LoRA-drop: importance threshold T, per module or per layer, stage-1 sample and steps."""

    name: str = "lora_drop"
    threshold: float = 0.9
    granularity: str = "module"
    sample_fraction: float = 0.1
    stage1_steps: int = 20
    stage1_lr: float = 2.0e-3
    fresh_stage2: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"variant.threshold must be in (0, 1], got {self.threshold}: the paper uses 0.9")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"variant.granularity must be one of {list(GRANULARITIES)}, got {self.granularity!r}")
        if not 0.0 < self.sample_fraction <= 1.0:
            raise ConfigError(f"variant.sample_fraction must be in (0, 1], got {self.sample_fraction}")
        if self.stage1_steps < 1:
            raise ConfigError(f"variant.stage1_steps must be >= 1, got {self.stage1_steps}")
        if not self.stage1_lr > 0:
            raise ConfigError(f"variant.stage1_lr must be > 0, got {self.stage1_lr}")


# ---- the procedure, step by step ------------------------------------------------------------------
def sample_indices(size: int, fraction: float, seed: int, labels: list[int] | None = None) -> list[int]:
    """A seeded sample of `fraction` of the examples; stratified (per label) when labels are given."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    if labels is None:
        n = max(1, round(fraction * size))
        return sorted(torch.randperm(size, generator=gen)[:n].tolist())
    chosen: list[int] = []
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        n = max(1, round(fraction * len(members)))
        order = torch.randperm(len(members), generator=gen)[:n]
        chosen += [members[i] for i in order.tolist()]
    return sorted(chosen)


def train_stage1(model: torch.nn.Module, batches: Iterable[dict], steps: int, lr: float) -> list[float]:
    """A short plain-LoRA training (AdamW) over `batches`, cycled; returns the losses."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    batches = list(batches)
    device = params[0].device
    losses = []
    for step in range(steps):
        batch = {k: v.to(device) for k, v in batches[step % len(batches)].items()}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def module_importance(model: torch.nn.Module, batches: Iterable[dict], task: str = "causal_lm") -> dict[str, float]:
    """g_i = Σ ‖s·B_i·A_i·x_i‖² over every non-padding position of every batch, per LoRA layer
    (the task says which positions are tokens: an encoder-decoder has two sequences)."""
    import torch

    layers = lora_layers(model)
    totals = dict.fromkeys(layers, 0.0)
    masks: list[torch.Tensor] = []

    def hook(name: str):
        def record(module: LoraLayer, args: tuple, output: torch.Tensor) -> None:
            x = args[0]
            delta = module.lora_B[ADAPTER](module.lora_A[ADAPTER](x.to(module.lora_A[ADAPTER].weight.dtype)))
            sq = delta.float().pow(2).sum(-1) * module.scaling[ADAPTER] ** 2
            # token inputs drop their padding; other inputs (a pooled vector, DeBERTa's relative
            # position embeddings through the same projection) count whole
            fits = [m for m in masks if m.shape == sq.shape]
            if fits:
                sq = sq * fits[0]
            totals[name] += float(sq.sum())

        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            for batch in batches:
                inputs, token_masks = get_task(task).importance_inputs(batch)
                masks[:] = [m.to(device, torch.float32) for m in token_masks]
                model(**{k: v.to(device) for k, v in inputs.items()})
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return totals


def unit_of(module_name: str, granularity: str) -> str:
    """The unit importance is ranked by: the module itself, or its transformer layer."""
    return module_name if granularity == "module" else f"layer.{layer_of(module_name)}"


def rank_units(g: dict[str, float], granularity: str) -> list[dict]:
    """Importance per unit (summed over its modules), normalised, in model order."""
    units: dict[str, float] = {}
    for name, value in g.items():
        units[unit_of(name, granularity)] = units.get(unit_of(name, granularity), 0.0) + value
    total = sum(units.values())
    if not total > 0 or not math.isfinite(total):
        raise ConfigError(
            "LoRA-drop stage 1 left every adapter at zero effect (importance sums to 0): raise "
            "variant.stage1_steps or variant.stage1_lr"
        )
    return [{"unit": u, "g": v, "importance": v / total} for u, v in units.items()]


def select_units(table: list[dict], threshold: float) -> list[str]:
    """The smallest set of units, by decreasing importance, whose cumulative importance reaches T."""
    kept, cumulative = [], 0.0
    for row in sorted(table, key=lambda r: r["importance"], reverse=True):
        kept.append(row["unit"])
        cumulative += row["importance"]
        # a little slack for float sums: T = 1.0 keeps every unit with importance > 0
        if cumulative >= threshold - 1e-12:
            break
    return kept


def share_pairs(model: torch.nn.Module, kept_modules: list[str]) -> list[dict]:
    """Tie the LoRA pairs of all non-kept modules of the same weight shape to one A and one B
    Parameter (the first module's). Returns the shared sets."""
    groups: dict[tuple[int, int], list[str]] = {}
    layers = lora_layers(model)
    for name, layer in layers.items():
        if name in kept_modules:
            continue
        shape = (layer.out_features, layer.in_features)
        groups.setdefault(shape, []).append(name)
    sets = []
    for shape, names in groups.items():
        owner = layers[names[0]]
        for name in names[1:]:
            layers[name].lora_A[ADAPTER].weight = owner.lora_A[ADAPTER].weight
            layers[name].lora_B[ADAPTER].weight = owner.lora_B[ADAPTER].weight
        sets.append({"shape": list(shape), "modules": names})
    return sets


def expected_trainable(model: torch.nn.Module, kept_modules: list[str], shared_sets: list[dict], r: int) -> int:
    """(|kept| + shared sets)·r·(d_in + d_out), with each module's or set's own shape."""
    layers = lora_layers(model)
    total = sum(r * (layers[n].in_features + layers[n].out_features) for n in kept_modules)
    return total + sum(r * (s["shape"][0] + s["shape"][1]) for s in shared_sets)


def plot_importance(table: list[dict], threshold: float, path: Path) -> Path:
    """Bar chart of importance per unit (model order), kept units highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(table) + 2), 4.0))
    colours = ["tab:blue" if row["kept"] else "tab:gray" for row in table]
    ax.bar(range(len(table)), [row["importance"] for row in table], color=colours)
    ax.set_xticks(range(len(table)))
    ax.set_xticklabels([row["unit"].replace("base_model.model.", "") for row in table], rotation=90, fontsize=6)
    ax.set_ylabel("normalised importance I")
    kept = sum(row["kept"] for row in table)
    ax.set_title(f"LoRA-drop importance: {kept}/{len(table)} kept (blue) at T = {threshold}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---- the variant -------------------------------------------------------------------------------
def _non_lora_trainables(model: torch.nn.Module, cfg: LoraDropConfig, found: Resolution) -> dict[str, torch.Tensor]:
    """Copies of the base tensors a LoRA run may train besides the pairs: modules_to_save (the
    classification head among them), and biases unless bias is none."""
    prefixes = tuple(f"{n}." for names in found.saves.values() for n in names)
    return {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if n.startswith(prefixes) or (cfg.bias != "none" and n.endswith(".bias"))
    }


def _stage1(peft_model: torch.nn.Module, cfg: LoraDropConfig, context: BuildContext) -> dict:
    """Stages 1-3 on the data: returns the importance table and the kept modules."""
    dm = context.datamodule
    if dm is None or dm.train_set is None:
        raise ConfigError("variant=lora_drop needs the training data for its first stage (a datamodule set up)")
    train = dm.train_set
    labels = list(train["labels"]) if dm.task.labelled else None
    indices = sample_indices(len(train), cfg.sample_fraction, context.seed, labels)
    collate = dm.collator()
    sample = train.select(indices).with_format(columns=["input_ids", "labels"])
    rows = [sample[i] for i in range(len(sample))]

    def batches(size: int) -> list[dict]:
        return [collate(rows[i : i + size]) for i in range(0, len(rows), size)]

    losses = train_stage1(peft_model, batches(dm.cfg.train_batch_size), cfg.stage1_steps, cfg.stage1_lr)
    g = module_importance(peft_model, batches(dm.cfg.eval_batch_size), dm.task.name)
    table = rank_units(g, cfg.granularity)
    kept_units = set(select_units(table, cfg.threshold))
    for row in table:
        row["kept"] = row["unit"] in kept_units
    kept_modules = [n for n in g if unit_of(n, cfg.granularity) in kept_units]
    log.info(
        "LoRA-drop: stage 1 loss %.4f -> %.4f on %d examples; kept %d of %d %ss",
        losses[0],
        losses[-1],
        len(rows),
        len(kept_units),
        len(table),
        cfg.granularity,
    )
    return {
        "stage1_device": str(context.device),
        "sample_size": len(rows),
        "stage1_loss_first": losses[0],
        "stage1_loss_last": losses[-1],
        "importance": table,
        "kept_units": [row["unit"] for row in table if row["kept"]],
        "kept_modules": kept_modules,
    }


def build(model: torch.nn.Module, cfg: LoraDropConfig, task: str, context: BuildContext | None = None) -> AdapterInfo:
    """Run stages 1-3 (or read their result back when resuming), then build the stage-2 adapter."""
    import torch
    from peft import get_peft_model

    context = context or BuildContext()
    found = check_targets(model, cfg, task)
    saved = context.resume_dir / "variant.json" if context.resume_dir is not None else None
    resumed = saved is not None and saved.is_file()
    stage1_state: dict[str, torch.Tensor] = {}
    if resumed:
        selection = {**json.loads(saved.read_text()), "selection_from": str(saved)}
        model = get_peft_model(model, lora_config(cfg, task, found))
    else:
        # stage 1 also trains what stage 2 trains besides the pairs (a classification head,
        # biases); unload() would keep those changes, so the base's own copies are restored after
        pristine = _non_lora_trainables(model, cfg, found)
        stage1_model = get_peft_model(model.to(context.device), lora_config(cfg, task, found))
        for name, param in stage1_model.named_parameters():
            param.requires_grad_(is_trainable(name, cfg))
        selection = {**_stage1(stage1_model, cfg, context), "selection_from": "stage 1"}
        if not cfg.fresh_stage2:
            stage1_state = {n: p.detach().clone() for n, p in stage1_model.named_parameters() if p.requires_grad}
        model = stage1_model.unload()  # the base without stage-1 adapters (not merged)
        with torch.no_grad():
            for name, value in pristine.items():
                model.get_parameter(name).copy_(value)
        model = get_peft_model(model, lora_config(cfg, task, found))
    if stage1_state:
        kept_prefixes = tuple(f"{n}." for n in selection["kept_modules"])
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in stage1_state and name.startswith(kept_prefixes):
                    param.copy_(stage1_state[name])
    shared = share_pairs(model, selection["kept_modules"])
    facts = {
        "granularity": cfg.granularity,
        "threshold": cfg.threshold,
        "sample_fraction": cfg.sample_fraction,
        "stage1_steps": cfg.stage1_steps,
        "stage1_lr": cfg.stage1_lr,
        "fresh_stage2": cfg.fresh_stage2,
        **{k: v for k, v in selection.items() if k not in ("shared_sets", "expected_trainable_params")},
        "shared_sets": shared,
        "expected_trainable_params": expected_trainable(model, selection["kept_modules"], shared, cfg.r),
    }
    if context.run_dir is not None and not resumed:
        facts["plot"] = str(plot_importance(facts["importance"], cfg.threshold, context.run_dir / PLOT_FILE))
    return adapter_info(model, SPEC, cfg, task, found, facts=facts)


SPEC = register_variant(VariantSpec(name="lora_drop", schema=LoraDropConfig, build=build, is_trainable=is_trainable))
