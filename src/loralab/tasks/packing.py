"""data.packing: training examples packed into fixed-length rows, several per row, each keeping
its own positions (position ids restart at 0 for every example) and its own attention (no token
attends to another example's). The loss of a packed batch is the loss of the same examples
unpacked: it counts the same labelled tokens, each predicted from its own example alone.

transformers builds the block-diagonal causal mask itself when a batch has position ids and no
attention mask (padding-free training); whether a model honours that is measured, not looked up
(`check_packing`): a model that attends across examples (ALiBi computed from the mask, say) is
refused before training."""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any

from loralab.errors import ModelError
from loralab.tasks.base import IGNORE_INDEX

if TYPE_CHECKING:
    import torch


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Example indices packed into rows of at most `capacity` tokens, best-fit decreasing: the
    longest example first, each into the row it fills most tightly (a new row when none fits).
    Deterministic; each row's indices in ascending order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (tokens left, row), sorted
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"an example of {n} tokens does not fit a row of {capacity}")
        k = bisect.bisect_left(free, (n, -1))
        if k == len(free):
            rows.append([i])
            left, row = capacity - n, len(rows) - 1
        else:
            left, row = free.pop(k)
            rows[row].append(i)
            left -= n
        if left > 0:
            bisect.insort(free, (left, row))
    return [sorted(r) for r in rows]


class PackedRows:
    """The training examples as packed rows: item i is the list of row i's examples."""

    def __init__(self, examples: Any, rows: list[list[int]]) -> None:
        self.examples = examples
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> list[dict]:
        return [self.examples[j] for j in self.rows[i]]


class PackCollator:
    """Rows of `length` tokens: each example's ids and labels one after another, its positions
    from 0, its first label ignored (the previous example's last token does not predict it), then
    padding (masked out of the token count, labels ignored, positions of its own from 0). The
    attention mask marks the real tokens for counting; the model is run without it."""

    def __init__(self, pad_id: int, length: int) -> None:
        self.pad_id = pad_id
        self.length = length

    def __call__(self, rows: list[list[dict]]) -> dict[str, torch.Tensor]:
        import torch

        shape = (len(rows), self.length)
        ids = torch.full(shape, self.pad_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros(shape, dtype=torch.long)
        mask = torch.zeros(shape, dtype=torch.long)
        for b, row in enumerate(rows):
            at = 0
            for ex in row:
                n = len(ex["input_ids"])
                ids[b, at : at + n] = torch.as_tensor(ex["input_ids"])
                labels[b, at : at + n] = torch.as_tensor(ex["labels"])
                labels[b, at] = IGNORE_INDEX
                positions[b, at : at + n] = torch.arange(n)
                mask[b, at : at + n] = 1
                at += n
            positions[b, at:] = torch.arange(self.length - at)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": positions}


def model_batch(batch: dict) -> dict:
    """What the model is given: a packed batch (it has position ids) goes without its attention
    mask, so that transformers keeps attention within each example."""
    if "position_ids" in batch:
        return {k: v for k, v in batch.items() if k != "attention_mask"}
    return batch


def check_packing(model: torch.nn.Module, name: str) -> None:
    """Refuse a model that lets packed examples see each other. Measured: two random sequences
    run alone and packed into one row; the packed logits must be the lone ones, to within what
    running a sequence in a longer padded batch changes on this machine."""
    import torch

    from loralab.tasks.causal_lm import probing

    lengths = (5, 7)
    width = sum(lengths) + 2
    with probing(model) as (device, vocab, generator), torch.no_grad():
        seqs = [torch.randint(0, vocab, (1, n), generator=generator) for n in lengths]
        packed = PackCollator(0, width)([[{"input_ids": s[0].tolist(), "labels": s[0].tolist()} for s in seqs]])
        # as training runs it: without a key/value cache (with one, transformers does not look
        # for packed sequences)
        alone = [model(input_ids=s.to(device), use_cache=False).logits[0].float() for s in seqs]
        # the first sequence again, right-padded to the row's width: the machine's own noise
        padded = torch.zeros((1, width), dtype=torch.long)
        padded[0, : lengths[0]] = seqs[0][0]
        mask = (torch.arange(width) < lengths[0]).long()[None]
        noise_logits = model(input_ids=padded.to(device), attention_mask=mask.to(device), use_cache=False)
        noise_logits = noise_logits.logits[0].float()
        inputs = {k: v.to(device) for k, v in model_batch(packed).items() if k != "labels"}
        out = model(**inputs, use_cache=False).logits[0].float()
    scale = max(float(a.abs().max()) for a in alone) or 1.0
    noise = float((noise_logits[: lengths[0]] - alone[0]).abs().max()) / scale
    eps = torch.finfo(torch.float32).eps  # the logits are compared in float32
    at, moved = 0, 0.0
    for n, a in zip(lengths, alone, strict=True):
        moved = max(moved, float((out[at : at + n] - a).abs().max()) / scale)
        at += n
    if moved > max(100 * noise, 1000 * eps):
        raise ModelError(
            f"model {name} ({type(model).__name__}) lets packed examples attend to each other (packed logits differ "
            f"from the examples' own by {moved:.2g} of their scale): set data.packing=false, or use a model whose "
            "attention follows position ids (Llama, Qwen2, Mistral, Gemma 2, GPT-2, GPT-NeoX, Phi, Falcon)"
        )
