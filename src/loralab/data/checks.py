"""Checks of local data files before `datasets` reads them, so that a bad line is reported by its
number and a fix, not by an Arrow error: text that is not UTF-8, lines that are not JSON objects,
a column whose values change type (strings on one line, numbers on another)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loralab.errors import DataError


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


class _Columns:
    """The type each column had first, and where."""

    def __init__(self, path: Path, label_column: str | None) -> None:
        self.path = path
        self.label_column = label_column
        self.first: dict[str, tuple[str, int]] = {}

    def add(self, row: Any, where: int, unit: str) -> None:
        if not isinstance(row, dict):
            raise DataError(
                f"{self.path} {unit} {where} is {_kind(row)}, not an object: each example must be "
                '{"column": value, ...}'
            )
        for key, value in row.items():
            if value is None:
                continue
            kind = _kind(value)
            seen = self.first.setdefault(key, (kind, where))
            if seen[0] != kind:
                fix = (
                    'write every label the same way (all strings, e.g. "1", or all numbers)'
                    if key == self.label_column
                    else "give the column one type in every example"
                )
                raise DataError(
                    f"{self.path}: column {key!r} is {seen[0]} on {unit} {seen[1]} but {kind} on {unit} {where}: {fix}"
                )


def _utf8(path: Path, raw: bytes, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} line {line} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}): "
            "save the file as UTF-8"
        ) from exc


def check_json_lines(path: Path, label_column: str | None = None) -> None:
    """Every non-blank line a UTF-8 JSON object; every column one type."""
    columns = _Columns(path, label_column)
    rows = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            text = _utf8(path, raw, n)
            if not text.strip():
                continue
            try:
                row = json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path} line {n} is not valid JSON ({exc.msg} at column {exc.colno}): fix or remove that line"
                ) from exc
            columns.add(row, n, "line")
            rows += 1
    if not rows:
        raise DataError(f"{path} holds no examples (it is empty): point the data config at the data")


def check_local_file(path: str | Path, label_column: str | None = None) -> None:
    """The checks that fit the file's kind (.jsonl, .json, .csv; Parquet is binary and typed)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        check_json_lines(path, label_column)
    elif suffix == ".json":
        text = "".join(_utf8(path, raw, n) for n, raw in enumerate(path.read_bytes().splitlines(keepends=True), 1))
        try:
            rows = json.loads(text)
        except json.JSONDecodeError:
            check_json_lines(path, label_column)  # JSON Lines in a .json file, as `datasets` allows
            return
        if rows == []:
            raise DataError(f"{path} holds no examples (an empty list): point the data config at the data")
        if not isinstance(rows, list):
            kind = _kind(rows).split(" ", 1)[1]
            raise DataError(f"{path} holds one JSON {kind}: give a list of examples, or one per line")
        columns = _Columns(path, label_column)
        for i, row in enumerate(rows, 1):
            columns.add(row, i, "example")
    elif suffix == ".csv":
        lines = 0
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                lines += bool(_utf8(path, raw, n).strip())
        if lines < 2:  # a header and at least one row
            raise DataError(f"{path} holds no examples: point the data config at the data")


# ---- the examples, once loaded: values the format can use ------------------------------------
TEXT_TYPES = (str, int, float)  # numbers are written out as text (a completion of 42)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # CSV's empty cells read as nan


def _text_problem(value: Any) -> str | None:
    if _missing(value):
        return "is missing (null or absent)"
    if isinstance(value, bool) or not isinstance(value, TEXT_TYPES):
        return f"is {_kind(value)}, not text"
    return None


def _chat_problem(value: Any) -> str | None:
    if _missing(value):
        return "is missing (null or absent)"
    if not isinstance(value, list):
        return f'is {_kind(value)}, not a list of {{"role": ..., "content": ...}} messages'
    if not value:
        return "is an empty list of messages"
    for n, message in enumerate(value, 1):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f'has message {n} without a "role": each message is {{"role": ..., "content": ...}}'
        if not isinstance(message.get("content"), str):
            return f'has message {n} whose "content" is {_kind(message.get("content"))}, not text'
    if value[-1]["role"] != "assistant":
        role = value[-1]["role"]
        return f"ends with a {role!r} message: the last message must be the assistant's answer the model learns"
    return None


def check_examples(columns: dict[str, list], kinds: dict[str, str], where: str) -> None:
    """Every example has a value of the right kind in each column the format reads (`kinds`:
    column -> text, chat or label), reported by the example's number in `where`. A null never
    becomes the text "None"."""
    check = {"text": _text_problem, "chat": _chat_problem, "label": _text_problem}
    for column, kind in kinds.items():
        for i, value in enumerate(columns[column], 1):
            problem = check[kind](value)
            if problem:
                raise DataError(
                    f"{where}: example {i}: {column!r} {problem}: fix that example or remove it"
                    + (" (or set data.format to the data's format)" if kind == "chat" else "")
                )


def check_not_all_empty(values: list, column: str, where: str) -> int:
    """Refuse a column whose every value is empty text (nothing to learn); return how many are empty."""
    empty = sum(1 for v in values if isinstance(v, str) and not v.strip())
    if values and empty == len(values):
        raise DataError(
            f"{where}: every {column!r} is empty: there is nothing to learn; check the data, or data.completion_column"
        )
    return empty
