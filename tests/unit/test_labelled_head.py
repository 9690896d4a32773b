"""compute.labelled_head: a causal LM's loss with only the labelled positions through the output
head, against the model's own loss over full logits. The tolerance is the float32 computation's
own error on this machine (both against a float64 reference), not a constant."""

from __future__ import annotations

import logging

import pytest
import torch

from loralab.tasks import causal_lm
from loralab.tasks.base import IGNORE_INDEX
from loralab.tasks.causal_lm import CausalLM, labelled_head, labelled_loss
from tests.conftest import loss_and_grads
from tests.conftest import tiny_gpt2 as gpt2
from tests.conftest import tiny_llama as llama

VOCAB = 300


def gemma2(cap: float):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        final_logit_softcapping=cap,
    )
    return Gemma2ForCausalLM(config)


def with_lora(model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    return peft_model


def batch(seed: int = 0, rows: int = 4, length: int = 20) -> dict:
    """Right-padded rows whose labels cover a varying tail (the completion), as collation makes them."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    for i in range(rows):
        mask[i, length - 2 * i :] = 0
        labels[i, : 5 + i] = IGNORE_INDEX
    labels[mask == 0] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("build", [llama, gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("chunk", [None, 7], ids=["one-piece", "pieces-of-7"])
def test_labelled_loss_and_gradients_match_the_full_logits(build, chunk, monkeypatch):
    if chunk:  # pieces of 7 positions, each recomputed in the backward pass
        monkeypatch.setattr(causal_lm, "LOGITS_PER_CHUNK", chunk * VOCAB)
    model = with_lora(build())
    model.eval()  # no dropout: both computations see the same function
    b = batch()
    assert labelled_head(model) is not None
    full, full_grads = loss_and_grads(model, b, labelled=False)
    mine, my_grads = loss_and_grads(model, b, labelled=True)
    reference, ref_grads = loss_and_grads(model.double(), b, labelled=False)
    # float32's own error on this machine bounds the difference
    error = (full.double() - reference).abs().item()
    eps = torch.finfo(torch.float32).eps * reference.abs().item()
    assert (mine.double() - reference).abs().item() <= 4 * error + 8 * eps
    for f, m, r in zip(full_grads, my_grads, ref_grads, strict=True):
        grad_error = (f.double() - r).abs().max().item()
        scale = torch.finfo(torch.float32).eps * r.abs().max().item()
        assert (m.double() - r).abs().max().item() <= 4 * grad_error + 64 * scale


def test_labelled_loss_never_forms_full_logits(monkeypatch):
    """The head sees the labelled positions only, in pieces of at most LOGITS_PER_CHUNK logits."""
    monkeypatch.setattr(causal_lm, "LOGITS_PER_CHUNK", 5 * VOCAB)
    model = llama()
    rows_seen = []
    model.lm_head.register_forward_hook(lambda mod, inputs, out: rows_seen.append(out.shape))
    b = batch()
    labelled_loss(model.model, model.lm_head, b)
    predicted = int((b["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert all(len(shape) == 2 and shape[0] <= 5 for shape in rows_seen)
    assert sum(shape[0] for shape in rows_seen) == predicted < b["input_ids"].numel()


@pytest.mark.parametrize("by", ["flag", "probe"])
def test_a_soft_capped_head_keeps_its_full_logits(caplog, monkeypatch, by):
    """Gemma 2 caps its logits after the head: its config flag says so, and where the flag were
    unknown the probe finds the difference; the model keeps its own loss, and the loss is the
    same whatever compute.labelled_head says."""
    from loralab.tasks import causal_lm

    if by == "probe":
        monkeypatch.setattr(causal_lm, "HEAD_CHANGING_FLAGS", ())
    model = gemma2(cap=0.5)
    model.eval()
    with caplog.at_level(logging.INFO):
        assert labelled_head(model) is None
    expected = "final_logit_softcapping=0.5" if by == "flag" else "computes full logits"
    assert expected in caplog.text
    b = batch()
    with torch.no_grad():
        assert CausalLM().loss(model, b, labelled=True) == CausalLM().loss(model, b, labelled=False)


def test_an_uncapped_gemma2_uses_the_labelled_head():
    model = gemma2(cap=None)
    assert labelled_head(model) is not None


def test_the_probe_leaves_training_modes_and_random_state_alone():
    model = with_lora(llama())
    model.train()
    model.base_model.model.model.layers[0].eval()  # a submodule kept in eval mode on purpose
    modes = {name: m.training for name, m in model.named_modules()}
    state = torch.get_rng_state()
    assert labelled_head(model) is not None
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.equal(torch.get_rng_state(), state)
