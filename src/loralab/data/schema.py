"""The `data` group's schema: where the data comes from, its format, and how it is batched. Imports
nothing heavy: configs are checked with it before torch loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from loralab.config.values import check_seed
from loralab.data.formats import FORMATS
from loralab.errors import ConfigError
from loralab.tasks import check_format, get_task

SOURCES = ("builtin", "local", "hub")
LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class DataConfig:
    """Where the data comes from, how it is formatted, and how it is batched."""

    name: str = "dates"
    source: str = "builtin"
    builtin_task: Optional[str] = "dates"
    format: str = "prompt_completion"
    # what the model is trained to do: causal_lm, seq_cls or seq2seq; null chooses from the format
    # (classification: seq_cls) and the model (an encoder-decoder: seq2seq; else causal_lm)
    task: Optional[str] = None
    num_train: Optional[int] = 1000
    num_val: Optional[int] = 200
    # a held-out test split, evaluated once after training on the best checkpoint: built-in data
    # draws num_test examples (disjoint from train and val); local and hub data name their test
    # file or split. 0 / null: no test split
    num_test: Optional[int] = 0
    seed: int = 1234
    max_length: int = 128
    train_batch_size: int = 8
    eval_batch_size: int = 32
    generation_examples: int = 64
    max_new_tokens: int = 16
    # how greedy answers are scored against the references (loralab.metrics; each is logged as
    # val/<name> and test/<name>): exact_match, normalized_exact_match, token_f1, or a function's
    # import path (package.module.function)
    metrics: List[str] = field(default_factory=lambda: ["exact_match"])
    # a regular expression that finds the answer in an output and a reference before scoring (one
    # group around the answer, or none: the whole match), e.g. '#### (\S+)'
    answer_regex: Optional[str] = None
    train_file: Optional[str] = None
    val_file: Optional[str] = None
    test_file: Optional[str] = None
    val_fraction: float = 0.1
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    train_split: str = "train"
    val_split: Optional[str] = None
    test_split: Optional[str] = None
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    messages_column: str = "messages"
    text_column: str = "text"
    label_column: str = "label"
    labels: Optional[List[str]] = None
    num_workers: int = 0
    # batch examples of similar length (less padding, faster steps); changes which examples share
    # a batch, so it is a switch of its own and off by default
    group_by_length: bool = False
    # training examples packed into rows of data.pack_length tokens (null: data.max_length), each
    # with its own positions and attention (causal LMs; the model is checked to keep examples
    # apart): no padding to compute, more examples per step. data.train_batch_size counts rows
    packing: bool = False
    pack_length: Optional[int] = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"data.source must be one of {list(SOURCES)}, got {self.source!r}")
        if self.format not in FORMATS:
            raise ConfigError(f"data.format must be one of {list(FORMATS)}, got {self.format!r}")
        if self.task is not None:
            get_task(self.task)
            check_format(self.task, self.format)
        for key in ("max_length", "train_batch_size", "eval_batch_size", "max_new_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(f"data.{key} must be >= 1, got {getattr(self, key)}")
        self._check_metrics()
        if self.num_test is not None and self.num_test < 0:
            raise ConfigError(f"data.num_test must be >= 0 (0: no test split), got {self.num_test}")
        if self.generation_examples < 0:
            raise ConfigError(f"data.generation_examples must be >= 0, got {self.generation_examples}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        check_seed(self.seed, "data.seed")
        if self.pack_length is not None and self.pack_length < self.max_length:
            raise ConfigError(
                f"data.pack_length={self.pack_length} is shorter than data.max_length={self.max_length}: an example "
                "may not fit a row; set data.pack_length >= data.max_length (or null: data.max_length)"
            )
        if self.packing and self.group_by_length:
            raise ConfigError(
                "data.packing and data.group_by_length are both set: packing already leaves no padding to group "
                "away; set data.group_by_length=false"
            )
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.source == "builtin":
            from loralab.data.builtin import BUILTIN_TASKS

            if self.builtin_task not in BUILTIN_TASKS:
                raise ConfigError(
                    f"unknown built-in task {self.builtin_task!r}: "
                    f"set data.builtin_task to one of {sorted(BUILTIN_TASKS)}"
                )
            for key in ("num_train", "num_val"):
                if not getattr(self, key) or getattr(self, key) < 1:
                    raise ConfigError(f"data.{key} must be >= 1 for a built-in task")
        elif self.source == "local":
            if not self.train_file:
                raise ConfigError("data.train_file is not set: pass data.train_file=path/to/train.jsonl")
            for key in ("train_file", "val_file", "test_file"):
                path = getattr(self, key)
                if path is None:
                    continue
                if Path(path).is_dir():
                    raise ConfigError(
                        f"data.{key} {path} is a directory: pass a file ({', '.join(sorted(LOCAL_SUFFIXES))})"
                    )
                if not Path(path).is_file():
                    raise ConfigError(f"data.{key} not found: {path}: check the path")
                if Path(path).suffix.lower() not in LOCAL_SUFFIXES:
                    raise ConfigError(
                        f"data.{key} {path} has an unsupported suffix: use one of {sorted(LOCAL_SUFFIXES)}"
                    )
            if self.test_file is not None:
                for other in ("train_file", "val_file"):
                    if getattr(self, other) is not None and Path(self.test_file).samefile(getattr(self, other)):
                        raise ConfigError(
                            f"data.test_file is data.{other} ({self.test_file}): a test split must be held out from "
                            "training and from model selection; pass a separate file"
                        )
            if self.val_file is not None and Path(self.val_file).samefile(self.train_file):
                raise ConfigError(
                    f"data.val_file is the training file ({self.val_file}): validating on the training data "
                    "measures memorisation; pass a separate file, or leave data.val_file unset to hold out "
                    "data.val_fraction of the training file"
                )
        elif self.source == "hub":
            if not self.hub_id:
                raise ConfigError("data.hub_id is not set: pass data.hub_id=org/dataset")
            if self.test_split is not None and self.test_split in (self.train_split, self.val_split):
                other = "train_split" if self.test_split == self.train_split else "val_split"
                raise ConfigError(
                    f"data.test_split is data.{other} ({self.test_split!r}): a test split must be held out from "
                    "training and from model selection; pass another split"
                )
            if self.val_split is not None and self.val_split == self.train_split:
                raise ConfigError(
                    f"data.val_split is the training split ({self.val_split!r}): validating on the training data "
                    "measures memorisation; pass another split, or leave data.val_split unset to hold out "
                    "data.val_fraction of the training split"
                )

    def _check_metrics(self) -> None:
        from loralab.metrics import check_regex, get_metric

        if not self.metrics:
            raise ConfigError("data.metrics is empty: name at least one, e.g. data.metrics=[exact_match]")
        for name in self.metrics:
            get_metric(name)
        check_regex(self.answer_regex)
        if FORMATS[self.format].labelled and (list(self.metrics) != ["exact_match"] or self.answer_regex):
            raise ConfigError(
                "data.metrics and data.answer_regex score generated answers; classification reports val/accuracy: "
                "leave them unset with data.format=classification"
            )

    @property
    def default_task(self) -> str:
        """The task when the model does not choose: data.task, else the format's (causal_lm for text)."""
        if self.task is not None:
            return self.task
        return "seq_cls" if FORMATS[self.format].labelled else "causal_lm"
