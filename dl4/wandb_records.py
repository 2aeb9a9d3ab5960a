"""Read back what an offline W&B run logged, from its ``run-<id>.wandb`` transaction log.

Written here because wandb 0.31 has no Python reader of its own any more (its ``wandb sync`` reads the log in its
Go core); ``dl4 sweep`` reads its trials' metrics this way, and the tests what a run logged.

The file is W&B's LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of chunks, each
with a 7-byte header (crc32c, length, type: full/first/middle/last) around a serialised protobuf ``Record``.
"""

import json
import struct
from pathlib import Path

from dl4.internals import wandb_record

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # the rest of a block too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_record()
            record.ParseFromString(pending)
            yield record


def history(run_dir: Path) -> list[dict]:
    """The rows the run logged with ``wandb.log``, as {key: value}."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def _merged(run_dir: Path, kind: str) -> dict:
    """{key: value} over all the run's ``summary`` or ``config`` update records, later ones winning."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    merged = {}
    for record in records(path):
        if record.WhichOneof("record_type") == kind:
            for item in getattr(record, kind).update:
                merged[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return merged


def summary(run_dir: Path) -> dict:
    """The run's summary: by default each key's last logged value, which is what a W&B sweep reads as a run's
    metric."""
    return _merged(run_dir, "summary")


def config(run_dir: Path) -> dict:
    """The run's config, merged over all its config updates."""
    return _merged(run_dir, "config")


def artifacts(run_dir: Path) -> list:
    """The artifacts the run logged (a W&B table with media goes as one, type ``run_table``), as protobufs: name,
    type, and ``manifest.contents`` with each file's path and the staged ``local_path`` that ``wandb sync``
    uploads."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    return [r.artifact for r in records(path) if r.WhichOneof("record_type") == "artifact"]
