"""Fetching MNIST and bAbI from their official sources into the data root, verified against the published checksums
the datamodules check before use (``datamodules/sha256/``), in torchvision's or the dataset's own layout.

Every file is written as ``<name>.part`` and renamed only once its checksum is right, so a file under its final name
is always the published one. An interrupted download keeps its ``.part`` and the next call resumes it with an HTTP
range request (or starts it again where the server ignores ranges); a file whose checksum is wrong is deleted. A
file already in place and verified is not fetched again, so a second call only verifies.

Written by hand because no well-kept library does this: torchvision's ``download_url`` neither resumes nor
writes atomically, and it checks MD5s rather than the SHA-256s the datamodules verify.

A mirror (``--mirror URL`` or ``$DL4_DATA_MIRROR``, e.g. a cluster's file server) replaces the official sources;
it holds the files as ``URL/mnist/train-images-idx3-ubyte.gz`` and ``URL/babi/tasks_1-20_v1-2.tar.gz``.
"""

import contextlib
import fcntl
import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from dl4.data_root import DatasetNotFoundError
from datamodules.integrity import PUBLISHED_SHA256, CorruptDataError, fingerprint, is_published

MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")  # torchvision's
MNIST_GZ = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz")
BABI_URL = "http://www.thespermwhale.com/jaseweston/babi/tasks_1-20_v1-2.tar.gz"  # the authors' page
BABI_ARCHIVE = BABI_URL.rsplit("/", 1)[1]  # tasks_1-20_v1-2.tar.gz, from the authors' page
BABI_SOURCES = (BABI_URL, f"https://s3.amazonaws.com/text-datasets/babi_{BABI_ARCHIVE}")  # and Keras's copy of it
CHUNK = 1 << 20


class DownloadError(DatasetNotFoundError):
    """No source gave a file (network down, server error, or every copy had the wrong checksum); the message lists
    what was tried. ``dl4`` prints it as one line and exits with status 1."""


def expected_files(dataset: str) -> list[str]:
    """The files a dataset consists of, as paths under the data root (those the checksum tables list)."""
    prefix = {"mnist": "MNIST/raw/", "babi": "babi/tasks_1-20_v1-2/"}[dataset]
    return sorted(name for name in PUBLISHED_SHA256 if name.startswith(prefix))


def check(root: Path, dataset: str) -> tuple[list[str], list[str], list[str]]:
    """(verified, missing, corrupt) files of a dataset in ``root``."""
    verified, missing, corrupt = [], [], []
    for name in expected_files(dataset):
        path = root / name
        if not path.is_file():
            missing.append(name)
        else:
            (verified if is_published(path, name) else corrupt).append(name)
    return verified, missing, corrupt


def fetch(urls: list[str], dest: Path, expected: str | None, log=print) -> Path:
    """``dest`` from the first of ``urls`` that gives a file with the SHA-256 ``expected``, via ``dest.part``
    (resumed if an earlier call was interrupted). ``expected=None``: no checksum of the file itself is published
    (the bAbI archive), its members are verified instead."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    tried = []
    for url in urls:
        try:
            _get(url, part, log)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
            # the bytes received are kept in .part: the next call, or the next source, continues them
            tried.append(f"{url}: {getattr(err, 'reason', None) or err}")
            continue
        if expected is not None:
            with open(part, "rb") as f:
                actual = hashlib.file_digest(f, "sha256").hexdigest()
            if actual != expected:
                part.unlink()
                tried.append(f"{url}: not the published file (sha256 {actual[:16]}..., published {expected[:16]}...); "
                             f"deleted")
                continue
        os.replace(part, dest)
        return dest
    kept = f"; the {part.stat().st_size} bytes received are kept in {part} and the next call resumes them" \
        if part.exists() else ""
    raise DownloadError(f"could not fetch {dest.name}: " + " | ".join(tried) + kept +
                        ". Run the same command again, give a mirror (--mirror URL), or put the file there by hand")


def _get(url: str, part: Path, log) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-", "User-Agent": "dl4"} if have else
                                     {"User-Agent": "dl4"})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the range starts at the end: the part is whole already
            return
        raise
    with response:
        resumed = have and response.status == 206
        total = response.headers.get("Content-Length")
        log(f"  {'resuming' if resumed else 'fetching'} {url}"
            + (f" ({(int(total) + (have if resumed else 0)) / 1e6:.1f} MB)" if total else "")
            + (f" from byte {have}" if resumed else ""))
        with open(part, "ab" if resumed else "wb") as f:  # a server that ignores the range sends it all again
            start = f.tell()
            shutil.copyfileobj(response, f, CHUNK)
            received = f.tell() - start
    if total is not None and received != int(total):  # http.client ends a body cut short without an error
        raise http.client.IncompleteRead(b"", int(total) - received)


def _install(source: Path, dest: Path, name: str, unpack) -> None:
    """``unpack(source, file)`` writes ``dest.part``, which becomes ``dest`` if its digest is the published one."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(part, "wb") as f:
        unpack(source, f)
    actual = fingerprint(part, PUBLISHED_SHA256[name])
    if actual != PUBLISHED_SHA256[name]:
        part.unlink()
        raise CorruptDataError(f"{dest}: unpacked from {source.name}, not the published file ({actual[:24]}...); "
                               f"deleted. Delete {source} and run the same command again")
    os.replace(part, dest)


def _gunzip(source: Path, f) -> None:
    with gzip.open(source) as packed:
        shutil.copyfileobj(packed, f, CHUNK)


def _refuse_corrupt(root: Path, corrupt: list[str]) -> None:
    if corrupt:  # the user's file is never replaced: it may be theirs on purpose
        raise CorruptDataError(f"{root / corrupt[0]}: not the published file ({len(corrupt)} such file(s): "
                               f"{', '.join(corrupt[:3])}{', ...' if len(corrupt) > 3 else ''}). Move or delete it, "
                               f"then run the same command again")


@contextlib.contextmanager
def one_at_a_time(root: Path, dataset: str, log=print):
    """Holds ``root/.<dataset>.download.lock`` (an exclusive ``flock``, released when the process ends, however it
    ends) while a dataset is fetched: two downloads into one root at once (two cluster jobs starting together)
    would write the same ``.part`` files. The second waits, saying for whom, and then finds the files there and
    verified. The lock file keeps the holder's pid."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f".{dataset}.download.lock"
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            log(f"  waiting for the {dataset} download of process {lock.read().strip() or '?'} into {root} ({path})")
            fcntl.flock(lock, fcntl.LOCK_EX)
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield


def download_mnist(root: Path, mirror: str | None = None, log=print) -> list[str]:
    """MNIST's four ``.gz`` files into ``root/MNIST/raw`` and their unpacked IDX files next to them (torchvision's
    layout), one download into a root at a time. Returns the files written (none when all were there and
    verified)."""
    with one_at_a_time(root, "mnist", log):
        return _download_mnist(root, mirror, log)


def _download_mnist(root: Path, mirror: str | None, log) -> list[str]:
    verified, missing, corrupt = check(root, "mnist")
    _refuse_corrupt(root, corrupt)
    mirror = mirror or os.environ.get("DL4_DATA_MIRROR")
    written = []
    for gz in MNIST_GZ:
        raw, packed = f"MNIST/raw/{gz[:-3]}", f"MNIST/raw/{gz}"
        if raw in verified and packed in verified:
            continue
        if packed in missing:
            urls = [f"{mirror.rstrip('/')}/mnist/{gz}"] if mirror else [m + gz for m in MNIST_MIRRORS]
            fetch(urls, root / packed, PUBLISHED_SHA256[packed], log)
            written.append(packed)
        if raw in missing:
            _install(root / packed, root / raw, raw, _gunzip)
            written.append(raw)
    return written


def download_babi(root: Path, mirror: str | None = None, log=print) -> list[str]:
    """The bAbI v1.2 archive's ``en`` and ``en-10k`` tasks into ``root/babi/tasks_1-20_v1-2`` (the archive's own
    layout), each file verified, one download into a root at a time; the archive is deleted once unpacked (its
    ``hn``, ``shuffled`` and ``en-valid`` folders, which dl4 does not read, are left out). Returns the files
    written."""
    with one_at_a_time(root, "babi", log):
        return _download_babi(root, mirror, log)


def _download_babi(root: Path, mirror: str | None, log) -> list[str]:
    verified, missing, corrupt = check(root, "babi")
    _refuse_corrupt(root, corrupt)
    if not missing:
        return []
    mirror = mirror or os.environ.get("DL4_DATA_MIRROR")
    folder = root / "babi"
    archive = folder / BABI_ARCHIVE
    if not archive.is_file():
        urls = [f"{mirror.rstrip('/')}/babi/{BABI_ARCHIVE}"] if mirror else list(BABI_SOURCES)
        fetch(urls, archive, None, log)
    written = []
    try:
        with tarfile.open(archive) as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            for name in missing:
                member = members.get(name[len("babi/"):])
                if member is not None:
                    _install(archive, root / name, name, lambda src, f: shutil.copyfileobj(tar.extractfile(member), f))
                    written.append(name)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile) as err:
        archive.unlink()
        raise CorruptDataError(f"{archive}: not a readable tar.gz ({err}); deleted. Run the same command again") from None
    lacking = [name for name in missing if name not in written]
    if lacking:  # kept, with the files it gave: what it lacks is said, not fetched again and again
        raise DatasetNotFoundError(f"{archive} lacks {len(lacking)} of bAbI's files ({', '.join(lacking[:3])}"
                                   f"{', ...' if len(lacking) > 3 else ''}); the {len(verified) + len(written)} others "
                                   f"are in place and verified. Get the complete archive ({BABI_URL}), put "
                                   f"it there, and run the same command again")
    archive.unlink()
    return written


DOWNLOADS = {"mnist": download_mnist, "babi": download_babi}
