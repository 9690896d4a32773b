"""Builds the small byte-level BPE tokenizer that ships with loralab for `model=tiny`.

Regenerate with `python -m loralab.models.tiny_tokenizer`; the files in assets/ are the output.
Byte-level BPE encodes any text (no unknown tokens), and a ChatML template makes the chat
formatting path run on tiny models exactly as on real instruct models.
"""

from __future__ import annotations

import random
from pathlib import Path

from loralab.data.builtin import BUILTIN_TASKS
from loralab.models.sources import TINY_TOKENIZER_DIR

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build(out_dir: Path = TINY_TOKENIZER_DIR, vocab_size: int = 512) -> Path:
    """Train the tokenizer on text from the built-in tasks and save it in transformers' format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = []
    for make in BUILTIN_TASKS.values():
        for _ in range(2000):
            corpus.extend(str(v) for v in make(rng).values())
    corpus.append("The quick brown fox jumps over the lazy dog. 0123456789 user assistant system")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    print(build())
