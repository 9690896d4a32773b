"""Turn one example into token ids and labels. The loss counts completion tokens only:
prompt positions get label -100."""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100


def _split_chat(tokenizer: Any, prompt_messages: list[dict], answer: str) -> tuple[str, str]:
    """Prompt text (with the generation prompt) and the completion text the template appends."""
    prompt_text = tokenizer.apply_chat_template(prompt_messages, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(
        prompt_messages + [{"role": "assistant", "content": answer}], tokenize=False
    )
    if full_text.startswith(prompt_text):
        return prompt_text, full_text[len(prompt_text) :]
    # templates that rewrite earlier turns: fall back to the answer and an end token
    return prompt_text, answer + (tokenizer.eos_token or "")


def _encode_pair(tokenizer: Any, prompt: str, completion: str, max_length: int) -> dict:
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


def encode_prompt_completion(tokenizer: Any, prompt: str, completion: str, max_length: int) -> dict:
    """Prompt/completion: the chat template is applied when the tokenizer has one."""
    if tokenizer.chat_template:
        prompt_str, completion_str = _split_chat(tokenizer, [{"role": "user", "content": prompt}], completion)
    else:
        prompt_str, completion_str = prompt, completion + (tokenizer.eos_token or "")
    return _encode_pair(tokenizer, prompt_str, completion_str, max_length)


def encode_chat(tokenizer: Any, messages: list[dict], max_length: int) -> dict:
    """Chat messages: the last message is the assistant answer that the loss counts."""
    if not tokenizer.chat_template:
        raise ValueError("the chat format needs a tokenizer with a chat template")
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("the last chat message must have role 'assistant'")
    prompt_str, completion_str = _split_chat(tokenizer, list(messages[:-1]), messages[-1]["content"])
    return _encode_pair(tokenizer, prompt_str, completion_str, max_length)


def encode_classification(tokenizer: Any, text: str, label_id: int, max_length: int) -> dict:
    """Text -> ids (truncated to max_length) with one class label."""
    ids = tokenizer(text)["input_ids"]
    return {
        "input_ids": ids[:max_length],
        "labels": label_id,
        "length": min(len(ids), max_length),
        "prompt_length": min(len(ids), max_length),
        "full_length": len(ids),
        "truncated": len(ids) > max_length,
        "keep": True,
    }
