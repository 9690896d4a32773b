"""compute.prompt_once: the validation / test loss and the greedy answers from one pass over each
prompt. The prompt's key/value cache reads the completion for the loss, is cut back, and starts the
greedy decoding: the loss is that of whole rows, the answers those of each prompt generated alone,
on two families (rotary positions, learned positions), with a shared prefix and without."""

from __future__ import annotations

import pytest
import torch

from loralab.evaluation import greedy_config
from loralab.tasks import get_task
from loralab.tasks.base import IGNORE_INDEX
from loralab.tasks.causal_lm import (
    completion_spans,
    head_parts,
    labelled_head,
    labelled_loss,
    prompt_once,
    prompt_once_agrees,
)
from tests.conftest import tiny_gpt2, tiny_llama


def _rows(vocab: int, prefix: int, seed: int = 0) -> tuple[dict, list[list[int]]]:
    """A right-padded prompt/completion batch as collation makes it: prompts of 1 to 6 tokens of
    their own after `prefix` common ones, completions of 2 to 5 tokens; and the prompts."""
    g = torch.Generator().manual_seed(seed)
    shape = [(1, 3), (4, 2), (2, 5), (6, 4), (3, 3)]
    width = prefix + max(a + b for a, b in shape)
    ids = torch.randint(5, vocab, (len(shape), width), generator=g)
    ids[:, :prefix] = ids[0, :prefix]
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    prompts = []
    for i, (own, answer) in enumerate(shape):
        p, n = prefix + own, prefix + own + answer
        mask[i, :n] = 1
        labels[i, p:n] = ids[i, p:n]
        prompts.append(ids[i, :p].tolist())
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}, prompts


def _adapted(family: str, vocab: int):
    from peft import LoraConfig, get_peft_model

    model = (tiny_llama if family == "llama" else tiny_gpt2)(vocab)
    torch.manual_seed(1)
    return get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).eval()


@pytest.mark.parametrize("prefix", [9, 0])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_loss_and_answers_are_those_computed_apart(tiny_tokenizer, family, prefix):
    model = _adapted(family, len(tiny_tokenizer))
    task = get_task("causal_lm")
    batch, prompts = _rows(len(tiny_tokenizer), prefix)
    config = greedy_config(model, tiny_tokenizer, max_new_tokens=6)
    with torch.no_grad():
        once = task.loss_sums_and_answers(model, batch, prompts[:3], tiny_tokenizer, config)
        apart = task.loss_sums(model, batch, labelled=True)
        alone = [task.generate(model, [p], tiny_tokenizer, config)[0] for p in prompts[:3]]
        model.double()
        reference = task.loss_sums(model, {k: v for k, v in batch.items()}, labelled=True).double()
    assert once is not None
    sums, answers = once
    assert answers == alone
    assert len(set(alone)) > 1  # the prompts' own tokens matter: not one answer for all
    assert sums[1].item() == apart[1].item() == (batch["labels"][:, 1:] != IGNORE_INDEX).sum().item()
    # against a float64 reference: within a few times float32's own error over whole rows here
    error = (apart[0].double() - reference[0]).abs().item()
    eps = torch.finfo(torch.float32).eps
    assert (sums[0].double() - reference[0]).abs().item() <= 4 * error + 8 * eps * reference[0].abs().item()


def test_every_row_answered_or_none(tiny_tokenizer):
    model = _adapted("llama", len(tiny_tokenizer))
    task = get_task("causal_lm")
    batch, prompts = _rows(len(tiny_tokenizer), 9, seed=2)
    config = greedy_config(model, tiny_tokenizer, max_new_tokens=4)
    with torch.no_grad():
        every = task.loss_sums_and_answers(model, batch, prompts, tiny_tokenizer, config)
        none = task.loss_sums_and_answers(model, batch, [], tiny_tokenizer, config)
        alone = [task.generate(model, [p], tiny_tokenizer, config)[0] for p in prompts]
    assert every[1] == alone and none[1] == []
    assert torch.equal(every[0], none[0])


def test_the_model_sees_each_prompt_once(tiny_tokenizer):
    """The decoder stack runs the prefix as one row, the prompts' own tokens but the last, the
    completions; then generation's steps, the first of them the prompts' last token only."""
    model = tiny_llama(len(tiny_tokenizer)).eval()
    task = get_task("causal_lm")
    batch, prompts = _rows(len(tiny_tokenizer), 9)
    config = greedy_config(model, tiny_tokenizer, max_new_tokens=2)
    assert prompt_once_agrees(model, labelled_head(model))  # the checks' own probes run first
    shapes: list[tuple[int, ...]] = []
    model.model.register_forward_pre_hook(
        lambda mod, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    with torch.no_grad():
        task.loss_sums_and_answers(model, batch, prompts[:2], tiny_tokenizer, config)
    assert shapes[:4] == [(1, 9), (5, 5), (5, 5), (2, 1)]


def test_each_way_is_checked_once_when_a_batch_first_takes_it(tiny_tokenizer):
    """The check's probe batch (3 x 16 whole rows) runs for the way a batch takes (its prompts
    sharing a prefix or not), once per model and way: a run whose prompts all share a chat
    template never pays for the other way's probe."""
    model = tiny_llama(len(tiny_tokenizer)).eval()
    task = get_task("causal_lm")
    config = greedy_config(model, tiny_tokenizer, max_new_tokens=2)
    shapes: list[tuple[int, ...]] = []
    model.model.register_forward_pre_hook(
        lambda mod, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )

    def probes_after(prefix: int, seed: int) -> int:
        batch, prompts = _rows(len(tiny_tokenizer), prefix, seed=seed)
        with torch.no_grad():
            assert task.loss_sums_and_answers(model, batch, prompts[:2], tiny_tokenizer, config) is not None
        return shapes.count((3, 16))

    assert probes_after(9, 0) == 1  # shared prefix: its probe
    assert probes_after(9, 1) == 1  # checked already
    assert probes_after(0, 2) == 2  # no shared prefix: the other way's probe, once
    assert probes_after(0, 3) == 2
    assert probes_after(9, 4) == 2


def test_batches_of_another_shape_are_computed_apart(tiny_tokenizer):
    model = tiny_llama(len(tiny_tokenizer)).eval()
    task = get_task("causal_lm")
    batch, prompts = _rows(len(tiny_tokenizer), 9)
    config = greedy_config(model, tiny_tokenizer, max_new_tokens=2)
    assert completion_spans(batch) == [(10, 13), (13, 15), (11, 16), (15, 19), (12, 15)]
    gap = {**batch, "labels": batch["labels"].clone()}
    gap["labels"][2, 13] = IGNORE_INDEX  # a label missing inside the completion
    assert completion_spans(gap) is None
    unlabelled = {**batch, "labels": batch["labels"].clone()}
    unlabelled["labels"][2] = IGNORE_INDEX
    assert completion_spans(unlabelled) is None
    packed = {**batch, "position_ids": torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])}
    assert completion_spans(packed) is None
    other = [list(p) for p in prompts[:2]]
    other[1][-1] += 1  # the rows to answer are not these prompts
    with torch.no_grad():
        assert task.loss_sums_and_answers(model, batch, other, tiny_tokenizer, config) is None
        assert task.loss_sums_and_answers(model, gap, prompts[:2], tiny_tokenizer, config) is None
        assert task.loss_sums_and_answers(model, batch, prompts, tiny_tokenizer, config) is not None


def test_the_check_leaves_modes_and_random_state_alone(tiny_tokenizer):
    model = tiny_llama(len(tiny_tokenizer)).train()
    model.model.layers[0].eval()
    state = torch.get_rng_state()
    assert prompt_once_agrees(model, head_parts(model))
    assert torch.equal(state, torch.get_rng_state())
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training


def test_the_loss_alone_matches_the_labelled_loss(tiny_tokenizer):
    model = tiny_gpt2(len(tiny_tokenizer)).eval()
    batch, _ = _rows(len(tiny_tokenizer), 9, seed=5)
    with torch.no_grad():
        total, generated = prompt_once(model, head_parts(model), batch, 0, None)
        whole = labelled_loss(*head_parts(model), batch).double()
        model.double()
        reference = labelled_loss(*head_parts(model), batch).double()
    count = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    assert generated is None
    # within a few times float32's own error over whole rows on this machine (a float64 reference)
    error = (whole - reference).abs().item()
    eps = torch.finfo(torch.float32).eps
    assert (total.double() / count - reference).abs().item() <= 4 * error + 8 * eps * reference.abs().item()
