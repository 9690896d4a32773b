"""Read an offline W&B run file (`run-*.wandb`) back, to check what loralab logged.

The file is W&B's record log: a 7-byte header (`:W&B`, magic 0xBEE1, version 0), then 32 KiB
blocks of chunks, each `crc32 (4) | length (2, little-endian) | type (1: full, 2: first,
3: middle, 4: last)`, carrying serialized `wandb.proto.wandb_internal_pb2.Record` messages."""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def records(path: str | Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1, f"{path} is not a W&B run file"
    out, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # padding at the end of a block
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 2):
            pending = chunk
        elif kind in (3, 4):
            pending += chunk
        else:
            break
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def run_facts(run_dir: str | Path) -> dict:
    """group, job_type, tags, config (flat keys) and the final summary of the one offline run."""
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline W&B run under {run_dir}, found {len(files)}"
    facts: dict = {"config": {}, "summary": {}}
    for record in records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            facts.update(group=record.run.run_group, job_type=record.run.job_type, tags=list(record.run.tags))
            facts["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            facts["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "summary":
            facts["summary"].update({i.key: json.loads(i.value_json) for i in record.summary.update})
    return facts


def history(run: str | Path) -> dict:
    """The last logged value of each history key of one offline run directory (a media item,
    such as a Table or an image, as its dict: `_type`, `path` under files/, ...)."""
    (path,) = Path(run).glob("run-*.wandb")
    values: dict = {}
    for record in records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        for item in record.history.item:
            keys = list(item.nested_key) or [item.key]
            value = json.loads(item.value_json)
            if len(keys) == 1:
                values[keys[0]] = value
            else:
                values.setdefault(keys[0], {})[keys[1]] = value
    return values
