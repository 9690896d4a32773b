"""data.packing: rows hold every example once and fit their length; a packed batch's loss and
gradients are those of the same examples unpacked (no example sees another), within float32's own
error on this machine against a float64 reference; a model that lets packed examples see each
other is refused."""

from __future__ import annotations

import random

import pytest
import torch

from loralab.errors import ModelError
from loralab.tasks.base import IGNORE_INDEX
from loralab.tasks.causal_lm import CausalLM
from loralab.tasks.packing import PackCollator, check_packing, model_batch, pack_rows
from tests.conftest import loss_and_grads
from tests.conftest import tiny_gpt2 as gpt2
from tests.conftest import tiny_llama as llama

VOCAB = 300


def test_rows_hold_every_example_once_and_fit():
    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(500)]
    rows = pack_rows(lengths, 64)
    flat = sorted(i for row in rows for i in row)
    assert flat == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    # best fit decreasing stays within 11/9 OPT + 1 rows; OPT >= total / capacity
    assert len(rows) <= 11 / 9 * (sum(lengths) / 64) + 1
    assert pack_rows(lengths, 64) == rows  # deterministic
    assert pack_rows([64, 64, 1], 64) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([65], 64)


def examples(seed: int = 0) -> list[dict]:
    """Prompt/completion examples of varied lengths, as encode_pair makes them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, prompt in ((9, 4), (15, 10), (6, 2), (12, 5), (4, 1)):
        ids = torch.randint(0, VOCAB, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return out


@pytest.mark.parametrize("labelled", [False, True], ids=["full-logits", "labelled-head"])
@pytest.mark.parametrize("build", [llama, gpt2], ids=["llama", "gpt2"])
def test_a_packed_batch_has_the_loss_and_gradients_of_its_examples_unpacked(build, labelled):
    from peft import LoraConfig, get_peft_model

    from loralab.tasks.base import Task

    model = build()
    check_packing(model, "tiny")
    torch.manual_seed(1)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.eval()  # no dropout: both batches see the same function
    exs = examples()
    rows = pack_rows([len(e["input_ids"]) for e in exs], 24)
    assert len(rows) < len(exs)  # several examples share a row
    packed = PackCollator(0, 24)([[exs[i] for i in row] for row in rows])
    unpacked = Task().collate(exs, 0)
    assert int(packed["attention_mask"].sum()) == int(unpacked["attention_mask"].sum())  # tokens counted
    assert CausalLM().predicted(packed) == CausalLM().predicted(unpacked)  # the same labelled tokens
    mine, my_grads = loss_and_grads(model, packed, labelled)
    plain, plain_grads = loss_and_grads(model, unpacked, labelled)
    reference, ref_grads = loss_and_grads(model.double(), unpacked, labelled)
    error = (plain.double() - reference).abs().item()
    eps = torch.finfo(torch.float32).eps * reference.abs().item()
    assert (mine.double() - reference).abs().item() <= 4 * error + 8 * eps
    for p, m, r in zip(plain_grads, my_grads, ref_grads, strict=True):
        grad_error = (p.double() - r).abs().max().item()
        scale = torch.finfo(torch.float32).eps * r.abs().max().item()
        assert (m.double() - r).abs().max().item() <= 4 * grad_error + 64 * scale


def test_the_same_rows_with_their_attention_mask_would_mix_examples():
    """The check above can fail: run with the mask (one sequence per row), the packed examples
    attend to each other and the loss moves."""
    model = llama().eval()
    exs = examples()
    rows = pack_rows([len(e["input_ids"]) for e in exs], 24)
    packed = PackCollator(0, 24)([[exs[i] for i in row] for row in rows])
    with torch.no_grad():
        right = model(**model_batch(packed), use_cache=False).loss
        mixed = model(**{k: v for k, v in packed.items() if k != "position_ids"}, use_cache=False).loss
    assert abs(right - mixed) > 1e-3 * abs(right)


def test_a_model_that_attends_across_packed_examples_is_refused():
    """BLOOM derives its ALiBi positions from the attention mask, not the position ids."""
    from transformers import BloomConfig, BloomForCausalLM

    torch.manual_seed(0)
    model = BloomForCausalLM(BloomConfig(vocab_size=VOCAB, hidden_size=64, n_layer=2, n_head=4))
    with pytest.raises(ModelError, match="lets packed examples attend to each other.*data.packing=false"):
        check_packing(model, "tiny-bloom")


def test_a_packed_run_trains_on_rows_and_counts_real_tokens(make_cfg, tiny_tokenizer):
    """loralab-train data.packing=true: the loader yields rows of data.max_length, the run counts
    the real tokens of the rows it trained on (not rows x length), and records how full they are."""
    import json
    from pathlib import Path

    from loralab.data.datamodule import LoraDataModule
    from loralab.train import train
    from loralab.validation import validate

    steps = 4
    cfg = make_cfg("data=word_sort", "data.num_train=64", "data.packing=true", f"trainer.max_steps={steps}")
    train(cfg)
    run_dir = Path(cfg.paths.run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    packed = json.loads((run_dir / "run_meta.json").read_text())["data"]["stats"]["train"]["packed"]
    assert summary["status"] == "completed" and summary["merge_passed"]
    dm = LoraDataModule(validate(cfg).data, tiny_tokenizer, cache_dir=cfg.paths.cache_dir)
    dm.setup("fit")
    rows = dm.packed_rows()
    assert packed["rows"] == len(rows) < 64 and packed["row_length"] == cfg.data.max_length
    batches = [b for _, b in zip(range(steps), dm.train_dataloader(), strict=False)]
    assert all(b["input_ids"].shape == (cfg.data.train_batch_size, cfg.data.max_length) for b in batches)
    assert summary["train_tokens"] == sum(int(b["attention_mask"].sum()) for b in batches)
