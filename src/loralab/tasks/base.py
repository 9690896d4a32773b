"""What every task has; the three tasks fill it in. torch and transformers are imported inside the
methods that need them: the config checks read a task's facts before torch loads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


# the label of a position the loss ignores (prompt tokens, padding)
IGNORE_INDEX = -100
# a generative model builds a key/value cache on every forward unless told not to (its config's
# use_cache is for generation): training and validation never read it, and it costs copies and
# memory (transformers' Trainer turns it off too). Outputs are the same.
NO_CACHE = {"use_cache": False}
CHAT_NEEDS_TEMPLATE = (
    "the chat format needs a tokenizer with a chat template: use data.format=prompt_completion, or a model whose "
    "tokenizer has one"
)


@dataclass(frozen=True)
class Item:
    """One example as a task reads it (a data format makes it from a row): a prompt (text, or chat
    turns) and the answer to learn, or a text and its label."""

    prompt: str | None = None
    messages: list[dict] | None = None
    answer: str | None = None
    text: str | None = None
    label: str | None = None


class Task:
    """A task: override the facts and the methods that differ."""

    name: str = ""
    peft_type: str = ""  # peft's TaskType member
    auto_class: str = ""  # the transformers Auto class that loads the model
    formats: tuple[str, ...] = ()  # the data formats it reads
    metric: str = ""  # the validation metric beside val/loss: exact_match or accuracy
    labelled: bool = False  # the model needs its label names (a classification head)
    encoder_decoder: bool | None = None  # what the model must be (None: either)
    token_loss: bool = True  # the loss is a mean over tokens (several processes weigh ranks by their tokens)
    models_text: bool = False  # the model predicts tokens: forgetting is measured on general text
    # a plain prompt goes through the tokenizer's chat template, as the user's turn, when it has one
    templates_prompts: bool = False
    # its loss batches can answer their rows on the way (loss_sums_and_answers, compute.prompt_once)
    answers_in_loss: bool = False

    @property
    def generates(self) -> bool:
        """Scored by exact match of greedy answers on held-out prompts."""
        return self.metric == "exact_match"

    def __repr__(self) -> str:
        return f"<task {self.cache_key}>"

    @property
    def cache_key(self) -> str:
        """What tells this task's encoding apart in the token cache."""
        return self.name

    # ---- the model ---------------------------------------------------------------------
    def model_class(self) -> Any:
        import transformers

        return getattr(transformers, self.auto_class)

    def config_kwargs(self, labels: list[str] | None, required: bool = True) -> dict:
        """Keyword arguments the model's config takes for this task (a head's labels)."""
        return {}

    def heads(self, model: torch.nn.Module) -> list[str]:
        """Modules a pretrained checkpoint has no weights for: trained in full."""
        return []

    def check_model(self, model: torch.nn.Module, name: str) -> None:
        """Refuse a loaded model that cannot do the task (what its config cannot tell)."""

    # ---- data --------------------------------------------------------------------------
    def encode(self, tokenizer: Any, item: Item, max_length: int, label_ids: dict | None) -> dict:
        """One example: input_ids, labels, and the facts the data pipeline counts (length,
        prompt_length, full_length, truncated, keep)."""
        raise NotImplementedError

    def collate(self, examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        """Right-padded input ids with their mask; each task adds its labels."""
        import torch

        width = max(len(ex["input_ids"]) for ex in examples)
        ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, ex in enumerate(examples):
            n = len(ex["input_ids"])
            ids[i, :n] = torch.tensor(ex["input_ids"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": self.collate_labels(examples)}

    def collate_labels(self, examples: list[dict]) -> torch.Tensor:
        """Token labels padded with IGNORE_INDEX to the longest."""
        import torch

        width = max(len(ex["labels"]) for ex in examples)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        for i, ex in enumerate(examples):
            labels[i, : len(ex["labels"])] = torch.tensor(ex["labels"])
        return labels

    def tokens(self, batch: dict) -> torch.Tensor:
        """The tokens a training step reads (throughput counts them)."""
        return batch["attention_mask"].sum()

    def prompt_ids(self, encoded: dict) -> list[int]:
        """The ids a generation starts from."""
        return encoded["input_ids"][: encoded["prompt_length"]]

    # ---- steps -------------------------------------------------------------------------
    def forward(self, model: torch.nn.Module, batch: dict, num_items: torch.Tensor | None = None) -> Any:
        """The model's output, its loss the mean over predicted tokens; with `num_items`, the
        token-loss sum divided by it (several processes: see LoraModule.training_step)."""
        if num_items is None:
            return model(**batch, **NO_CACHE)
        return model(**batch, **NO_CACHE, num_items_in_batch=num_items)

    def loss(
        self,
        model: torch.nn.Module,
        batch: dict,
        num_items: torch.Tensor | None = None,
        labelled: bool = False,
        shared_prefix: bool = False,
    ) -> torch.Tensor:
        """The training loss (`forward`'s). `labelled`: compute only what the loss needs, where
        the task can (causal LMs: the output head at the labelled positions only); `shared_prefix`:
        the tokens every row starts with run once, where the task can (causal LMs, with `labelled`)."""
        return self.forward(model, batch, num_items).loss

    def loss_sums(
        self, model: torch.nn.Module, batch: dict, labelled: bool = False, shared_prefix: bool = False
    ) -> torch.Tensor:
        """[loss x positions, positions, correct] of one batch, for a split's sums (no gradient)."""
        import torch

        out = self.forward(model, batch)
        count, correct = self.val_counts(out, batch)
        return torch.stack([out.loss.detach().float() * count, count, correct])

    def loss_sums_and_answers(
        self, model: torch.nn.Module, batch: dict, prompts: list[list[int]], tokenizer: Any, config: Any
    ) -> tuple[torch.Tensor, list[str]] | None:
        """loss_sums and the greedy answers to the batch's first rows (whose prompts are `prompts`)
        from one pass over each prompt (compute.prompt_once), where the task can: None here, and
        wherever the model or the batch does not allow it (the caller computes them apart)."""
        return None

    def predicted(self, batch: dict) -> torch.Tensor:
        """How many positions the loss averages over."""
        raise NotImplementedError

    def probe_batch(self, blocks: torch.Tensor) -> dict:
        """A batch whose loss is the model's cross-entropy on blocks of general text (equal-length
        token ids), for forgetting (`models_text` tasks only)."""
        raise NotImplementedError(f"the {self.name} task does not model text")

    def val_counts(self, out: Any, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions the loss averaged over, correct predictions) for the epoch's sums."""
        import torch

        return self.predicted(batch).float(), torch.zeros((), device=out.loss.device)

    def importance_inputs(self, batch: dict) -> tuple[dict, list[torch.Tensor]]:
        """The model inputs that run a batch without a loss, and the masks of its token positions
        (one per sequence the model reads; an input of another shape counts whole)."""
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, [batch["attention_mask"]]

    def logits(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        """The logits the merge check compares, in float."""
        import torch

        with torch.no_grad():
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()

    def logit_mask(self, batch: dict) -> torch.Tensor | None:
        """The positions of `logits` that count (None: all)."""
        return batch["attention_mask"]

    def generate(
        self,
        model: torch.nn.Module,
        prompts: list[list[int]],
        tokenizer: Any,
        config: Any,
        streamer: Any = None,
        shared_prefix: bool = False,
    ) -> list[str]:
        """Greedy answers to token-id prompts, decoded without special tokens (`shared_prefix`: the
        prompts' common first tokens computed once, where the task can; compute.shared_prefix)."""
        raise NotImplementedError
