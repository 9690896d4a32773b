"""Evaluating a model on a split outside Lightning's loops: the loss sums and greedy answers the
validation loop, the test split at fit end and loralab-eval share."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from typing import Any

import torch
from transformers import GenerationConfig

log = logging.getLogger(__name__)


def greedy_config(model: Any, tokenizer: Any, max_new_tokens: int) -> GenerationConfig:
    """Greedy decoding, whatever the checkpoint's generation_config asks for (transformers fills
    every setting left unset from it: beams, a minimum length, n-gram and repetition penalties)."""
    return greedy_ids_config(model, tokenizer.pad_token_id, tokenizer.eos_token_id, max_new_tokens)


def greedy_ids_config(model: Any, pad_token_id: int, eos_token_id: int | None, max_new_tokens: int) -> GenerationConfig:
    """greedy_config with the padding and end tokens given (None: no end, every answer
    `max_new_tokens` long)."""
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        min_length=0,
        min_new_tokens=0,
        no_repeat_ngram_size=0,
        repetition_penalty=1.0,
        length_penalty=1.0,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        decoder_start_token_id=getattr(model.config, "decoder_start_token_id", None),
    )


@torch.no_grad()
def greedy_answers(
    model: Any,
    task: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    shared_prefix: bool = False,
) -> list[str]:
    """Greedy answers to token-id prompts, in batches, as the task generates them (stripped);
    `shared_prefix`: compute.shared_prefix."""
    config = greedy_config(model, tokenizer, max_new_tokens)
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        answers += task.generate(model, batch, tokenizer, config, shared_prefix=shared_prefix)
    return [a.strip() for a in answers]


@torch.no_grad()
def loss_sums(
    model: Any,
    task: Any,
    batches: Iterable[dict],
    device: Any,
    labelled: bool = False,
    shared_prefix: bool = False,
    answering: Answering | None = None,
) -> torch.Tensor:
    """[loss x positions, positions, correct] summed over the batches (the model in eval mode);
    `labelled`, `shared_prefix`: as the run computed its loss (compute.labelled_head,
    compute.shared_prefix); `answering`: the batches also answer its rows (compute.prompt_once)."""
    sums = torch.zeros(3, device=device)
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        if answering is not None:
            sums += answering.batch_sums(model, task, batch, labelled, shared_prefix)
        else:
            sums += task.loss_sums(model, batch, labelled=labelled, shared_prefix=shared_prefix)
    return sums


class Answering:
    """What a split's loss batches collect on the way (compute.prompt_once): the greedy answers to
    the generation rows, which are the split's first rows in its loader's order. `answers` is None
    where they are generated apart: switched off, nothing to answer, or a batch that could not
    answer its rows so (task.loss_sums_and_answers: None), which ends the collecting."""

    told = False  # the fallback is logged once per process

    def __init__(self, on: bool, rows: list[dict], tokenizer: Any, max_new_tokens: int) -> None:
        self.rows = rows
        self.answers: list[str] | None = [] if on and rows else None
        self.seen = 0
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.config: GenerationConfig | None = None

    def batch_sums(self, model: Any, task: Any, batch: dict, labelled: bool, shared_prefix: bool) -> torch.Tensor:
        """One loss batch's sums (task.loss_sums), answering the generation rows it holds from the
        same pass over their prompts while collecting."""
        if self.answers is not None:
            rows = batch["input_ids"].shape[0]
            mine = self.rows[self.seen : self.seen + rows]
            self.seen += rows
            if mine:
                if self.config is None:
                    self.config = greedy_config(model, self.tokenizer, self.max_new_tokens)
                prompts = [r["prompt_ids"] for r in mine]
                got = task.loss_sums_and_answers(model, batch, prompts, self.tokenizer, self.config)
                if got is not None:
                    self.answers += [a.strip() for a in got[1]]
                    return got[0]
                self.answers = None
                if not Answering.told:
                    log.info(
                        "compute.prompt_once: this model or batch does not allow one pass per prompt for the loss "
                        "and the answer: they are computed apart"
                    )
                    Answering.told = True
        return task.loss_sums(model, batch, labelled=labelled, shared_prefix=shared_prefix)

    def collected(self) -> list[str] | None:
        """The answers, when the batches answered every generation row (else None)."""
        return self.answers if self.answers is not None and len(self.answers) == len(self.rows) else None


def split_figures(sums: torch.Tensor, prefix: str, task: Any) -> dict[str, float]:
    """`<prefix>/loss`, `/ppl`, and `/accuracy` for classification, from `loss_sums`."""
    loss = (sums[0] / sums[1].clamp_min(1)).item()
    figures = {f"{prefix}/loss": loss, f"{prefix}/ppl": math.exp(min(loss, 50.0))}
    if task.metric == "accuracy":
        figures[f"{prefix}/accuracy"] = (sums[2] / sums[1].clamp_min(1)).item()
    return figures


def per_answer(
    answers: list[str], references: list[str], names: list[str], pattern: re.Pattern | None
) -> list[dict[str, float]]:
    """Each answer's score by each metric (what generations.jsonl records)."""
    from loralab.metrics import score

    return [score([a], [r], names, pattern) for a, r in zip(answers, references, strict=True)]
