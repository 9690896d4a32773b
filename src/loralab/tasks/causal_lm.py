"""Causal LM: a decoder continues the prompt; the loss counts the answer's tokens only (prompt
positions get IGNORE_INDEX). With a chat template, the prompt is a user turn and the answer the
assistant's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loralab.errors import ModelError
from loralab.tasks.base import CHAT_NEEDS_TEMPLATE, IGNORE_INDEX, Item, Task

if TYPE_CHECKING:
    import torch


def split_chat(tokenizer: Any, prompt_messages: list[dict], answer: str) -> tuple[str, str]:
    """Prompt text (with the generation prompt) and the completion text the template appends."""
    prompt_text = tokenizer.apply_chat_template(prompt_messages, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(
        prompt_messages + [{"role": "assistant", "content": answer}], tokenize=False
    )
    if full_text.startswith(prompt_text):
        return prompt_text, full_text[len(prompt_text) :]
    # templates that rewrite earlier turns: fall back to the answer and an end token
    return prompt_text, answer + (tokenizer.eos_token or "")


def encode_pair(tokenizer: Any, prompt: str, completion: str, max_length: int) -> dict:
    """Prompt then completion in one sequence, truncated to max_length; labels on the completion."""
    prompt_ids = tokenizer(prompt, add_special_tokens=not tokenizer.chat_template)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    input_ids = prompt_ids + completion_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    truncated = len(input_ids) > max_length
    input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {
        "input_ids": input_ids,
        "labels": labels,
        "length": len(input_ids),
        "prompt_length": len(prompt_ids),
        "full_length": len(prompt_ids) + len(completion_ids),
        "truncated": truncated,
        # nothing left to learn from when truncation removed the whole completion
        "keep": any(label != IGNORE_INDEX for label in labels),
    }


def chat_text(tokenizer: Any, item: Item) -> tuple[str, str]:
    """The prompt and completion text of a prompt/completion or chat item: through the chat
    template when the tokenizer has one (a chat item needs one)."""
    if item.messages is not None:
        if not tokenizer.chat_template:
            raise ValueError(CHAT_NEEDS_TEMPLATE)
        return split_chat(tokenizer, item.messages, item.answer)
    if tokenizer.chat_template:
        return split_chat(tokenizer, [{"role": "user", "content": item.prompt}], item.answer)
    return item.prompt, item.answer + (tokenizer.eos_token or "")


def check_causal(model: torch.nn.Module, name: str) -> None:
    """Refuse a model that sees later tokens as a causal LM: an encoder (BERT, RoBERTa, ...) loads
    as AutoModelForCausalLM with bidirectional attention and would learn to copy the answer it must
    predict. Measured, not looked up: the logits of the first positions must not change when only
    later tokens do, beyond what recomputing the same input changes on this machine."""
    import torch

    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        vocab = model.get_input_embeddings().num_embeddings
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (2, 8), generator=generator)
        later = ids.clone()
        later[:, 4:] = (ids[:, 4:] + 1 + torch.randint(0, vocab - 1, (2, 4), generator=generator)) % vocab
        with torch.no_grad():
            first = [model(input_ids=x.to(device)).logits[:, :4].float() for x in (ids, ids, later)]
    finally:
        model.train(was_training)
    scale = first[0].abs().max().clamp_min(1e-12)
    noise = ((first[0] - first[1]).abs().max() / scale).item()
    moved = ((first[0] - first[2]).abs().max() / scale).item()
    if moved > max(100 * noise, 1e-6):
        raise ModelError(
            f"model {name} ({type(model).__name__}) lets each token see the tokens after it (changing later tokens "
            "changes the logits of earlier ones): as a causal LM it would learn from the answer it must predict; "
            "train it on a classification task (data.format=classification), or use a decoder model"
        )


class CausalLM(Task):
    name = "causal_lm"
    peft_type = "CAUSAL_LM"
    auto_class = "AutoModelForCausalLM"
    formats = ("prompt_completion", "chat")
    metric = "exact_match"
    encoder_decoder = False
    models_text = True
    templates_prompts = True

    def check_model(self, model: torch.nn.Module, name: str) -> None:
        check_causal(model, name)

    def encode(self, tokenizer: Any, item: Item, max_length: int, label_ids: dict | None) -> dict:
        prompt, completion = chat_text(tokenizer, item)
        return encode_pair(tokenizer, prompt, completion, max_length)

    def predicted(self, batch: dict) -> torch.Tensor:
        # the model predicts position t+1 from t: labels shifted by one, IGNORE_INDEX ignored
        return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()

    def probe_batch(self, blocks: torch.Tensor) -> dict:
        # every token predicted from the ones before it
        import torch

        return {"input_ids": blocks, "attention_mask": torch.ones_like(blocks), "labels": blocks}

    def generate(
        self, model: torch.nn.Module, prompts: list[list[int]], tokenizer: Any, config: Any, streamer: Any = None
    ) -> list[str]:
        """Left-padded prompts; the answer is what follows them."""
        import torch

        device = next(model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config, streamer=streamer
        )
        return tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
