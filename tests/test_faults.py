"""Faults, through dl4's entry point: each case asserts the exit status, the one-line message and that nothing the
user had was changed. The README's table "When things go wrong" lists them. Signals, runs side by side and W&B go
through the real ``dl4`` console script; the rest run ``dl4.console.main`` in this process (``here``: the same exit
status and output, without a new interpreter's 10 s of imports)."""

import functools
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import CONFIGS, dl4, dl4_here
from dl4.wandb_records import history, records

FAST = ["--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=2"]


def _env(data_root, threads=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(DL4_DATA_DIR=str(data_root), PYTHONWARNINGS="ignore")
    if threads:  # two runs side by side on two cores, each on one thread (the same for both: the same numbers)
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def _popen(args, cwd, data_root, threads=None):
    return subprocess.Popen(["dl4", *map(str, args)], cwd=cwd, env=_env(data_root, threads), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, process, timeout=300):
    end = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended before writing {path}: {process.communicate()[1][-2000:]}"
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.01)


@pytest.fixture
def here(monkeypatch, capfd):
    """``here(*args, cwd=..., data_root=...)``: `dl4` by its entry point in this process (``conftest.dl4_here``)."""
    return functools.partial(dl4_here, monkeypatch=monkeypatch, capture=capfd)


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(out: subprocess.CompletedProcess, status: int, *words: str) -> str:
    assert out.returncode == status, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    (line,) = [line for line in out.stderr.splitlines() if line.startswith("dl4:")]
    for word in words:
        assert word in line, (word, line)
    return line


def _weights(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


# ---- 1. divergence ----------------------------------------------------------------------------------------------


def test_a_diverging_run_exits_3_naming_the_step_and_writes_no_checkpoint(here, tmp_path, mnist_root):
    out = here("fit", "--config", CONFIGS / "ae_mnist.yaml", "--model.init_args.optimizer.init_args.lr=1e9", "--trainer.logger=false",
               "--trainer.max_epochs=2", "--trainer.limit_train_batches=30", *FAST, cwd=tmp_path, data_root=mnist_root)
    line = _one_line_error(out, 3, "training diverged", "not finite at step", "epoch 0", "last good checkpoint")
    assert "test with" not in out.stdout  # the end-of-fit summary recommends nothing
    for ckpt in (tmp_path / "checkpoints").glob("*.ckpt"):
        assert all(torch.isfinite(v).all() for v in _weights(ckpt).values() if v.is_floating_point()), line


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    """SafeCheckpointIO: refused, and the previous file (written atomically) is left whole."""
    from callbacks.faults import DivergedError, SafeCheckpointIO

    io, path = SafeCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1, "epoch": 0}, path)
    before = path.read_bytes()
    with pytest.raises(DivergedError, match="not finite"):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("nan")])}, "global_step": 2}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_an_explosion_that_stays_finite_exits_3_and_writes_no_checkpoint(tmp_path, mnist_root):
    """The ST-CNN at learning rate 1e6 keeps finite weights while its loss explodes (to ~1e30 by validation):
    through the console script, DivergenceGuard's growth thresholds stop it like a NaN, and the checkpoint it would
    write is not written."""
    out = dl4("fit", "--config", CONFIGS / "st_cnn_rts_mnist.yaml", "--model.init_args.optimizer.init_args.lr=1e6",
               "--trainer.logger=false", "--trainer.max_epochs=2", "--trainer.limit_train_batches=30", *FAST,
               cwd=tmp_path, data_root=mnist_root)
    _one_line_error(out, 3, "training diverged", "times", "epoch 0", "last good checkpoint: none")
    assert not list((tmp_path / "checkpoints").glob("*.ckpt")) and "test with" not in out.stdout


def _guard_run(tmp_path, blow_up, **guard):
    """A 12-step regression under DivergenceGuard(**guard); ``blow_up(step, model)`` may scale the loss or weights."""
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    from callbacks.faults import DivergenceGuard

    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)["loss"]
            scale = blow_up(self.trainer.global_step, self)  # the loss's value, not its gradient
            return {"loss": loss + (scale - 1) * loss.detach()}

    trainer = L.Trainer(max_steps=12, log_every_n_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[DivergenceGuard(**guard)])
    trainer.fit(Model())


@pytest.mark.parametrize("kind", ["loss", "weights"])
def test_the_guard_stops_a_finite_explosion_of_the_loss_or_the_weights_and_nothing_less(kind, tmp_path):
    from callbacks.faults import DivergedError

    def blow_up(step, model, factor=1e7):
        if kind == "weights" and step == 5:
            with torch.no_grad():
                model.layer.weight.mul_(factor)
        return factor if kind == "loss" and step >= 5 else 1.0

    with pytest.raises(DivergedError, match="grew more than" if kind == "loss" else "a weight reached"):
        _guard_run(tmp_path, blow_up)
    _guard_run(tmp_path, lambda step, model: 1.0 + 100 * step)  # a loss 1,000 times its first: nothing
    if kind == "loss":  # the threshold is a setting (a weight 1e7 times larger also blows the loss up)
        _guard_run(tmp_path, blow_up, loss_growth=1e9)


def test_the_guard_judges_the_kept_losses_at_its_checks_and_names_the_first_bad_step(tmp_path):
    """Each step only keeps its loss; the check on the logger's steps (every 4 here) judges them all and names the
    first bad one exactly, by the global step after it (as before): a NaN in the step that starts at global step 5
    is step 6, found at the next check, and an explosion from global step 9 on is step 10. Between the checks the
    losses are only kept (no host sync a step)."""
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    from callbacks.faults import DivergedError, DivergenceGuard

    guard = DivergenceGuard()
    kept = []

    class Model(BoringModel):
        def __init__(self, bad_step, value):
            super().__init__()
            self.bad_step, self.value = bad_step, value

        def training_step(self, batch, batch_idx):
            kept.append(len(guard._losses))
            loss = super().training_step(batch, batch_idx)["loss"]
            if self.trainer.global_step >= self.bad_step:
                loss = loss + (self.value - loss.detach())
            return {"loss": loss}

    for bad_step, value, message in ((5, float("nan"), "not finite at step 6"), (9, 1e12, "by step 10")):
        guard, kept = DivergenceGuard(), []
        trainer = L.Trainer(max_steps=20, log_every_n_steps=4, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                            callbacks=[guard])
        with pytest.raises(DivergedError, match=message):
            trainer.fit(Model(bad_step, value))
        assert kept[:5] == [0, 1, 2, 3, 0]  # kept between the checks at steps 3 and 7 (log_every_n_steps=4)


# ---- 2. checkpoints and configs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ae_checkpoint(tmp_path_factory, mnist_root) -> Path:
    """An Autoencoder checkpoint whose code is 16 wide (the config says 32)."""
    folder = tmp_path_factory.mktemp("ae")
    with pytest.MonkeyPatch.context() as patch:
        out = dl4_here("fit", "--config", CONFIGS / "ae_mnist.yaml", "--trainer.logger=false", "--trainer.max_epochs=1",
                       "--trainer.limit_train_batches=2", "--model.init_args.encoder.init_args.code_dim=16",
                       "--model.init_args.decoder.init_args.code_dim=16", *FAST, cwd=folder, data_root=mnist_root,
                       monkeypatch=patch)
    assert out.returncode == 0
    return folder / "checkpoints" / "last.ckpt"


def _unusable_checkpoint(here, tmp_path, mnist_root, ckpt, config="ae_mnist.yaml", subcommand="test"):
    (tmp_path / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    out = here(subcommand, "--config", CONFIGS / config, "--ckpt_path", ckpt, *FAST, cwd=tmp_path,
               data_root=mnist_root)
    assert _snapshot(tmp_path) == before  # no W&B run, no folder, nothing written
    return out


def test_a_checkpoint_of_another_model_names_both_classes(here, tmp_path, mnist_root, ae_checkpoint):
    """(validate, predict and fit --ckpt_path take the same path through DL4CLI.checkpoint_settings)"""
    out = _unusable_checkpoint(here, tmp_path, mnist_root, ae_checkpoint, "vae_mnist.yaml", "test")
    _one_line_error(out, 2, str(ae_checkpoint), "lightning_models.Autoencoder", "lightning_models.VAE")


@pytest.mark.parametrize("kind", ["missing", "truncated", "not_lightning"])
def test_an_unusable_checkpoint_file_is_named_before_any_run_is_created(here, kind, tmp_path, mnist_root,
                                                                       ae_checkpoint):
    bad = tmp_path / "bad.ckpt"
    if kind == "truncated":
        bad.write_bytes(ae_checkpoint.read_bytes()[:5000])
    elif kind == "not_lightning":
        torch.save({"weights": torch.zeros(2)}, bad)
    out = _unusable_checkpoint(here, tmp_path, mnist_root, bad)
    why = {"missing": "no such file", "truncated": "not a readable checkpoint",
           "not_lightning": "not a Lightning checkpoint"}[kind]
    _one_line_error(out, 2, str(bad), why)


def test_the_checkpoint_settings_beat_the_config_and_command_line_flags_beat_both(here, tmp_path, mnist_root,
                                                                                  ae_checkpoint):
    """Precedence: the checkpoint's code_dim 16 over the config's 32 (else its weights would not load); a
    --model flag over the checkpoint (here the loss, which the weights do not constrain); a flag that changes the
    network's shape is refused, naming the tensor."""
    common = ["test", "--config", CONFIGS / "ae_mnist.yaml", "--ckpt_path", ae_checkpoint, "--trainer.logger=false",
              "--trainer.limit_test_batches=2", *FAST]
    out = here(*common, cwd=tmp_path, data_root=mnist_root)
    assert out.returncode == 0, out.stderr[-3000:]
    out_bce = out.stdout
    out = here(*common, "--model.init_args.loss=mse", cwd=tmp_path, data_root=mnist_root)
    assert out.returncode == 0, out.stderr[-3000:]
    mse, bce = (float(re.search(r"test/recon\W+([-+.\deE]+)", text).group(1)) for text in (out.stdout, out_bce))
    assert 100 < mse < 0.5 * bce  # the squared error summed over 784 pixels, well below the cross-entropy
    out = here(*common, "--model.init_args.encoder.init_args.code_dim=8",
               "--model.init_args.decoder.init_args.code_dim=8", cwd=tmp_path, data_root=mnist_root)
    _one_line_error(out, 2, "do not fit", "--model.* flag")


# ---- 3. pre-emption, resume, determinism ------------------------------------------------------------------------


def test_sigterm_saves_the_step_exits_143_and_resume_continues_the_same_wandb_run(tmp_path, mnist_root):
    args = ["fit", "--config", CONFIGS / "ae_mnist.yaml", "--trainer.max_epochs=3", "--trainer.limit_train_batches=200",
            "--trainer.log_every_n_steps=10", *FAST]
    run = _popen(args, tmp_path, mnist_root)
    (lock,) = _wait_for_glob(tmp_path / "runs" / "dl4", "*/checkpoints/.dl4.lock", run)
    # training is under way once the first epoch's last.ckpt (step 200) is written: a fixed sleep after the lock
    # can end before the first step on a loaded machine
    _wait_for(lock.parent / "last.ckpt", run)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err[-3000:]
    (line,) = [line for line in err.splitlines() if line.startswith("dl4: stopped by SIGTERM")]
    assert "--ckpt_path last" in line
    last = lock.parent / "last.ckpt"
    stopped_at = torch.load(last, weights_only=True)["global_step"]
    assert f"at step {stopped_at}," in line and 200 <= stopped_at < 600
    (first,) = (tmp_path / "runs" / "wandb").glob("offline-run-*")
    run_id = first.name.rsplit("-", 1)[-1]
    assert lock.parent.parent.name == run_id
    kinds = [r.WhichOneof("record_type") for r in records(next(first.glob("run-*.wandb")))]
    assert "exit" in kinds  # the W&B run was finished, not cut off

    out = dl4(*args, "--ckpt_path", "last", cwd=tmp_path, data_root=mnist_root)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Resuming from {last}" in out.stdout or str(last.relative_to(tmp_path)) in out.stdout
    runs = sorted((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)  # the same W&B run, resumed
    assert sorted(p.name for p in (tmp_path / "runs" / "dl4").iterdir()) == [run_id]  # the same checkpoint folder
    steps = [row["trainer/global_step"] for row in history(runs[1]) if "trainer/global_step" in row]
    assert steps and min(steps) >= stopped_at  # the history continues after the stop
    assert torch.load(last, weights_only=True)["global_step"] == 600


def _wait_for_glob(folder: Path, pattern: str, process, timeout=300):
    end = time.time() + timeout
    while not (found := list(folder.glob(pattern))):
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.time() < end
        time.sleep(0.01)
    return found


# one family per row (the VAE for the autoencoders): the config, the signal that interrupts it, what shortens it
RESUMES = {
    "vae_mnist.yaml": (signal.SIGTERM, []),  # dynamic binarisation and z ~ q(z|x): the global generator
    "gan_mnist.yaml": (signal.SIGKILL, ["--model.init_args.parzen_samples=100"]),  # dropout, noise, two players
    "ntm_copy.yaml": (signal.SIGTERM, ["--data.init_args.batches_per_epoch=8", "--model.init_args.compile=false"]),
    "memn2n_babi.yaml": (signal.SIGKILL, []),
    "st_cnn_rts_mnist.yaml": (signal.SIGTERM, ["--data.init_args.batch_size=64",  # distortions drawn every batch,
                                               "--data.init_args.eval_batch_size=250"]),  # dropout
}


@pytest.mark.parametrize("config", sorted(RESUMES))
def test_an_interrupted_and_resumed_run_ends_with_the_same_weights(config, tmp_path, mnist_root, babi_root,
                                                                   monkeypatch, capfd):
    """An uninterrupted run and one interrupted (SIGKILL: resumed from the epoch's last.ckpt; SIGTERM: from the
    step it stopped at, mid-epoch) then resumed with --ckpt_path last, side by side: the same weights, bit for bit.
    The two runs are processes of their own (one is signalled, both run at once, each on one thread); the resumed
    one runs through dl4's entry point in this process, on one thread too."""
    sig, extra = RESUMES[config]
    root = babi_root if config.startswith("memn2n") else mnist_root
    args = ["fit", "--config", CONFIGS / config, "--trainer.logger=false", "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=8", *FAST, *extra]
    whole = _popen([*args, f"--trainer.default_root_dir={tmp_path / 'whole'}"], tmp_path, root, threads=1)
    cut = [*args, f"--trainer.default_root_dir={tmp_path / 'cut'}"]
    interrupted = _popen(cut, tmp_path, root, threads=1)
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    _wait_for(last, interrupted)
    interrupted.send_signal(sig)
    _, err = interrupted.communicate(timeout=120)
    assert interrupted.returncode == (-9 if sig == signal.SIGKILL else 143), err[-3000:]
    stopped_at = torch.load(last, weights_only=True)["global_step"]
    steps_per_epoch = 16 if config.startswith("gan") else 8  # the GAN counts both players' steps
    assert stopped_at < 2 * steps_per_epoch  # interrupted before the end
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the runs it is compared with (OMP_NUM_THREADS=1): the same sums, the same bits
    try:
        resumed = dl4_here(*cut, "--ckpt_path", "last", cwd=tmp_path, data_root=root, monkeypatch=monkeypatch,
                           capture=capfd)
    finally:
        torch.set_num_threads(threads)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err[-3000:]
    a, b = _weights(tmp_path / "whole" / "checkpoints" / "last.ckpt"), _weights(last)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"stopped at step {stopped_at}; differ: {different[:5]}"


def test_concurrent_csv_runs_in_one_folder_get_their_own_versions(tmp_path, mnist_root):
    args = ["fit", "--config", CONFIGS / "ae_mnist.yaml", "--trainer.logger=CSVLogger",
            "--trainer.logger.save_dir=runs", "--trainer.max_epochs=1", "--trainer.limit_train_batches=5", *FAST]
    runs = [_popen(args, tmp_path, mnist_root, threads=1) for _ in range(2)]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
    versions = sorted((tmp_path / "runs").glob("*/version_*"))
    assert [v.name for v in versions] == ["version_0", "version_1"]
    for version in versions:
        assert (version / "metrics.csv").is_file() and (version / "config.yaml").is_file()
        assert (version / "checkpoints" / "last.ckpt").is_file()


def test_a_second_run_into_the_same_checkpoint_folder_is_refused_while_the_first_runs(tmp_path, mnist_root,
                                                                                      monkeypatch, capfd):
    """The first run is a process of its own; the second, refused, runs through dl4's entry point here."""
    args = ["fit", "--config", CONFIGS / "ae_mnist.yaml", "--trainer.logger=false", *FAST]
    first = _popen([*args, "--trainer.max_epochs=20"], tmp_path, mnist_root, threads=1)  # killed below
    _wait_for(tmp_path / "checkpoints" / ".dl4.lock", first)
    second = dl4_here(*args, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", cwd=tmp_path,
                      data_root=mnist_root, monkeypatch=monkeypatch, capture=capfd)
    assert first.poll() is None  # the first run was still training while the second tried
    first.kill()
    first.communicate()
    _one_line_error(second, 2, "another dl4 run", str(tmp_path / "checkpoints"))


# ---- 4. data integrity ------------------------------------------------------------------------------------------


def _copy_mnist(mnist_root: Path, to: Path) -> Path:
    raw = to / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes((mnist_root / "MNIST" / "raw" / name).read_bytes())
    return raw


@pytest.mark.parametrize("damage", ["one_pixel", "truncated"])
def test_corrupt_mnist_fails_naming_the_file_before_any_run(here, damage, tmp_path, mnist_root):
    raw = _copy_mnist(mnist_root, tmp_path / "data")
    path = raw / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[:len(data) // 2]
    else:
        data[100_000] ^= 0xFF
    path.write_bytes(bytes(data))
    (tmp_path / "work").mkdir()
    out = here("fit", "--config", CONFIGS / "ae_mnist.yaml", "--data.init_args.download=false", *FAST,
               cwd=tmp_path / "work", data_root=tmp_path / "data")
    why = {"one_pixel": "not the published file", "truncated": "truncated or altered"}[damage]
    _one_line_error(out, 1, str(path), why, "download")
    assert list((tmp_path / "work").iterdir()) == []


def test_structure_is_checked_where_no_checksum_is_published(tmp_path, mnist_root):
    """A file dl4 has no published checksum for (here: labels under another name) is still checked for shape and
    range."""
    from datamodules.integrity import CorruptDataError, verify_idx, verify_labels

    path = tmp_path / "labels"
    path.write_bytes((2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes([1, 2, 12]))
    verify_idx(path, 1, 3, "restore it")
    with pytest.raises(CorruptDataError, match="labels must be 0-9"):
        verify_labels(path, torch.tensor([1, 2, 12]), "restore it")
    with pytest.raises(CorruptDataError, match="not an IDX file of images"):
        verify_idx(path, 3, 3, "restore it")


def _copy_babi(babi_root: Path, to: Path) -> Path:
    folder = to / "babi" / "tasks_1-20_v1-2" / "en"
    folder.mkdir(parents=True)
    for path in (babi_root / "babi" / "tasks_1-20_v1-2" / "en").glob("*.txt"):
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def test_an_altered_babi_file_fails_naming_it(here, tmp_path, babi_root):
    folder = _copy_babi(babi_root, tmp_path / "data")
    path = folder / "qa1_single-supporting-fact_train.txt"
    path.write_text(path.read_text().replace("bathroom", "kitchen", 1))
    (tmp_path / "work").mkdir()
    out = here("fit", "--config", CONFIGS / "memn2n_babi.yaml", *FAST, cwd=tmp_path / "work",
               data_root=tmp_path / "data")
    _one_line_error(out, 1, str(path), "not the published file", "tasks_1-20_v1-2.tar.gz")
    assert list((tmp_path / "work").iterdir()) == []


def test_a_missing_file_of_the_all_tasks_vocabulary_is_an_error(here, tmp_path, babi_root):
    folder = _copy_babi(babi_root, tmp_path / "data")
    (folder / "qa17_positional-reasoning_test.txt").unlink()
    out = here("fit", "--config", CONFIGS / "memn2n_babi.yaml", "--data.init_args.vocabulary=all", *FAST,
               cwd=tmp_path, data_root=tmp_path / "data")
    _one_line_error(out, 1, "bAbI task 17 (test) not found", str(folder / "qa17_positional-reasoning_test.txt"))


def test_babi_text_that_is_not_utf8_names_the_line(tmp_path):
    from datamodules.babi import parse_babi
    from datamodules.integrity import CorruptDataError

    path = tmp_path / "qa1_single-supporting-fact_train.txt"
    path.write_bytes(b"1 Mary moved to the bathroom.\n2 John went to the \xff hallway.\n")
    with pytest.raises(CorruptDataError, match=r"line 2: not UTF-8 text \(byte 0xff\)"):
        parse_babi(path)


# ---- 5. settings ------------------------------------------------------------------------------------------------

BAD_SETTINGS = [  # one per family through dl4; the other constructors' checks below, in-process
    ("ae_mnist.yaml", "--model.init_args.encoder.init_args.hidden_dims=[512, -1]", "Encoder.hidden_dims"),
    ("vae_mnist.yaml", "--data.init_args.batch_size=0", "data.batch_size must be > 0"),
    ("gan_mnist.yaml", "--model.init_args.discriminator.init_args.dropout=1.0", "MLPDiscriminator.dropout"),
    ("ntm_copy.yaml", "--data.init_args.test_lengths=[10, 0]", "data.test_lengths"),
    ("memn2n_babi.yaml", "--model.init_args.hops=0", "model.hops must be > 0"),
]  # the STN's keys: tests/test_lightning_models/test_stn.py


@pytest.mark.parametrize("config, flag, message", BAD_SETTINGS, ids=[f"{c}:{f.split('=')[0]}" for c, f, _ in BAD_SETTINGS])
def test_an_impossible_setting_fails_naming_the_key_before_any_run(config, flag, message, tmp_path, mnist_root,
                                                                   monkeypatch, capsys):
    """The first through the console script, the others through its entry point in this process."""
    (tmp_path / "notes.txt").write_text("mine")
    args = ("fit", "--config", CONFIGS / config, flag, *FAST)
    if config == BAD_SETTINGS[0][0]:
        out = dl4(*args, cwd=tmp_path, data_root=mnist_root)
    else:
        out = dl4_here(*args, cwd=tmp_path, data_root=mnist_root, monkeypatch=monkeypatch, capture=capsys)
    _one_line_error(out, 2, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_an_unreachable_wandb_server_falls_back_to_offline(tmp_path, mnist_root):
    env = {**_env(mnist_root), "WANDB_MODE": "online", "WANDB_API_KEY": "x" * 40,
           "WANDB_BASE_URL": "http://127.0.0.1:9"}  # the discard port: nothing listens there
    start = time.time()
    out = subprocess.run(["dl4", "fit", "--config", str(CONFIGS / "ae_mnist.yaml"), "--trainer.max_epochs=1",
                          "--trainer.limit_train_batches=2", *FAST], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "W&B server http://127.0.0.1:9: no answer" in out.stderr and "logging offline" in out.stderr
    assert len(list((tmp_path / "runs" / "wandb").glob("offline-run-*"))) == 1
    assert time.time() - start < 120


def _constructors():
    from datamodules import AlgorithmicTasksDataModule, BabiDataModule, MNISTDataModule, Toy1DDataModule
    from lightning_models import GAN, NTM, VAE, DenoisingAutoencoder, MemN2N, SparseAutoencoder, STNClassifier
    from lightning_models.nn.autoencoders import Decoder
    from lightning_models.nn.gan import DCGenerator, Maxout, MLPGenerator
    from lightning_models.nn.ntm import NeuralTuringMachine, StackedLSTM

    return [
        (lambda: DenoisingAutoencoder(noise_level=1.5), "model.noise_level must be in [0, 1]"),
        (lambda: DenoisingAutoencoder(noise="gaussian", noise_level=0), "model.noise_level must be > 0"),
        (lambda: SparseAutoencoder(rho=0), "model.rho must be in (0, 1)"),
        (lambda: SparseAutoencoder(beta=-1), "model.beta must be >= 0"),
        (lambda: VAE(iw_samples=0), "model.iw_samples must be > 0"),
        (lambda: Decoder(code_dim=0), "Decoder.code_dim must be > 0"),
        (lambda: Maxout(10, 10, pieces=0), "Maxout.pieces must be > 0"),
        (lambda: MLPGenerator(noise_dim=-3), "MLPGenerator.noise_dim must be > 0"),
        (lambda: DCGenerator(width=0), "DCGenerator.width must be > 0"),
        (lambda: GAN(parzen_sigmas=[0.1, 0]), "model.parzen_sigmas must be > 0"),
        (lambda: NTM(memory_rows=0), "model.memory_rows must be > 0"),
        (lambda: NeuralTuringMachine(9, 8, clip=0), "model.clip must be > 0"),
        (lambda: StackedLSTM(9, 8, num_layers=0), "model.num_layers must be > 0"),
        (lambda: MemN2N(random_noise=2), "model.random_noise must be in [0, 1]"),
        (lambda: MemN2N(embedding_dim=0), "model.embedding_dim must be > 0"),
        (lambda: STNClassifier(None, num_classes=0), "model.num_classes must be > 0"),
        (lambda: MNISTDataModule(eval_batch_size=0), "data.eval_batch_size must be > 0"),
        (lambda: AlgorithmicTasksDataModule(batches_per_epoch=0), "data.batches_per_epoch must be > 0"),
        (lambda: AlgorithmicTasksDataModule(task="sort"), "data.task: unknown task 'sort'"),
        (lambda: BabiDataModule(batch_size=-1), "data.batch_size must be > 0"),
        (lambda: Toy1DDataModule(stds=[1.0, 0.0], means=[0, 1]), "data.stds must be > 0"),
    ]


@pytest.mark.parametrize("case", range(len(_constructors())))
def test_every_constructor_names_an_impossible_setting(case):
    from dl4.errors import ConfigError

    build, message = _constructors()[case]
    with pytest.raises(ConfigError, match=re.escape(message)):
        build()


# ---- 6. a job's time limit ---------------------------------------------------------------------------------------


class _Regression(__import__("lightning").LightningModule):
    """A fixed least-squares problem: the same data in the same order every epoch, so two runs can be compared."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 4, generator=g)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def test_time_budget_stops_before_an_epoch_that_would_not_fit_and_the_next_job_resumes_exactly(tmp_path,
                                                                                               monkeypatch):
    """Every epoch takes 10 s on a fake clock. With 35 s, the job stops after epoch 3 (30 s spent, and a fourth
    epoch would end at 40 s), writes last.ckpt then (and at epoch 2, every_n_epochs=2); a second job with its own 35
    s runs epochs 4 and 5 from it and ends on the weights of one uninterrupted 5-epoch run."""
    import lightning as L
    from types import SimpleNamespace

    import callbacks.faults
    from callbacks import TimeBudget

    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(callbacks.faults, "time", SimpleNamespace(monotonic=lambda: clock.now))
    saved = []

    class Tick(L.Callback):  # a plain callback: its epoch end runs before the checkpoint callbacks'
        def on_train_epoch_end(self, trainer, pl_module):
            clock.now += 10.0

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            saved.append(trainer.current_epoch + 1)

    def job(max_epochs, ckpt_path=None):
        clock.now = 0.0
        budget = TimeBudget(seconds=35, every_n_epochs=2, dirpath=tmp_path / "ckpt")
        trainer = L.Trainer(max_epochs=max_epochs, callbacks=[Tick(), budget], logger=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=tmp_path)
        torch.manual_seed(0)
        model = _Regression()
        trainer.fit(model, ckpt_path=ckpt_path)
        return trainer, model

    trainer, _ = job(max_epochs=10)
    assert (trainer.current_epoch, saved) == (3, [2, 3])
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.ckpt"]
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 3 * 8
    saved.clear()
    trainer, resumed = job(max_epochs=5, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert (trainer.current_epoch, saved) == (5, [4, 5])  # epoch 5 is the last: saved although 5 % 2 != 0
    monkeypatch.setattr(callbacks.faults, "time", SimpleNamespace(monotonic=lambda: 0.0))  # never out of time
    _, whole = job(max_epochs=5)
    for a, b in zip(resumed.parameters(), whole.parameters()):
        assert torch.equal(a, b)


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a file system of its own, 512 KiB (tmpfs; mounting needs root, as on CI's machine and this one):
    what a full disk, quota or cluster scratch folder looks like to a run."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def _fit_gan_1d(root: Path, tmp_path, mnist_root, *extra, env=None):
    return dl4("fit", "--config", CONFIGS / "gan_1d.yaml", "--trainer.logger=false", "--trainer.max_epochs=30",
               "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
               '--trainer.callbacks=[{"class_path": "ModelCheckpoint", "init_args": {"save_last": true, "save_top_k": -1}}]',
               f"--trainer.default_root_dir={root}", *extra, cwd=tmp_path, data_root=mnist_root, env=env)


def test_a_full_checkpoint_disk_is_one_line_and_the_last_good_checkpoint_stays_whole(small_disk, tmp_path, mnist_root):
    """The 1-D GAN's checkpoints (97 KiB each, every epoch's kept) fill a 512 KiB disk within a few epochs: one line
    naming the file, the space and the newest checkpoint, exit 1, and every checkpoint left there loads; no
    half-written or temporary file stays behind."""
    out = _fit_gan_1d(small_disk, tmp_path, mnist_root)
    line = _one_line_error(out, 1, "no space left on the disk of", "KiB free", "is intact")
    assert str(small_disk) in line
    left = sorted((small_disk / "checkpoints").iterdir())
    assert not [p for p in left if p.name.endswith(".tmp")], left
    checkpoints = [p for p in left if p.suffix == ".ckpt"]
    assert "last.ckpt" in {p.name for p in checkpoints}
    for ckpt in checkpoints:
        assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] > 0


def test_a_small_full_tmpdir_does_not_stop_checkpoints(small_disk, tmp_path, mnist_root):
    """A checkpoint is staged beside its target, not in $TMPDIR: with TMPDIR on a full disk, a run whose
    checkpoint folder has room writes its checkpoints and ends well."""
    (small_disk / "filler").write_bytes(b"\0" * (512 * 1024 - 4096))
    out = _fit_gan_1d(tmp_path / "run", tmp_path, mnist_root, "--trainer.max_epochs=2", env={"TMPDIR": str(small_disk)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_metrics_logged_before_a_sigkill_survive_and_reach_wandb_on_resume(tmp_path, mnist_root):
    """A W&B-offline fit (a row every 10 steps, a checkpoint every 50) is killed without warning 1 s after its
    checkpoint of step 150. W&B's own log keeps what its writer process had flushed (measured here and printed; 1
    row of the 15 when the issue was filed); dl4's metrics.jsonl beside the run keeps all 15. The resumed run gives
    W&B the rows its log lost, so that the two segments `wandb sync` uploads hold every step's row, once per step up
    to the checkpoint, with the values logged before the kill."""
    import json

    args = ["fit", "--config", CONFIGS / "ae_mnist.yaml", "--trainer.max_epochs=5", "--trainer.limit_train_batches=50",
            "--trainer.log_every_n_steps=10", *FAST]
    run = _popen(args, tmp_path, mnist_root)
    (lock,) = _wait_for_glob(tmp_path / "runs" / "dl4", "*/checkpoints/.dl4.lock", run)
    last = lock.parent / "last.ckpt"
    end = time.time() + 300
    while not (last.exists() and torch.load(last, weights_only=True, map_location="cpu")["global_step"] >= 150):
        assert run.poll() is None and time.time() < end, run.communicate()[1][-2000:]
        time.sleep(0.05)
    time.sleep(1)
    run.kill()
    run.communicate(timeout=60)
    step = torch.load(last, weights_only=True, map_location="cpu")["global_step"]
    saved = [json.loads(line) for line in (lock.parent.parent / "metrics.jsonl").read_text().splitlines()]
    before = {r["step"]: r["train/loss"] for r in saved if "train/loss" in r and r["step"] < step}
    assert sorted(before) == list(range(9, step, 10))
    (killed,) = (tmp_path / "runs" / "wandb").glob("offline-run-*")
    kept = [r for r in history(killed) if "train/loss" in r]
    print(f"W&B's log of the killed run kept {len(kept)} of the {len(before)} rows logged before its checkpoint")

    out = dl4(*args, "--ckpt_path", "last", cwd=tmp_path, data_root=mnist_root)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [r for segment in (tmp_path / "runs" / "wandb").glob("offline-run-*") for r in history(segment)
            if "train/loss" in r]
    steps = sorted({r["trainer/global_step"] for r in rows})
    assert steps == list(range(9, 250, 10)), steps  # every row of the 5 epochs, none missing
    for r in rows:
        if r["trainer/global_step"] in before:
            assert r["train/loss"] == pytest.approx(before[r["trainer/global_step"]])
    by_step = [r["trainer/global_step"] for r in rows if r["trainer/global_step"] < step]
    assert len(by_step) == len(set(by_step))  # once each up to the checkpoint


def test_a_full_wandb_disk_is_one_line_not_a_silent_gap(small_disk, tmp_path, mnist_root):
    """W&B's folder on a 512 KiB disk, the checkpoints elsewhere: when the disk fills, W&B's writer process fails
    silently, but dl4's metrics.jsonl beside W&B's run cannot be written either, and the run stops with one line
    naming it (exit 1); the checkpoints elsewhere are intact."""
    out = dl4("fit", "--config", CONFIGS / "ae_mnist.yaml", "--trainer.max_epochs=30",
              "--trainer.limit_train_batches=50", "--trainer.log_every_n_steps=1", *FAST,
              f"--trainer.logger.save_dir={small_disk}",
              f'--trainer.callbacks=[{{"class_path": "ModelCheckpoint", "init_args": {{"dirpath": "{tmp_path / "ck"}", '
              f'"save_last": true}}}}]', cwd=tmp_path, data_root=mnist_root)
    line = _one_line_error(out, 1, "no space left on the disk of", "metrics.jsonl")
    assert str(small_disk) in line and "Logging error" not in out.stderr
    if (tmp_path / "ck" / "last.ckpt").exists():
        assert torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)["global_step"] > 0


def test_the_metrics_file_marks_each_checkpointed_step_once_unless_rows_came_between(tmp_path):
    """Two checkpoints of one step (best and last) give one mark and one sync; a row logged after a mark makes the
    next checkpoint of that step mark again, so that a run resumed from it keeps the row."""
    import json

    from lightning.pytorch.loggers import CSVLogger

    from callbacks.faults import MetricsFile

    log = MetricsFile(CSVLogger(tmp_path, name="run"))
    log.log_metrics({"train/loss": 1.0}, step=4)
    log.mark(5)
    log.mark(5)
    log.log_metrics({"val/loss": 2.0}, step=5)
    log.mark(5)
    log.mark(6)
    log.finalize("success")
    rows = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert rows == [{"step": 4, "train/loss": 1.0}, {"checkpoint_global_step": 5}, {"step": 5, "val/loss": 2.0},
                    {"checkpoint_global_step": 5}, {"checkpoint_global_step": 6}]
