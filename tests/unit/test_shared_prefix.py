"""compute.shared_prefix: a batch's common first tokens go through the model once and their cache is
copied to each prompt; each prompt's own tokens follow after its padding with the positions it
would have alone. The answers are those of each prompt generated alone, on two families (rotary
positions, learned positions). The same for the loss (compute.shared_prefix for validation and
test, compute.shared_prefix_train for the training steps): the loss and gradients of whole rows."""

from __future__ import annotations

import pytest
import torch

from loralab.evaluation import greedy_config
from loralab.tasks import get_task
from loralab.tasks.base import IGNORE_INDEX
from loralab.tasks.causal_lm import (
    MIN_SHARED_PREFIX,
    common_prefix,
    head_parts,
    labelled_head,
    labelled_loss,
    prefix_shares,
    shared_prefix_length,
)
from tests.conftest import tiny_gpt2, tiny_llama


def test_common_prefix_leaves_each_prompt_a_token_of_its_own():
    assert common_prefix([[1, 2, 3, 9], [1, 2, 3, 7, 7]]) == 3
    assert common_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # identical: the last token is each one's own
    assert common_prefix([[1, 2], [1, 2, 3, 4]]) == 1
    assert common_prefix([[5, 2], [1, 2]]) == 0
    assert common_prefix([[1, 2, 3]]) == 0  # one prompt: nothing to share
    assert common_prefix([[1], [1]]) == 0


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_answers_with_a_shared_prefix_are_each_prompts_alone(tiny_tokenizer, family):
    model = (tiny_llama if family == "llama" else tiny_gpt2)(len(tiny_tokenizer)).eval()
    task = get_task("causal_lm")
    config = greedy_config(model, tiny_tokenizer, max_new_tokens=8)
    torch.manual_seed(3)
    prefix = torch.randint(5, len(tiny_tokenizer), (9,)).tolist()
    # own parts of 1 to 6 tokens: the shorter ones are padded between the prefix and themselves
    prompts = [prefix + torch.randint(5, len(tiny_tokenizer), (n,)).tolist() for n in (1, 4, 2, 6, 3)]
    assert common_prefix(prompts) == 9 >= MIN_SHARED_PREFIX
    with torch.no_grad():
        shared = task.generate(model, prompts, tiny_tokenizer, config, shared_prefix=True)
        whole = task.generate(model, prompts, tiny_tokenizer, config, shared_prefix=False)
        alone = [task.generate(model, [p], tiny_tokenizer, config)[0] for p in prompts]
    assert shared == alone == whole
    assert len(set(alone)) > 1  # the prompts' own tokens matter: not one answer for all


def test_the_first_answer_tokens_logits_are_those_of_the_prompt_alone(tiny_tokenizer):
    """The cache of the prefix, copied, and each prompt's own tokens after padding give the logits
    of the prompt computed alone, to within what batching itself changes on this machine."""
    model = tiny_llama(len(tiny_tokenizer)).eval()
    task = get_task("causal_lm")
    torch.manual_seed(4)
    prefix = torch.randint(5, len(tiny_tokenizer), (7,)).tolist()
    prompts = [prefix + torch.randint(5, len(tiny_tokenizer), (n,)).tolist() for n in (2, 5)]
    seen = []
    real_generate = model.generate

    def first_logits(**kwargs):
        out = real_generate(**kwargs, output_logits=True, return_dict_in_generate=True)
        seen.append(out.logits[0].float())
        return out.sequences

    model.generate = first_logits
    config = greedy_config(model, tiny_tokenizer, max_new_tokens=1)
    with torch.no_grad():
        task.generate(model, prompts, tiny_tokenizer, config, shared_prefix=True)
        task.generate(model, prompts, tiny_tokenizer, config, shared_prefix=False)
        alone = torch.stack([model(input_ids=torch.tensor([p])).logits[0, -1] for p in prompts])
    shared, padded = seen
    # batching alone (left padding) moves the logits by this much here; the shared prefix may too
    noise = (padded - alone).abs().max().item()
    scale = alone.abs().max().item()
    assert (shared - alone).abs().max().item() <= max(4 * noise, 16 * torch.finfo(torch.float32).eps * scale)


# ---- the loss: validation / test (compute.shared_prefix) and training (compute.shared_prefix_train)


def _prefixed_batch(vocab: int, prefix: int = 9, rows: int = 5, seed: int = 0) -> dict:
    """Right-padded rows that start with the same `prefix` tokens (a chat template's system turn and
    instruction), then tokens of their own of varying length; labels on each row's last tokens (the
    completion), as collation makes them."""
    g = torch.Generator().manual_seed(seed)
    own = [6 + 2 * i for i in range(rows)]
    width = prefix + max(own)
    ids = torch.randint(5, vocab, (rows, width), generator=g)
    ids[:, :prefix] = ids[0, :prefix]
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, n in enumerate(own):
        mask[i, : prefix + n] = 1
        labels[i, prefix + n - 3 - i % 2 : prefix + n] = ids[i, prefix + n - 3 - i % 2 : prefix + n]
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_the_shared_length_stops_where_the_loss_starts_reading():
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 9, 9], [1, 2, 3, 4, 5, 6, 7, 0]])
    mask = torch.ones_like(ids)
    mask[2, 7] = 0
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, :7] = IGNORE_INDEX  # the first label at 7: the hidden state at 6 predicts it
    b = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    assert shared_prefix_length(b) == 6  # all six common tokens
    labels[1, 6] = 9  # a label at 6: the hidden state at 5 must be the row's own
    assert shared_prefix_length(b) == 5
    labels[:, :5] = IGNORE_INDEX
    labels[0, 4] = 5  # one at 4 (read from 3): fewer than MIN_SHARED_PREFIX tokens left to share
    assert shared_prefix_length(b) == 0
    labels[0, 4] = IGNORE_INDEX
    mask[1, 4:] = 0  # a row that ends (padding) inside the common tokens: sharing stops there
    assert shared_prefix_length(b) == 4
    mask[1, 3:] = 0
    assert shared_prefix_length(b) == 0
    mask[1, 3:] = 1
    assert shared_prefix_length({k: v[:1] for k, v in b.items()}) == 0  # one row: nothing to share
    assert shared_prefix_length({**b, "position_ids": torch.arange(8).expand(3, 8)}) == 0  # packed rows


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_loss_and_gradients_with_the_prefix_run_once_are_those_of_whole_rows(tiny_tokenizer, family):
    """The prefix as a one-row batch whose cache is repeated to every row: the loss and every
    adapter gradient (each row's reaches the prefix through the copied cache, summed) are those of
    whole rows, to within float32's own error on this machine (against a float64 reference)."""
    from peft import LoraConfig, get_peft_model

    vocab = len(tiny_tokenizer)
    model = (tiny_llama if family == "llama" else tiny_gpt2)(vocab)
    torch.manual_seed(1)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).eval()
    b = _prefixed_batch(vocab)
    length = shared_prefix_length(b)
    assert length == 9
    parts = head_parts(model)
    assert prefix_shares(model, parts)

    def loss_and_grads(prefix: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        loss = labelled_loss(*head_parts(model), b, prefix=prefix)
        loss.backward()
        return loss.detach().double(), [p.grad.double() for p in model.parameters() if p.requires_grad]

    whole, whole_grads = loss_and_grads(0)
    shared, shared_grads = loss_and_grads(length)
    model.double()
    reference, ref_grads = loss_and_grads(0)
    error = (whole - reference).abs().item()
    eps = torch.finfo(torch.float32).eps
    assert (shared - reference).abs().item() <= 4 * error + 8 * eps * reference.abs().item()
    reached = 0
    for w, s, r in zip(whole_grads, shared_grads, ref_grads, strict=True):
        scale = eps * r.abs().max().item()
        assert (s - r).abs().max().item() <= 4 * (w - r).abs().max().item() + 64 * scale
        reached += int(r.abs().max().item() > 0)
    assert reached == len(ref_grads)  # every adapter matrix gets a gradient


def test_the_task_runs_the_prefix_once_per_batch(tiny_tokenizer):
    """CausalLM.loss with shared_prefix: the decoder stack sees the prefix as one row, then every
    row's own tokens; without it, whole rows."""
    model = tiny_llama(len(tiny_tokenizer)).eval()
    b = _prefixed_batch(len(tiny_tokenizer))
    shapes: list[tuple[int, ...]] = []
    model.model.register_forward_pre_hook(
        lambda mod, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    task = get_task("causal_lm")
    assert prefix_shares(model, labelled_head(model))  # the checks' own probes run first
    with torch.no_grad():
        shapes.clear()
        task.loss(model, b, labelled=True, shared_prefix=True)
        assert shapes == [(1, 9), (5, b["input_ids"].shape[1] - 9)]
        shapes.clear()
        task.loss(model, b, labelled=True, shared_prefix=False)
        sums = task.loss_sums(model, b, labelled=True, shared_prefix=True)
        assert shapes[0] == tuple(b["input_ids"].shape) and shapes[1:] == [(1, 9), (5, b["input_ids"].shape[1] - 9)]
    assert sums[1].item() == (b["labels"][:, 1:] != IGNORE_INDEX).sum().item()


def test_gradient_checkpointing_computes_whole_rows(tiny_tokenizer):
    """A recomputed block would run the cache's update twice: whole rows there."""
    model = tiny_llama(len(tiny_tokenizer))
    # transformers 5.x renamed gradient_checkpointing_enable (deprecated) to activation_checkpointing_enable
    renamed = hasattr(model, "activation_checkpointing_enable")
    (model.activation_checkpointing_enable if renamed else model.gradient_checkpointing_enable)()
    assert not prefix_shares(model, head_parts(model))
    (model.activation_checkpointing_disable if renamed else model.gradient_checkpointing_disable)()
    assert prefix_shares(model, head_parts(model))


def test_the_prefix_check_leaves_training_modes_and_random_state_alone(tiny_tokenizer):
    model = tiny_llama(len(tiny_tokenizer)).train()
    model.model.layers[0].eval()  # a submodule kept in eval mode on purpose
    modes = {name: m.training for name, m in model.named_modules()}
    state = torch.get_rng_state()
    assert prefix_shares(model, head_parts(model))
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.equal(torch.get_rng_state(), state)
