"""Forgetting: how much worse the tuned model predicts ordinary text than the base did.

The probe is general prose that ships with loralab (`loralab/probes/general_text.txt`, written for
the project, not any task's data) or a text file of the user's. Its tokens are cut into blocks of
equal length (no padding; the remainder is left out); the model's mean cross-entropy over the
blocks' predicted tokens is measured before training and after it:
`forgetting = ce_after - ce_before` (nats per token; > 0: the model got worse at general text).
A causal LM predicts every token of a block from the ones before it; an encoder-decoder reads the
first half of a block and predicts the second. A classification model has no language-model head:
not measured.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loralab.errors import ConfigError

if TYPE_CHECKING:
    import torch

BUILTIN_PROBES = ("general_text",)


def load_probe(probe: str) -> tuple[str, str]:
    """(the probe's text, its sha256): a shipped probe by name or a UTF-8 text file's path."""
    if probe in BUILTIN_PROBES:
        text = importlib.resources.files("loralab.probes").joinpath(f"{probe}.txt").read_text(encoding="utf-8")
    else:
        path = Path(probe).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"callbacks.forgetting.probe={probe!r} is neither a shipped probe {list(BUILTIN_PROBES)} nor a "
                "text file: name one of those or give a file's path"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"callbacks.forgetting.probe: cannot read {path} as UTF-8 text ({exc})") from None
    if not text.strip():
        raise ConfigError(f"callbacks.forgetting.probe={probe!r} is empty: give a file with some text")
    return text, hashlib.sha256(text.encode("utf-8")).hexdigest()


def probe_blocks(tokenizer: Any, text: str, block_tokens: int) -> list[list[int]]:
    """The text's token ids (paragraph by paragraph, without special tokens) cut into blocks of
    `block_tokens`; a shorter remainder is left out."""
    ids: list[int] = []
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    for i, paragraph in enumerate(paragraphs):
        sep = "\n\n" if i < len(paragraphs) - 1 else ""
        ids += tokenizer(paragraph.strip() + sep, add_special_tokens=False)["input_ids"]
    return [ids[i : i + block_tokens] for i in range(0, len(ids) - block_tokens + 1, block_tokens)]


def block_length(model: Any, asked: int) -> int:
    """`asked`, or less where the model reads fewer positions."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(asked, int(limit)) if isinstance(limit, int) and limit > 0 else asked


def cross_entropy_sums(
    model: Any, task: Any, blocks: list[list[int]], batch_size: int, device: torch.device
) -> torch.Tensor:
    """[sum of token cross-entropies, predicted tokens] over `blocks`, in eval mode, float64."""
    import torch

    sums = torch.zeros(2, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(blocks), batch_size):
                batch = task.probe_batch(torch.tensor(blocks[start : start + batch_size], device=device))
                out = task.forward(model, batch)
                count = task.predicted(batch)
                sums += torch.stack([out.loss.double() * count, count.double()])
    finally:
        model.train(was_training)
    return sums
