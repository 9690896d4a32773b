"""Sequence to sequence: an encoder reads the prompt and a decoder writes the answer (T5, BART, ...).
The encoder's input is the prompt (through the chat template for chat data); the labels are the
answer as the tokenizer encodes a target (BART's leading <s> included) ending in the end token, and
the model shifts them right into the decoder's input."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loralab.tasks.base import CHAT_NEEDS_TEMPLATE, IGNORE_INDEX, NO_CACHE, Item, Task

if TYPE_CHECKING:
    import torch


class Seq2SeqLM(Task):
    name = "seq2seq"
    peft_type = "SEQ_2_SEQ_LM"
    auto_class = "AutoModelForSeq2SeqLM"
    formats = ("prompt_completion", "chat")
    metric = "exact_match"
    encoder_decoder = True
    models_text = True

    def encode(self, tokenizer: Any, item: Item, max_length: int, label_ids: dict | None) -> dict:
        """Prompt and answer are truncated to max_length each (the encoder and the decoder each hold
        max_length tokens)."""
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError(
                "the seq2seq task needs a tokenizer with an end (eos) token, or answers never end: use the "
                "model's own tokenizer"
            )
        if item.messages is not None:
            if not tokenizer.chat_template:
                raise ValueError(CHAT_NEEDS_TEMPLATE)
            # the template writes the special tokens it wants
            prompt = tokenizer.apply_chat_template(item.messages, add_generation_prompt=True, tokenize=False)
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        else:
            prompt_ids = tokenizer(item.prompt)["input_ids"]
        answer_ids = tokenizer(text_target=item.answer)["input_ids"]
        if not answer_ids or answer_ids[-1] != eos:
            answer_ids = [*answer_ids, eos]
        truncated = len(prompt_ids) > max_length or len(answer_ids) > max_length
        return {
            "input_ids": prompt_ids[:max_length],
            "labels": answer_ids[:max_length],
            "length": min(len(prompt_ids), max_length) + min(len(answer_ids), max_length),
            "prompt_length": min(len(prompt_ids), max_length),
            "full_length": max(len(prompt_ids), len(answer_ids)),
            "truncated": truncated,
            # a prompt cut short still has its answer to learn
            "keep": True,
        }

    def forward(self, model: torch.nn.Module, batch: dict, num_items: torch.Tensor | None = None) -> Any:
        out = model(**batch, **NO_CACHE)
        if num_items is not None:
            # encoder-decoder models take no num_items_in_batch: the token-loss sum from the logits
            import torch.nn.functional as F

            logits = out.logits.float()
            out.loss = (
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    batch["labels"].reshape(-1),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
                / num_items
            )
        return out

    def tokens(self, batch: dict) -> torch.Tensor:
        """The encoder's tokens and the decoder's."""
        return batch["attention_mask"].sum() + (batch["labels"] != IGNORE_INDEX).sum()

    def predicted(self, batch: dict) -> torch.Tensor:
        # decoder position t predicts label t (the model shifts the labels into its input)
        return (batch["labels"] != IGNORE_INDEX).sum()

    def probe_batch(self, blocks: torch.Tensor) -> dict:
        # the encoder reads a block's first half, the decoder predicts the second
        import torch

        half = blocks.shape[1] // 2
        first, second = blocks[:, :half].contiguous(), blocks[:, half:].contiguous()
        return {"input_ids": first, "attention_mask": torch.ones_like(first), "labels": second}

    def importance_inputs(self, batch: dict) -> tuple[dict, list[torch.Tensor]]:
        """The encoder's and the decoder's token positions. When both are as long, the labels get one
        more ignored position (after the real ones: nothing before it changes), so that a layer's
        input length says which sequence it reads."""
        import torch

        labels = batch["labels"]
        if labels.shape[1] == batch["input_ids"].shape[1]:
            pad = torch.full((labels.shape[0], 1), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
            labels = torch.cat([labels, pad], dim=1)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}
        return inputs, [batch["attention_mask"], (labels != IGNORE_INDEX).long()]

    def logits(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        """The decoder's logits on the answers (teacher forcing)."""
        import torch

        with torch.no_grad():
            return model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
            ).logits.float()

    def logit_mask(self, batch: dict) -> torch.Tensor | None:
        return (batch["labels"] != IGNORE_INDEX).long()

    def generate(
        self,
        model: torch.nn.Module,
        prompts: list[list[int]],
        tokenizer: Any,
        config: Any,
        streamer: Any = None,
        shared_prefix: bool = False,
    ) -> list[str]:
        """Right-padded prompts into the encoder; the answer is what the decoder writes (the encoder
        reads each prompt whole: `shared_prefix` changes nothing)."""
        batch = self.collate([{"input_ids": p, "labels": [0]} for p in prompts], tokenizer.pad_token_id)
        device = next(model.parameters()).device
        out = model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            generation_config=config,
            streamer=streamer,
        )
        return tokenizer.batch_decode(out, skip_special_tokens=True)
