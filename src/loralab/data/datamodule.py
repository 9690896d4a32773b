"""The datamodule: load -> check columns -> format and tokenize (cached) -> dynamic-padding batches."""

from __future__ import annotations

import hashlib
import json
import logging
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler

from loralab import tasks
from loralab.data import formats
from loralab.data.builtin import generate
from loralab.data.checks import check_examples, check_local_file, check_not_all_empty
from loralab.data.formats import FORMATS
from loralab.data.schema import LOCAL_SUFFIXES, DataConfig
from loralab.errors import DataError
from loralab.tasks import Task, get_task
from loralab.tasks.packing import PackCollator, PackedRows, pack_rows

log = logging.getLogger(__name__)
# a change to the encoding code must not reuse token caches made by the old code
FORMAT_CODE = hashlib.sha256(
    b"".join(p.read_bytes() for p in [Path(formats.__file__), *sorted(Path(tasks.__file__).parent.glob("*.py"))])
).hexdigest()[:12]


class PadCollator:
    """Pads each batch to its own longest example (right padding, masked); the task pads its labels."""

    def __init__(self, pad_id: int, task: Task | str) -> None:
        self.pad_id = pad_id
        self.task = get_task(task)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return self.task.collate(examples, self.pad_id)


class ResumableRandomSampler(DistributedSampler):
    """A seeded permutation per epoch that can start part-way through, so that a run resumed
    mid-epoch sees the batches an uninterrupted run would have seen next.

    With several processes, rank r takes every `num_replicas`-th index of the same permutation
    (padded by its first indices to a multiple): one process with a batch of n·b sees what n
    processes with b each see together. A DistributedSampler, so Lightning does not wrap it.

    Given `lengths`, the permutation is cut into mega-batches of `MEGABATCH` global batches and
    each is sorted by length (longest first), so that a batch holds examples of similar length and
    pads little; batches still come in random order of mega-batch."""

    MEGABATCH = 50

    def __init__(
        self,
        size: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        lengths: list[int] | None = None,
        batch_size: int = 1,
    ) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.size = size
        self.seed = seed
        self.skip = 0
        self.lengths = lengths
        self.batch_size = batch_size

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        if self.lengths is not None:
            chunk = self.MEGABATCH * self.batch_size * self.num_replicas
            order = torch.cat(
                [
                    mega[torch.argsort(torch.tensor([-self.lengths[i] for i in mega.tolist()]), stable=True)]
                    for mega in order.split(chunk)
                ]
            )
        if self.num_replicas > 1:
            order = torch.cat([order, order[: self.total_size - self.size]])[self.rank :: self.num_replicas]
        skip, self.skip = self.skip, 0
        return iter(order[skip:].tolist())

    def __len__(self) -> int:
        # the full epoch: Lightning counts a resumed epoch's batches from its restored batch index
        return self.num_samples


def _encode(example: dict, tokenizer: Any, cfg: DataConfig, task: Task, label_ids: dict | None) -> dict:
    return task.encode(tokenizer, FORMATS[cfg.format].item(example, cfg), cfg.max_length, label_ids)


def fingerprint_rows(rows: Any) -> str:
    """A content hash of the raw examples: the data fingerprint recorded with every run."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


class LoraDataModule(pl.LightningDataModule):
    """Built-in, local-file or hub data in one of the formats, encoded for the task (default: the
    format's own, causal LM for text)."""

    def __init__(
        self, cfg: DataConfig, tokenizer: Any, cache_dir: str | Path | None = None, task: Task | str | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.format = FORMATS[cfg.format]
        self.task = get_task(task if task is not None else cfg.default_task)
        self.tokenizer = tokenizer
        self.cache_dir = Path(cache_dir).expanduser() / "tokenized" if cache_dir else None
        self.train_set = self.val_set = None
        self.labels: list[str] | None = None
        self.stats: dict = {}
        self._rows: list[list[int]] | None = None
        self.fingerprint: str | None = None
        self.generation_set: list[dict] = []
        self.val_in_train = 0
        # the held-out test split (data.num_test, data.test_file, data.test_split), or None
        self.test_set = None
        self.test_generation_set: list[dict] = []
        self.test_fingerprint: str | None = None
        self.test_in_train = 0

    # ---- loading -------------------------------------------------------------------------
    def _load_raw(self) -> tuple[Any, Any, Any]:
        """(train, val, test); test is None without a test split."""
        from datasets import Dataset, load_dataset

        cfg = self.cfg
        test = None
        if cfg.source == "builtin":
            if cfg.num_test:
                train, val, test = generate(cfg.builtin_task, cfg.num_train, cfg.num_val, cfg.seed, cfg.num_test)
                train, val, test = Dataset.from_list(train), Dataset.from_list(val), Dataset.from_list(test)
                # counted, not refused: the classification task's sentence space is small on purpose
                self._check_test_overlap(train, val, test, refuse=False)
                return train, val, test
            train, val = generate(cfg.builtin_task, cfg.num_train, cfg.num_val, cfg.seed)
            return Dataset.from_list(train), Dataset.from_list(val), None
        try:
            if cfg.source == "local":
                label = cfg.label_column if self.format.labelled else None
                for path in filter(None, (cfg.train_file, cfg.val_file, cfg.test_file)):
                    check_local_file(path, label)  # a bad line by its number, before Arrow reads it
                kind = LOCAL_SUFFIXES[Path(cfg.train_file).suffix.lower()]
                files = {"train": cfg.train_file}
                if cfg.val_file:
                    files["validation"] = cfg.val_file
                if cfg.test_file:
                    files["test"] = cfg.test_file
                raw = load_dataset(kind, data_files=files)
                train = raw["train"]
                val = raw["validation"] if cfg.val_file else None
                test = raw["test"] if cfg.test_file else None
            else:
                train = load_dataset(cfg.hub_id, cfg.hub_config, split=cfg.train_split)
                val = load_dataset(cfg.hub_id, cfg.hub_config, split=cfg.val_split) if cfg.val_split else None
                if cfg.test_split:
                    test = load_dataset(cfg.hub_id, cfg.hub_config, split=cfg.test_split)
        except DataError:
            raise
        except Exception as exc:  # datasets raises many types; the user needs the first line
            where = cfg.train_file if cfg.source == "local" else cfg.hub_id
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"cannot read data from {where}: {first}") from exc
        if len(train) == 0:
            raise DataError("the training data is empty: check data.train_file / data.hub_id")
        where = {split: self._where(split) for split in ("train", "validation", "test")}
        for split, ds in (("train", train), ("validation", val), ("test", test)):
            if ds is not None:  # numbered as in the file, before any split or selection
                self._check_examples(ds, split, where[split])
        if val is None:
            if len(train) < 2:
                raise DataError(
                    f"{where['train']} holds {len(train)} example: too few to hold out data.val_fraction="
                    f"{cfg.val_fraction} of it for validation; add examples, or pass data.val_file"
                )
            split = train.train_test_split(test_size=cfg.val_fraction, seed=cfg.seed)
            train, val = split["train"], split["test"]
        if cfg.num_train:
            train = train.select(range(min(cfg.num_train, len(train))))
        if cfg.num_val:
            val = val.select(range(min(cfg.num_val, len(val))))
        if test is not None and cfg.num_test:
            test = test.select(range(min(cfg.num_test, len(test))))
        if test is not None and len(test) == 0:
            raise DataError(f"{where['test']} is empty: add examples, or leave the test split unset")
        self._check_overlap(train, val)
        if test is not None:
            self._check_test_overlap(train, val, test)
        return train, val, test

    def _where(self, split: str) -> str:
        """How messages name a split's data: its file, or the hub dataset and split."""
        cfg = self.cfg
        if cfg.source == "local":
            own = {"validation": cfg.val_file, "test": cfg.test_file}.get(split)
            return str(own or cfg.train_file)
        if cfg.source == "hub":
            own = {"validation": cfg.val_split, "test": cfg.test_split}.get(split)
            return f"{cfg.hub_id} ({own or cfg.train_split})"
        return f"built-in task {cfg.builtin_task} ({split})"

    def _check_examples(self, ds: Any, split: str, where: str) -> None:
        """Columns first, then every example's values; an all-empty completion column is refused
        and a few empty ones are counted."""
        self._check_columns(ds, split)
        kinds = self.format.kinds(self.cfg)
        columns = {c: ds[c] for c in kinds}
        check_examples(columns, kinds, where)
        answers = self.format.answer_column(self.cfg)
        if answers is not None:
            empty = check_not_all_empty(columns[answers], answers, where)
            if empty:
                log.warning(
                    "%s: %d of %d completions are empty (only the end token is learnt there)", where, empty, len(ds)
                )

    def _example_keys(self, ds: Any) -> list[str]:
        columns = [ds[c] for c in self._required_columns()]
        return [json.dumps(values, sort_keys=True, default=str) for values in zip(*columns, strict=True)]

    def _check_overlap(self, train: Any, val: Any) -> None:
        """Validation examples that are also training examples measure memorisation: all of them is
        refused (a copy of the training data), some are counted in a warning."""
        seen = set(self._example_keys(train))
        shared = sum(key in seen for key in self._example_keys(val))
        if shared and shared == len(val):
            raise DataError(
                f"all {len(val)} validation examples also appear in the training data: validation would measure "
                "memorisation; pass a separate data.val_file (or data.val_split), or remove the duplicates"
            )
        if shared:
            log.warning(
                "%d of %d validation examples also appear in the training data: val metrics overstate how well "
                "the adapter generalises",
                shared,
                len(val),
            )
        self.val_in_train = shared

    def _check_test_overlap(self, train: Any, val: Any, test: Any, refuse: bool = True) -> None:
        """Test examples seen in training or validation: all of them is refused, some are counted."""
        seen = set(self._example_keys(train)) | set(self._example_keys(val))
        shared = sum(key in seen for key in self._example_keys(test))
        if refuse and shared and shared == len(test):
            raise DataError(
                f"all {len(test)} test examples also appear in the training or validation data: the test figures "
                "would measure memorisation; pass a separate data.test_file (or data.test_split)"
            )
        if shared:
            log.warning(
                "%d of %d test examples also appear in the training or validation data: test metrics overstate "
                "how well the adapter generalises",
                shared,
                len(test),
            )
        self.test_in_train = shared

    def _required_columns(self) -> list[str]:
        return self.format.columns(self.cfg)

    def _check_columns(self, ds: Any, split: str) -> None:
        missing = [c for c in self._required_columns() if c not in ds.column_names]
        if not missing:
            return
        cfg = self.cfg
        fits = [
            name
            for name, fmt in sorted(FORMATS.items())
            if name != cfg.format and all(c in ds.column_names for c in fmt.columns(cfg))
        ]
        fix = (
            f"its columns fit data.format={fits[0]}: set that"
            if fits
            else "rename them in the data or set data.<kind>_column (e.g. data.prompt_column=question)"
        )
        raise DataError(f"{split} data has columns {ds.column_names} but format {cfg.format} needs {missing}: {fix}")

    def _label_ids(self, train: Any, val: Any, test: Any = None) -> dict | None:
        if not self.format.labelled:
            return None
        col = self.cfg.label_column
        labels = list(self.cfg.labels) if self.cfg.labels else sorted({str(v) for v in train[col]})
        if len(labels) < 2:
            raise DataError(
                f"classification needs at least 2 labels, found {labels} in column {col!r}: check the data, or "
                "data.label_column"
            )
        for split, ds in (("train", train), ("validation", val), ("test", test)):
            if ds is None:
                continue
            unknown = sorted({str(v) for v in ds[col]} - set(labels))
            if unknown:
                raise DataError(
                    f"{split} labels {unknown[:5]} are not in the label set {labels}: "
                    "add them to data.labels or fix the data"
                )
        self.labels = labels
        return {name: i for i, name in enumerate(labels)}

    @cached_property
    def _tokenizer_key(self) -> str:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        text = backend.to_str() if backend is not None else repr(self.tokenizer.get_vocab())
        return hashlib.sha256((text + str(self.tokenizer.chat_template)).encode()).hexdigest()[:16]

    def _tokenize(self, ds: Any, split: str, label_ids: dict | None) -> Any:
        fn = partial(_encode, tokenizer=self.tokenizer, cfg=self.cfg, task=self.task, label_ids=label_ids)
        kwargs: dict = {"remove_columns": ds.column_names, "desc": f"tokenizing {split}"}
        if self.cache_dir is not None:
            # each split by its own rows: the test split is not a function of train and val (local files)
            settings = json.dumps(
                [
                    self.test_fingerprint if split == "test" else self.fingerprint,
                    split,
                    self._tokenizer_key,
                    FORMAT_CODE,
                    self.cfg.format,
                    self.task.cache_key,
                    self.cfg.max_length,
                    self._required_columns(),
                    label_ids,
                ],
                default=str,
            )
            key = hashlib.sha256(settings.encode()).hexdigest()[:20]
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            kwargs["cache_file_name"] = str(self.cache_dir / f"{split}-{key}.arrow")
        try:
            return ds.map(fn, **kwargs)
        except (ValueError, KeyError) as exc:
            raise DataError(f"cannot format the {split} data as {self.cfg.format}: {exc}") from exc

    def setup(self, stage: str | None = None) -> None:
        """Load and tokenize once; later calls (Lightning calls it again) do nothing."""
        if self.train_set is not None:
            return
        train, val, test = self._load_raw()
        # the data fingerprint is train + val's (what runs without a test split recorded); the test
        # split has its own
        self.fingerprint = fingerprint_rows(list(train) + list(val))
        self.test_fingerprint = fingerprint_rows(list(test)) if test is not None else None
        label_ids = self._label_ids(train, val, test)
        stats: dict = {}
        splits = {}
        for split, ds in (("train", train), ("val", val), ("test", test)):
            if ds is None:
                continue
            encoded = self._tokenize(ds, split, label_ids)
            n = len(encoded)
            truncated = sum(encoded["truncated"])
            keep = encoded["keep"]
            dropped = n - sum(keep)
            if truncated == n and n > 0 and split == "train":
                raise DataError(
                    f"all {n} training examples are longer than data.max_length={self.cfg.max_length} "
                    f"(the shortest is {min(encoded['full_length'])} tokens): raise data.max_length"
                )
            if dropped:
                encoded = encoded.select([i for i, k in enumerate(keep) if k])
            if len(encoded) == 0:
                raise DataError(
                    f"the {split} split is empty after formatting and truncation: check the data and data.max_length"
                )
            stats[split] = {
                "examples": len(encoded),
                "truncated": truncated,
                "dropped_no_completion": dropped,
                "tokens": int(sum(encoded["length"])),
                "max_length_seen": int(max(encoded["full_length"])),
            }
            if truncated:
                log.warning(
                    "%d of %d %s examples were truncated to %d tokens (%d dropped: no completion left)",
                    truncated,
                    n,
                    split,
                    self.cfg.max_length,
                    dropped,
                )
            splits[split] = encoded
        self.train_set, self.val_set = splits["train"], splits["val"]
        self.test_set = splits.get("test")
        self.stats = stats
        if self.cfg.packing:
            rows = self.packed_rows()
            tokens = stats["train"]["tokens"]
            stats["train"]["packed"] = {
                "rows": len(rows),
                "row_length": self.pack_length,
                "fill": tokens / (len(rows) * self.pack_length),
            }
            log.info(
                "packing: %d training examples in %d rows of %d tokens (%.0f%% filled)",
                len(self.train_set),
                len(rows),
                self.pack_length,
                100 * stats["train"]["packed"]["fill"],
            )
        self.generation_set = self._generation_examples(val)
        if test is not None:  # the test split is scored whole
            self.test_generation_set = self._generation_examples(test, len(test))

    def setup_test(self, labels: list[str] | None = None) -> None:
        """The test split alone, read, checked and tokenized as setup() does it (loralab-eval on
        other data: no training split is read). `labels`: the label set a classification head was
        trained on."""
        from datasets import load_dataset

        cfg = self.cfg
        if cfg.source == "builtin":
            _, _, test = self._load_raw()
        else:
            where = self._where("test")
            try:
                if cfg.source == "local":
                    check_local_file(cfg.test_file, cfg.label_column if self.format.labelled else None)
                    kind = LOCAL_SUFFIXES[Path(cfg.test_file).suffix.lower()]
                    test = load_dataset(kind, data_files={"test": cfg.test_file})["test"]
                else:
                    test = load_dataset(cfg.hub_id, cfg.hub_config, split=cfg.test_split)
            except DataError:
                raise
            except Exception as exc:  # datasets raises many types; the user needs the first line
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise DataError(f"cannot read data from {where}: {first}") from exc
            if len(test) == 0:
                raise DataError(f"{where} is empty: add examples")
            self._check_examples(test, "test", where)
            if cfg.num_test:
                test = test.select(range(min(cfg.num_test, len(test))))
        self.test_fingerprint = fingerprint_rows(list(test))
        label_ids = None
        if self.format.labelled:
            known = list(labels or [])
            unknown = sorted({str(v) for v in test[cfg.label_column]} - set(known))
            if unknown:
                raise DataError(f"test labels {unknown[:5]} are not in the label set the run trained on {known}")
            self.labels = known
            label_ids = {name: i for i, name in enumerate(known)}
        encoded = self._tokenize(test, "test", label_ids)
        keep = encoded["keep"]
        if not all(keep):
            encoded = encoded.select([i for i, k in enumerate(keep) if k])
        if len(encoded) == 0:
            raise DataError(
                "the test split is empty after formatting and truncation: check the data and data.max_length"
            )
        self.test_set = encoded
        self.test_generation_set = self._generation_examples(test, len(test))

    def _generation_examples(self, raw: Any, limit: int | None = None) -> list[dict]:
        """Prompts and answers for exact match: the first data.generation_examples (or `limit`)."""
        n = min(self.cfg.generation_examples if limit is None else limit, len(raw))
        if not self.task.generates or n == 0:
            return []
        rows = []
        for ex in raw.select(range(n)):
            item = self.format.item(ex, self.cfg)
            enc = self.task.encode(self.tokenizer, item, self.cfg.max_length, None)
            if enc["keep"]:
                rows.append({"prompt_ids": self.task.prompt_ids(enc), "reference": item.answer.strip()})
        return rows

    # ---- loaders -------------------------------------------------------------------------
    def collator(self) -> PadCollator:
        """The padding collator the loaders use."""
        return PadCollator(self.tokenizer.pad_token_id, self.task)

    def train_dataloader(self) -> DataLoader:
        """Shuffled by data.seed (the order is part of the experiment); on resume it continues
        where the checkpointed run was in its epoch."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        lengths = list(self.train_set["length"]) if self.cfg.group_by_length else None
        dataset, collate = self.train_set.with_format(columns=["input_ids", "labels"]), self.collator()
        if self.cfg.packing:  # the sampler draws rows
            dataset = PackedRows(dataset, self.packed_rows())
            collate = PackCollator(self.tokenizer.pad_token_id, self.pack_length)
        sampler = ResumableRandomSampler(len(dataset), self.cfg.seed, world, rank, lengths, self.cfg.train_batch_size)
        if trainer is not None:
            sampler.set_epoch(trainer.current_epoch)
            # batches trained this epoch (`processed`: a checkpoint saved at a batch's end, before
            # Lightning counts it completed, has trained it too)
            done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            sampler.skip = min(done * self.cfg.train_batch_size, len(sampler))
        return DataLoader(
            dataset,
            batch_size=self.cfg.train_batch_size,
            sampler=sampler,
            # a generator of its own: creating the iterator must not draw from the global RNG
            generator=torch.Generator().manual_seed(self.cfg.seed),
            collate_fn=collate,
            num_workers=self.cfg.num_workers,
        )

    @property
    def pack_length(self) -> int:
        return self.cfg.pack_length or self.cfg.max_length

    def packed_rows(self) -> list[list[int]]:
        """The training examples' rows (data.packing), packed once: the same every epoch, drawn
        in another order."""
        if self._rows is None:
            self._rows = pack_rows(list(self.train_set["length"]), self.pack_length)
        return self._rows

    def val_dataloader(self) -> DataLoader:
        """In order. With several processes each rank takes every world_size-th example, none
        twice (Lightning's default sampler would repeat some to even out the ranks, and the
        validation loss would count them twice)."""
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        """The held-out test split, like the validation split."""
        return self._eval_loader(self.test_set)

    def _eval_loader(self, dataset: Any) -> DataLoader:
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

        from loralab.distributed import sharded_strategy

        trainer = self.trainer
        sampler = None
        # sharded strategies run collectives in every forward: every rank needs as many batches,
        # so Lightning's padded sampler stays there (a few examples count twice in val/loss)
        if trainer is not None and trainer.world_size > 1 and not sharded_strategy(trainer):
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        return DataLoader(
            dataset.with_format(columns=["input_ids", "labels"]),
            batch_size=self.cfg.eval_batch_size,
            sampler=sampler,
            shuffle=False,
            collate_fn=self.collator(),
            num_workers=self.cfg.num_workers,
        )

    def describe(self) -> dict:
        """What run metadata records about the data."""
        return {
            "task": self.task.name,
            "fingerprint": self.fingerprint,
            "stats": self.stats,
            "labels": self.labels,
            "val_examples_in_train": self.val_in_train,
            **(
                {"test_fingerprint": self.test_fingerprint, "test_examples_in_train_or_val": self.test_in_train}
                if self.test_set is not None
                else {}
            ),
        }
