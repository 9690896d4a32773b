"""Sequence classification: a head on top of the base maps the text to one of the labels. The head
has no pretrained weights: it trains in full (modules_to_save), whatever its modules are called."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loralab.errors import ModelError
from loralab.tasks.base import Item, Task

if TYPE_CHECKING:
    import torch


# the head names peft adds to modules_to_save for sequence classification (PeftModelForSequenceClassification)
PEFT_HEAD_NAMES = ("classifier", "score")


class SequenceClassification(Task):
    name = "seq_cls"
    peft_type = "SEQ_CLS"
    auto_class = "AutoModelForSequenceClassification"
    formats = ("classification",)
    metric = "accuracy"
    labelled = True
    token_loss = False

    def __init__(self, ends_with_eos: bool = False) -> None:
        # an encoder-decoder (BART, T5) classifies from its state at the text's end token: every
        # text then ends with one, a truncated one included
        self.ends_with_eos = ends_with_eos

    @property
    def cache_key(self) -> str:
        return self.name + ("+eos" if self.ends_with_eos else "")

    def config_kwargs(self, labels: list[str] | None, required: bool = True) -> dict:
        if labels is None and not required:
            return {}
        if not labels:
            raise ModelError("a classification model needs its label names")
        return {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
        }

    def heads(self, model: torch.nn.Module) -> list[str]:
        """The top-level modules with weights outside the base model (`score`; `classifier`;
        DeBERTa's `pooler`, DistilBERT's `pre_classifier`). peft by itself trains only modules
        named classifier or score."""
        prefix = getattr(model, "base_model_prefix", "") or ""
        base = getattr(model, prefix, None) if prefix else None
        children = dict(model.named_children())
        if base is None:  # no base model to tell the head from: the names peft knows
            return [n for n in PEFT_HEAD_NAMES if n in children]
        return [n for n, child in children.items() if child is not base and any(True for _ in child.parameters())]

    def encode(self, tokenizer: Any, item: Item, max_length: int, label_ids: dict | None) -> dict:
        """Text -> ids (truncated to max_length) with one class label."""
        ids = tokenizer(item.text)["input_ids"]
        eos = tokenizer.eos_token_id
        full = len(ids)
        if self.ends_with_eos and eos is not None:
            if not ids or ids[-1] != eos:
                ids = [*ids, eos]
            full = len(ids)
            ids = ids if full <= max_length else [*ids[: max_length - 1], eos]
        else:
            ids = ids[:max_length]
        return {
            "input_ids": ids,
            "labels": label_ids[item.label],
            "length": len(ids),
            "prompt_length": len(ids),
            "full_length": full,
            "truncated": full > max_length,
            "keep": True,
        }

    def collate_labels(self, examples: list[dict]) -> torch.Tensor:
        import torch

        return torch.tensor([ex["labels"] for ex in examples], dtype=torch.long)

    def forward(self, model: torch.nn.Module, batch: dict, num_items: torch.Tensor | None = None) -> Any:
        return model(**batch)  # one label per example: the mean over the batch is the mean over labels

    def predicted(self, batch: dict) -> torch.Tensor:
        return (batch["labels"] >= 0).sum()

    def val_counts(self, out: Any, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        labels = batch["labels"]
        count = torch.tensor(float(labels.numel()), device=labels.device)
        return count, (out.logits.argmax(-1) == labels).sum().float()

    def logit_mask(self, batch: dict) -> torch.Tensor | None:
        return None
