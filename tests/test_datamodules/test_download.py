"""`dl4 data download` and `dl4 data list` against a file server on 127.0.0.1 serving copies of the real files (never
the internet): fetched, verified, unpacked, idempotent; a wrong checksum rejected and removed; an interrupted
download resumed (or restarted where the server ignores ranges)."""

import io
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from datamodules import BabiDataModule, MNISTDataModule
from datamodules.download import MNIST_GZ, check, expected_files
from conftest import dl4_here


class FileServer:
    """Serves ``files`` ({url path: bytes}); honours Range requests if ``ranges``; ``cut[path] = n`` sends the
    first n bytes of the next response to that path and drops the connection (an interrupted download)."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.ranges, self.cut, self.requests, self.delay = files, True, {}, [], 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                time.sleep(server.delay)
                body = server.files.get(self.path)
                if body is None:
                    return self.send_error(404)
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if (
                    self.headers.get("Range") and server.ranges) else 0
                if start:
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                n = server.cut.pop(self.path, None)
                self.wfile.write(body[start:start + n] if n else body[start:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(mnist_root):
    files = {f"/mnist/{gz}": (mnist_root / "MNIST" / "raw" / gz).read_bytes() for gz in MNIST_GZ}
    srv = FileServer(files)
    yield srv
    srv.httpd.shutdown()


def data(*args, root, server, monkeypatch, capsys):
    return dl4_here("data", *args, "--root", root, "--mirror", server.url, cwd=root, monkeypatch=monkeypatch,
                    capture=capsys)


def no_part_files(root):
    return not list(root.rglob("*.part"))


def test_mnist_is_fetched_verified_and_unpacked_and_a_second_call_only_verifies(server, tmp_path, monkeypatch,
                                                                                capsys):
    out = data("download", "mnist", root=tmp_path, server=server, monkeypatch=monkeypatch, capsys=capsys)
    assert out.returncode == 0, out.stderr
    verified, missing, corrupt = check(tmp_path, "mnist")
    assert len(verified) == 8 and not missing and not corrupt and no_part_files(tmp_path)
    assert sorted(p for p, _ in server.requests) == sorted(f"/mnist/{gz}" for gz in MNIST_GZ)
    dm = MNISTDataModule(str(tmp_path), download=False)
    dm.setup()
    assert len(dm.train_set) == 55000 and len(dm.test_set) == 10000

    again = data("download", "mnist", root=tmp_path, server=server, monkeypatch=monkeypatch, capsys=capsys)
    assert again.returncode == 0 and "already there and verified" in again.stdout
    assert len(server.requests) == 4  # nothing fetched again
    listing = data("list", root=tmp_path, server=server, monkeypatch=monkeypatch, capsys=capsys).stdout
    assert f"mnist              verified (8 files, published SHA-256s): {tmp_path / 'MNIST' / 'raw'}" in listing
    assert "babi               missing" in listing


def test_a_file_with_the_wrong_checksum_is_rejected_and_removed(server, tmp_path, monkeypatch, capsys):
    good = server.files["/mnist/train-labels-idx1-ubyte.gz"]
    server.files["/mnist/train-labels-idx1-ubyte.gz"] = good[:-1] + bytes([good[-1] ^ 1])  # one bit altered
    out = data("download", "mnist", root=tmp_path, server=server, monkeypatch=monkeypatch, capsys=capsys)
    assert out.returncode == 1
    line = out.stderr.strip()
    assert "\n" not in line and "train-labels-idx1-ubyte.gz" in line and "not the published file" in line
    assert "deleted" in line
    raw = tmp_path / "MNIST" / "raw"
    assert not (raw / "train-labels-idx1-ubyte.gz").exists() and not (raw / "train-labels-idx1-ubyte").exists()
    assert no_part_files(tmp_path)  # nothing half-written
    assert not check(tmp_path, "mnist")[2]  # what is there is verified

    server.files["/mnist/train-labels-idx1-ubyte.gz"] = good
    server.requests.clear()
    assert data("download", "mnist", root=tmp_path, server=server, monkeypatch=monkeypatch,
                capsys=capsys).returncode == 0
    assert "/mnist/train-labels-idx1-ubyte.gz" in [p for p, _ in server.requests]
    assert "/mnist/train-images-idx3-ubyte.gz" not in [p for p, _ in server.requests]  # verified before: kept
    assert len(check(tmp_path, "mnist")[0]) == 8


def test_a_corrupt_file_the_user_has_is_named_and_never_replaced(server, tmp_path, monkeypatch, capsys):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"not mnist")
    out = data("download", "mnist", root=tmp_path, server=server, monkeypatch=monkeypatch, capsys=capsys)
    assert out.returncode == 1 and "t10k-labels-idx1-ubyte: not the published file" in out.stderr
    assert (raw / "t10k-labels-idx1-ubyte").read_bytes() == b"not mnist" and not server.requests
    assert "CORRUPT" in data("list", root=tmp_path, server=server, monkeypatch=monkeypatch, capsys=capsys).stdout


@pytest.mark.parametrize("ranges", [True, False], ids=["resumed", "restarted"])
def test_an_interrupted_download_is_resumed_or_restarted(server, tmp_path, monkeypatch, capsys, ranges):
    server.ranges = ranges
    path = "/mnist/train-images-idx3-ubyte.gz"
    server.cut[path] = 4_000_000
    out = data("download", "mnist", root=tmp_path, server=server, monkeypatch=monkeypatch, capsys=capsys)
    assert out.returncode == 1 and "resumes them" in out.stderr, out.stderr
    raw = tmp_path / "MNIST" / "raw"
    assert (raw / "train-images-idx3-ubyte.gz.part").stat().st_size == 4_000_000
    assert not (raw / "train-images-idx3-ubyte.gz").exists() and not (raw / "train-images-idx3-ubyte").exists()

    server.requests.clear()
    out = data("download", "mnist", root=tmp_path, server=server, monkeypatch=monkeypatch, capsys=capsys)
    assert out.returncode == 0, out.stderr
    assert server.requests[0] == (path, "bytes=4000000-")
    assert ("resuming" if ranges else "fetching") in out.stdout
    assert len(check(tmp_path, "mnist")[0]) == 8 and no_part_files(tmp_path)


def test_an_unreachable_source_says_what_was_tried_in_one_line(tmp_path, monkeypatch, capsys, mnist_root):
    dead = FileServer({})
    dead.httpd.shutdown()
    dead.httpd.server_close()  # nothing listens on its port now
    out = data("download", "mnist", root=tmp_path, server=dead, monkeypatch=monkeypatch, capsys=capsys)
    line = out.stderr.strip()
    assert out.returncode == 1 and "\n" not in line and "could not fetch" in line and dead.url in line
    assert not (tmp_path / "MNIST" / "raw").exists() or not list((tmp_path / "MNIST" / "raw").iterdir())


def babi_archive(babi_root, extra: dict[str, bytes] | None = None) -> bytes:
    """tasks_1-20_v1-2.tar.gz rebuilt from the real files (the copy here lacks en-10k's task 3 training file)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for name in expected_files("babi"):
            path = babi_root / name
            if path.is_file():
                tar.add(path, arcname=name.removeprefix("babi/"))
        for name, body in (extra or {}).items():
            info = tarfile.TarInfo(name.removeprefix("babi/"))
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def test_babi_is_unpacked_with_every_file_verified_and_what_the_archive_lacks_is_named(babi_root, tmp_path, monkeypatch,
                                                                                     capsys):
    lacking = "babi/tasks_1-20_v1-2/en-10k/qa3_three-supporting-facts_train.txt"
    assert not (babi_root / lacking).exists(), "this test expects the copy without that file; make it a fetch test"
    impostor = (babi_root / "babi/tasks_1-20_v1-2/en/qa3_three-supporting-facts_train.txt").read_bytes()
    server = FileServer({"/babi/tasks_1-20_v1-2.tar.gz": babi_archive(babi_root, {lacking: impostor})})
    out = data("download", "babi", root=tmp_path, server=server, monkeypatch=monkeypatch, capsys=capsys)
    assert out.returncode == 1 and "qa3_three-supporting-facts_train.txt: unpacked from tasks_1-20_v1-2.tar.gz, not " \
                                   "the published file" in out.stderr, out.stderr
    assert not (tmp_path / lacking).exists() and no_part_files(tmp_path)

    (tmp_path / "babi" / "tasks_1-20_v1-2.tar.gz").unlink()  # as the message says
    server.files["/babi/tasks_1-20_v1-2.tar.gz"] = babi_archive(babi_root)
    out = data("download", "babi", root=tmp_path, server=server, monkeypatch=monkeypatch, capsys=capsys)
    assert out.returncode == 1 and f"lacks 1 of bAbI's files ({lacking})" in out.stderr
    verified, missing, corrupt = check(tmp_path, "babi")
    assert len(verified) == 79 and missing == [lacking] and not corrupt and no_part_files(tmp_path)
    assert "79 of 80 files verified" in data("list", root=tmp_path, server=server, monkeypatch=monkeypatch,
                                             capsys=capsys).stdout
    dm = BabiDataModule(str(tmp_path), tasks=[1, 20])
    dm.prepare_data()
    dm.setup()
    assert len(dm.test_set) == 2000
    server.httpd.shutdown()


def test_the_ntm_tasks_sets_are_written_from_the_seed_equal_to_the_datamodules(tmp_path, monkeypatch, capsys):
    from datamodules import AlgorithmicTasksDataModule

    out = dl4_here("data", "download", "ntm-tasks", "--seed", "3", "--root", tmp_path, cwd=tmp_path,
                   monkeypatch=monkeypatch, capture=capsys)
    assert out.returncode == 0 and "written and verified" in out.stdout
    saved = torch.load(tmp_path / "algorithmic" / "copy_seed3.pt", weights_only=True)
    dm = AlgorithmicTasksDataModule(**saved["settings"])
    dm.setup()
    assert saved["settings"]["seed"] == 3 and saved["settings"]["test_lengths"] == [10, 20, 30, 50, 80, 120]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(saved["test"], dm.test_batches))
    again = dl4_here("data", "download", "ntm-tasks", "--seed", "3", "--root", tmp_path, cwd=tmp_path,
                     monkeypatch=monkeypatch, capture=capsys)
    assert "already there and verified" in again.stdout
    listing = dl4_here("data", "list", "--seed", "3", "--root", tmp_path, cwd=tmp_path, monkeypatch=monkeypatch,
                       capture=capsys).stdout
    assert listing.count("generated, verified (regenerated from the seed)") == 3
    saved["test"][0][0][0, 0, 0] = 1 - saved["test"][0][0][0, 0, 0]  # one bit that the seed did not give
    torch.save(saved, tmp_path / "algorithmic" / "copy_seed3.pt")
    altered = dl4_here("data", "download", "ntm-tasks", "--seed", "3", "--root", tmp_path, cwd=tmp_path,
                       monkeypatch=monkeypatch, capture=capsys)
    assert altered.returncode == 1 and "copy_seed3.pt: not the sets configs/ntm_copy.yaml gives" in altered.stderr


def test_the_suite_fetches_a_missing_dataset_into_its_cache_once_skips_without_network_and_fails_under_ci(
        server, tmp_path, monkeypatch):
    """The tests' data policy (``tests/conftest.py``'s ``require_dataset``) on a machine without DL4_DATA_DIR, as a
    new user runs the suite: the data root is the cache folder (DL4_CACHE_DIR), the network the local server."""
    import conftest

    class Reporter:  # pytest's terminal reporter, as far as pytest_terminal_summary uses it
        lines = []
        section = write_line = lines.append

    monkeypatch.delenv("DL4_DATA_DIR")
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("DL4_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(conftest, "MISSING", {})
    needed = "MNIST/raw/train-images-idx3-ubyte"
    for mirror, failed in (("http://127.0.0.1:9", "Connection refused"), (server.url, None)):
        monkeypatch.setenv("DL4_DATA_MIRROR", mirror)
        monkeypatch.setattr(conftest, "FETCH_FAILED", {})
        monkeypatch.setenv("CI", "true")
        with pytest.raises(pytest.fail.Exception, match="CI must have its datasets"):
            conftest.require_dataset(needed)
        assert not server.requests  # CI never downloads
        monkeypatch.delenv("CI")
        if failed:  # no network: the tests skip, and the summary says once what is missing and how to get it
            for _ in range(3):
                with pytest.raises(pytest.skip.Exception):
                    conftest.require_dataset(needed)
            assert list(conftest.FETCH_FAILED) == ["mnist"] and failed in conftest.FETCH_FAILED["mnist"]
            conftest.pytest_terminal_summary(Reporter)
            assert len(Reporter.lines) == 2 and "dl4 data download mnist" in Reporter.lines[1]
        else:
            root = conftest.require_dataset(needed)
            assert root == tmp_path / "cache" / "data" and len(check(root, "mnist")[0]) == 8
            assert conftest.require_dataset("MNIST/raw/t10k-labels-idx1-ubyte") == root
            assert len(server.requests) == 4  # fetched once


def test_the_one_babi_file_listed_by_its_git_blob_id_is_checked_by_it(babi_root, tmp_path):
    """en-10k's task 3 training file has no SHA-256 on record, only its git blob id: an impostor (here the 1k file
    of the same task) is refused before use, and the id is git's (``git hash-object``) for a file that has one."""
    from datamodules.integrity import CorruptDataError, git_blob, verify_published

    impostor = babi_root / "babi/tasks_1-20_v1-2/en/qa3_three-supporting-facts_train.txt"
    with pytest.raises(CorruptDataError, match=r"not the published file \(git-blob:"):
        verify_published(impostor, "babi/tasks_1-20_v1-2/en-10k/qa3_three-supporting-facts_train.txt", "Restore it.")
    (tmp_path / "hello").write_bytes(b"hello\n")
    assert git_blob(tmp_path / "hello") == "git-blob:ce013625030ba8dba906f756967f9e9ca394464a"


def test_two_downloads_into_one_root_at_once_wait_for_each_other_and_both_end_verified(server, tmp_path):
    """Two `dl4 data download mnist` processes started together into one root (two cluster jobs): the second waits
    for the first's lock, saying so, then finds every file there and verified; both exit 0, no traceback, no
    .part left."""
    import subprocess

    from conftest import dl4

    server.delay = 0.3  # each response slowed, so that the two overlap
    root = tmp_path / "data"
    runs = [subprocess.Popen(["dl4", "data", "download", "mnist", "--root", str(root), "--mirror", server.url],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outs
    assert not any("Traceback" in err for _, err in outs)
    assert sum("waiting for the mnist download of process" in out for out, _ in outs) == 1, outs
    verified, missing, corrupt = check(root, "mnist")
    assert not missing and not corrupt and no_part_files(root)
    assert dl4("data", "list", "--root", root, cwd=tmp_path).returncode == 0
