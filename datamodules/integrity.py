"""Is a dataset file the one that was published? Checked before it is used, so that a corrupt, truncated or
altered file fails with one line naming it, never trains in silence.

- Checksums: ``sha256/<dataset>.txt`` holds the SHA-256 of every MNIST and bAbI file as published (MNIST's four
  IDX files and their ``.gz``, whose MD5s torchvision publishes; the 79 files of bAbI's ``tasks_1-20_v1-2``
  archive). A file whose path is listed must match. Each file is hashed once per process (about 30 ms for MNIST's
  47 MB training images). One bAbI file (en-10k's task 3 training set) is listed by its git blob id
  (``git-blob:<sha1>``), the only fingerprint of it on record: the copy checked here lacks it, and three public
  repositories' trees record the same id for it.
- Structure, for every file, listed or not: MNIST's IDX headers (magic number, count, 28 x 28, the file's size)
  and labels 0-9; bAbI's line grammar and UTF-8 text (``datamodules/babi.py``'s parser names the file and line).
"""

import hashlib
from pathlib import Path

import torch


class CorruptDataError(ValueError):
    """A dataset file that is not what it should be; the message names it (and the line, for text) and how to
    restore it. ``dl4`` prints it as one line and exits with status 1, as for a missing dataset."""


def _table() -> dict[str, str]:
    sums = {}
    for table in sorted((Path(__file__).parent / "sha256").glob("*.txt")):
        for line in table.read_text().splitlines():
            digest, name = line.split(maxsplit=1)
            sums[name.strip()] = digest
    return sums


PUBLISHED_SHA256 = _table()
_verified: dict[tuple, str] = {}


def sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        with open(path, "rb") as f:
            _verified[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _verified[key]


def git_blob(path: Path) -> str:
    """Git's id of a file's content: the SHA-1 of ``blob <size>\\0`` and the bytes (``git hash-object``)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        digest.update(f.read())
    return "git-blob:" + digest.hexdigest()


def fingerprint(path: Path, expected: str) -> str:
    """``path``'s digest in the form of the listed one: ``git-blob:<sha1>`` or a SHA-256."""
    return git_blob(path) if expected.startswith("git-blob:") else sha256(path)


def is_published(path: Path, name: str) -> bool:
    return fingerprint(path, PUBLISHED_SHA256[name]) == PUBLISHED_SHA256[name]


def verify_published(path: Path, name: str, restore: str) -> None:
    """``path`` must have the published digest of ``name`` (its path under the data root), if one is listed."""
    expected = PUBLISHED_SHA256.get(name)
    if expected is None:
        return
    actual = fingerprint(path, expected)
    if actual != expected:
        kind, n = ("", 25) if expected.startswith("git-blob:") else ("sha256 ", 16)
        raise CorruptDataError(f"{path}: not the published file ({kind}{actual[:n]}..., published {expected[:n]}...): "
                               f"it is corrupt, truncated or altered. {restore}")


IDX_MAGIC = {3: 2051, 1: 2049}  # images (n, rows, cols), labels (n,)


def verify_idx(path: Path, dims: int, count: int, restore: str) -> None:
    """An MNIST IDX file's header (big-endian magic, count and, for images, 28 x 28) against its size."""
    with open(path, "rb") as f:
        header = f.read(4 * (dims + 1))
    values = [int.from_bytes(header[i:i + 4], "big") for i in range(0, 4 * (dims + 1), 4)]
    if len(header) < 4 * (dims + 1) or values[0] != IDX_MAGIC[dims]:
        raise CorruptDataError(f"{path}: not an IDX file of {'images' if dims == 3 else 'labels'} (magic number "
                               f"{values[0] if values else None}, expected {IDX_MAGIC[dims]}). {restore}")
    shape = values[1:]
    expected_shape = [count, 28, 28] if dims == 3 else [count]
    size = 4 * (dims + 1) + count * (784 if dims == 3 else 1)
    if shape != expected_shape or path.stat().st_size != size:
        raise CorruptDataError(f"{path}: header says shape {shape}, size {path.stat().st_size} bytes; expected "
                               f"{expected_shape} and {size} bytes (truncated or altered). {restore}")


def verify_labels(path: Path, labels: torch.Tensor, restore: str) -> None:
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise CorruptDataError(f"{path}: labels must be 0-9, found {int(labels.min())}..{int(labels.max())}. "
                               f"{restore}")
