"""Evaluating a model on a split outside Lightning's loops: the loss sums and greedy answers the
validation loop, the test split at fit end and loralab-eval share."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import torch
from transformers import GenerationConfig


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
    model: Any, task: Any, batches: Iterable[dict], device: Any, labelled: bool = False, shared_prefix: bool = False
) -> torch.Tensor:
    """[loss x positions, positions, correct] summed over the batches (the model in eval mode);
    `labelled`, `shared_prefix`: as the run computed its loss (compute.labelled_head,
    compute.shared_prefix)."""
    sums = torch.zeros(3, device=device)
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        sums += task.loss_sums(model, batch, labelled=labelled, shared_prefix=shared_prefix)
    return sums


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
