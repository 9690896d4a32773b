"""Data formats: which columns an example has, what kind of value each holds, and how a row reads
as an `Item` that a task encodes. Imports nothing heavy.

- `prompt_completion`: a prompt and the completion the loss counts;
- `chat`: a list of messages whose last one is the assistant answer the loss counts;
- `classification`: a text and its label.
"""

from __future__ import annotations

from typing import Any

from loralab.tasks.base import Item


class Format:
    """A data format: its columns (named by the data config) and how a row becomes an Item."""

    name: str = ""
    labelled: bool = False  # a label column: classification
    conversational: bool = False  # rows are chat turns (a prompt typed by a user reads as one)

    def kinds(self, cfg: Any) -> dict[str, str]:
        """Each column the format reads and the kind of value it holds (text, chat, label)."""
        raise NotImplementedError

    def columns(self, cfg: Any) -> list[str]:
        return list(self.kinds(cfg))

    def answer_column(self, cfg: Any) -> str | None:
        """The column of plain-text answers whose emptiness is checked, if any."""
        return None

    def item(self, row: dict, cfg: Any) -> Item:
        raise NotImplementedError


class PromptCompletion(Format):
    name = "prompt_completion"

    def kinds(self, cfg: Any) -> dict[str, str]:
        return {cfg.prompt_column: "text", cfg.completion_column: "text"}

    def answer_column(self, cfg: Any) -> str | None:
        return cfg.completion_column

    def item(self, row: dict, cfg: Any) -> Item:
        return Item(prompt=str(row[cfg.prompt_column]), answer=str(row[cfg.completion_column]))


class Chat(Format):
    name = "chat"
    conversational = True

    def kinds(self, cfg: Any) -> dict[str, str]:
        return {cfg.messages_column: "chat"}

    def item(self, row: dict, cfg: Any) -> Item:
        messages = row[cfg.messages_column]
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError("the last chat message must have role 'assistant'")
        return Item(messages=list(messages[:-1]), answer=messages[-1]["content"])


class TextLabel(Format):
    name = "classification"
    labelled = True

    def kinds(self, cfg: Any) -> dict[str, str]:
        return {cfg.text_column: "text", cfg.label_column: "label"}

    def label_column(self, cfg: Any) -> str:
        return cfg.label_column

    def item(self, row: dict, cfg: Any) -> Item:
        return Item(text=str(row[cfg.text_column]), label=str(row[cfg.label_column]))


FORMATS: dict[str, Format] = {f.name: f for f in (PromptCompletion(), Chat(), TextLabel())}
