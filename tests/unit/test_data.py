"""Built-in tasks, formatting with completion-only labels, dynamic padding, data errors."""

from __future__ import annotations

import json

import pytest

from loralab.data.builtin import generate
from loralab.data.datamodule import LoraDataModule, PadCollator
from loralab.data.formats import FORMATS
from loralab.data.schema import DataConfig
from loralab.errors import DataError
from loralab.tasks import get_task
from loralab.tasks.base import Item


def encode(tokenizer, item: Item, max_length: int, task: str = "causal_lm") -> dict:
    return get_task(task).encode(tokenizer, item, max_length, None)


def test_builtin_tasks_are_deterministic_and_disjoint():
    a_train, a_val = generate("dates", 200, 50, seed=7)
    b_train, b_val = generate("dates", 200, 50, seed=7)
    assert a_train == b_train and a_val == b_val
    assert generate("dates", 200, 50, seed=8)[0] != a_train
    assert not {e["prompt"] for e in a_val} & {e["prompt"] for e in a_train}
    ex = a_train[0]
    assert ex["completion"][4] == "-" and len(ex["completion"]) == 10


def test_word_sort_answer_is_sorted():
    train, _ = generate("word_sort", 20, 5, seed=1)
    for ex in train:
        words = ex["prompt"].split(": ", 1)[1].split(", ")
        assert ex["completion"] == ", ".join(sorted(words))


def test_prompt_tokens_are_masked(tiny_tokenizer):
    enc = encode(tiny_tokenizer, Item(prompt="Convert: May 1, 2000", answer="2000-05-01"), 128)
    labels, ids = enc["labels"], enc["input_ids"]
    n_prompt = enc["prompt_length"]
    assert all(x == -100 for x in labels[:n_prompt])
    assert labels[n_prompt:] == ids[n_prompt:]
    decoded = tiny_tokenizer.decode(ids[n_prompt:])
    assert decoded.startswith("2000-05-01") and "<|im_end|>" in decoded
    assert "<|im_start|>assistant" in tiny_tokenizer.decode(ids[:n_prompt])


def test_without_chat_template_completion_ends_with_eos(tiny_tokenizer):
    tiny_tokenizer.chat_template = None
    enc = encode(tiny_tokenizer, Item(prompt="Q: 1+1=", answer=" 2"), 128)
    completion = enc["input_ids"][enc["prompt_length"] :]
    assert completion[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(enc["input_ids"]).startswith("Q: 1+1= 2")


def test_chat_format_trains_last_assistant_turn(tiny_tokenizer):
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "see you"},
    ]
    item = FORMATS["chat"].item({"messages": msgs}, DataConfig())
    enc = encode(tiny_tokenizer, item, 256)
    trained = tiny_tokenizer.decode([i for i, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != -100])
    assert trained.startswith("see you") and "hello" not in trained


def test_truncation_drops_examples_without_completion(tiny_tokenizer):
    enc = encode(tiny_tokenizer, Item(prompt="word " * 50, answer="answer"), 10)
    assert enc["truncated"] and not enc["keep"] and len(enc["input_ids"]) == 10


def test_collator_pads_to_longest_in_batch():
    collate = PadCollator(pad_id=0, task="causal_lm")
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}])
    assert batch["input_ids"].shape == (2, 3)
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]


def _dm(tokenizer, tmp_path, **kw):
    dm = LoraDataModule(DataConfig(**kw), tokenizer, cache_dir=tmp_path / "cache")
    dm.setup("fit")
    return dm


def test_datamodule_builtin(tiny_tokenizer, tmp_path):
    dm = _dm(tiny_tokenizer, tmp_path, num_train=64, num_val=16, generation_examples=8)
    assert dm.stats["train"]["examples"] == 64 and dm.stats["val"]["examples"] == 16
    assert len(dm.generation_set) == 8 and len(dm.fingerprint) == 16
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8
    assert batch["attention_mask"][:, -1].sum() >= 1  # padded to the longest in the batch
    again = _dm(tiny_tokenizer, tmp_path, num_train=64, num_val=16, generation_examples=8)
    assert again.fingerprint == dm.fingerprint
    assert list((tmp_path / "cache" / "tokenized").glob("*.arrow"))  # tokenization is cached


def test_datamodule_local_jsonl_and_classification(tiny_tokenizer, tmp_path):
    path = tmp_path / "cls.jsonl"
    rows = [{"text": f"sample {i}", "label": ["pos", "neg"][i % 2]} for i in range(40)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    dm = _dm(
        tiny_tokenizer,
        tmp_path,
        source="local",
        train_file=str(path),
        format="classification",
        num_train=None,
        num_val=None,
        builtin_task=None,
        val_fraction=0.25,
    )
    assert dm.labels == ["neg", "pos"]
    assert dm.stats["train"]["examples"] == 30 and dm.stats["val"]["examples"] == 10
    assert next(iter(dm.val_dataloader()))["labels"].dim() == 1


@pytest.mark.parametrize(
    "content, kw, fragment",
    [
        ('{"question": "a", "answer": "b"}\n' * 5, {}, "format prompt_completion needs"),
        ("", {}, "cannot read data|empty"),
        (
            "".join(f'{{"prompt": "a{i}", "completion": "b"}}\n' for i in range(5)),
            {"max_length": 1},
            "longer than data.max_length=1",
        ),
        (
            "".join(f'{{"text": "a{i}", "label": "x"}}\n' for i in range(5)),
            {"format": "classification"},
            "at least 2 labels",
        ),
    ],
)
def test_data_errors(tiny_tokenizer, tmp_path, content, kw, fragment):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=fragment):
        _dm(
            tiny_tokenizer,
            tmp_path,
            source="local",
            train_file=str(path),
            num_train=None,
            num_val=None,
            builtin_task=None,
            **kw,
        )


def test_length_grouping_pads_less_and_keeps_the_epoch(tiny_tokenizer, tmp_path):
    """data.group_by_length: the same examples once each per epoch, batches of similar length
    (less padding than the plain shuffle), the same order on every call, and a resumed epoch
    continues where it stopped."""
    from loralab.data.datamodule import ResumableRandomSampler

    def build(group: bool) -> LoraDataModule:
        cfg = DataConfig(name="word_sort", builtin_task="word_sort", num_train=400, num_val=16, group_by_length=group)
        dm = LoraDataModule(cfg, tiny_tokenizer, cache_dir=tmp_path)
        dm.setup("fit")
        return dm

    def padding(dm: LoraDataModule) -> float:
        masks = [b["attention_mask"] for b in dm.train_dataloader()]
        return 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)

    plain, grouped = build(False), build(True)
    assert padding(grouped) < 0.5 * padding(plain)
    lengths = list(grouped.train_set["length"])
    sampler = ResumableRandomSampler(len(lengths), 7, lengths=lengths, batch_size=8)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))
    assert order == list(sampler) != list(ResumableRandomSampler(len(lengths), 7))
    sampler.skip = 24
    assert list(sampler) == order[24:]
    halves = [list(ResumableRandomSampler(len(lengths), 7, 2, rank, lengths, 4)) for rank in (0, 1)]
    assert sorted(halves[0] + halves[1]) == list(range(len(lengths)))


def test_local_file_checks_name_the_line_and_the_fix(tmp_path):
    from loralab.data.checks import check_local_file
    from loralab.errors import DataError

    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": null}\n')
    check_local_file(good)  # blank lines and nulls are fine
    array = tmp_path / "rows.json"
    array.write_text('[{"text": "a", "label": "x"}, {"text": "b", "label": 2}]')
    with pytest.raises(DataError, match=r"column 'label' is a string on example 1 but a number on example 2: write"):
        check_local_file(array, label_column="label")
    lines = tmp_path / "lines.json"  # JSON Lines in a .json file, as datasets reads them
    lines.write_text('{"text": "a"}\n{"text": "b"\n')
    with pytest.raises(DataError, match=r"lines.json line 2 is not valid JSON \(Expecting ',' delimiter at column 13"):
        check_local_file(lines)
    table = tmp_path / "rows.csv"
    table.write_bytes(b"text,label\ncaf\xe9,x\n")
    with pytest.raises(DataError, match=r"rows.csv line 2 is not UTF-8 text \(byte 0xe9 at column 4\)"):
        check_local_file(table)
    scalar = tmp_path / "one.json"
    scalar.write_text('{"text": "a"}')
    with pytest.raises(DataError, match="holds one JSON object: give a list of examples, or one per line"):
        check_local_file(scalar)


def test_a_tokenizer_without_a_pad_token_pads_with_eos_and_says_so(tiny_tokenizer, caplog):
    """Not an error: padded positions are masked out of attention and loss, so eos serves. (A
    tokenizer with neither token is refused: docs/bad-inputs.md.)"""
    from loralab.models.sources import _finish_tokenizer

    tiny_tokenizer.pad_token = None
    assert tiny_tokenizer.pad_token is None and tiny_tokenizer.eos_token is not None
    finished = _finish_tokenizer(tiny_tokenizer)
    assert finished.pad_token == finished.eos_token and finished.pad_token_id == finished.eos_token_id
    assert "the tokenizer has no pad token: padding with its eos token" in caplog.text


@pytest.mark.parametrize("task", ["causal_lm", "seq2seq"])
def test_chat_data_without_a_chat_template_says_what_to_use_instead(tiny_tokenizer, task):
    tiny_tokenizer.chat_template = None
    item = FORMATS["chat"].item(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, DataConfig()
    )
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template: use data.format=prompt_completion"):
        encode(tiny_tokenizer, item, 64, task)
