"""The real ``dl4`` console script: every config, a train-then-test round trip, and bad input."""

import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from conftest import CONFIGS, dl4, dl4_here, require_dataset
from dl4.wandb_records import config as run_config
from dl4.wandb_records import history

ALL_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml"))


def _classes(config: str) -> tuple[str, str]:
    spec = yaml.safe_load((CONFIGS / config).read_text())
    return spec["model"]["class_path"].rsplit(".", 1)[-1], spec["data"]["class_path"].rsplit(".", 1)[-1]


# `dl4 test` runs once per (model class, datamodule class): a test step is the model's and the data's, the same
# for the configs that differ only in their networks, whose checkpoints load_from_checkpoint rebuilds for each
TESTED = set({_classes(c): c for c in reversed(ALL_CONFIGS)}.values())

# what `dl4 test` must report for each model class: the number its results page is about
HEADLINE = {"Autoencoder": "test/recon", "DenoisingAutoencoder": "test/recon", "SparseAutoencoder": "test/recon",
            "KSparseAutoencoder": "test/recon", "ContractiveAutoencoder": "test/recon", "VAE": "test/neg_elbo",
            "GAN": "test/parzen_ll", "STNClassifier": "test/error", "VSE": "test/i2t_r1", "MemN2N": "test/error",
            "NTM": "test/bits_per_seq", "LSTMBaseline": "test/bits_per_seq"}


def headline_metric(config: str) -> str:
    return HEADLINE[_classes(config)[0]]


def test_help_lists_every_command_and_where_the_configs_are(tmp_path):
    out = dl4("--help", cwd=tmp_path)
    assert out.returncode == 0
    commands = re.findall(r"^  (\w+) {2,}\S", out.stdout, flags=re.M)
    assert commands == ["fit", "validate", "test", "predict", "sweep", "data"], out.stdout
    assert "configs/" in out.stdout and "wandb leet" in out.stdout


def test_every_model_has_a_config():
    """Every LightningModule that lightning_models exports is some config's model (found by glob, not by a list)."""
    import lightning as L

    import lightning_models

    models = {name for name in lightning_models.__all__
              if issubclass(getattr(lightning_models, name), L.LightningModule)}
    configured = {yaml.safe_load((CONFIGS / c).read_text())["model"]["class_path"].rsplit(".", 1)[-1]
                  for c in ALL_CONFIGS}
    assert models <= configured, f"no config in configs/ for {sorted(models - configured)}"


SHORT_TEST = {"vae_mnist.yaml": ["--model.init_args.iw_samples=5"]}  # only shortens the test: k = 5, not 1000
MNIST_CAPTIONS = ["--data.init_args.train_size=300", "--data.init_args.val_size=40", "--data.init_args.test_size=40"]


# where a config's data is not in the data root as it is: MNIST captions are generated (small, into the test's
# folder: the data root is read-only); full COCO is not here, its real 159-image sample is
DATA = {"vse_mnist_captions.yaml": lambda tmp: [f"--data.init_args.root={tmp}/mnist_captions", *MNIST_CAPTIONS],
        "vse_coco.yaml": lambda tmp: ["--data.init_args.root=coco_sample", "--data.init_args.batch_size=8",
                                      "--data.init_args.eval_batch_size=16", "--data.init_args.image_size=64"]}


# the NTM compiles its time step; ntm_copy.yaml's round trip tests that under `dl4 fit` and `dl4 test`, and the other
# two NTM configs (the same step, other tasks) run eagerly: compiling each costs 10-30 s and tests nothing new
DATA |= dict.fromkeys(["ntm_associative_recall.yaml", "ntm_repeat_copy.yaml"],
                      lambda tmp: ["--model.init_args.compile=false"])

# configs whose round trip through the console script another test makes
ELSEWHERE = {"vse_mnist_captions_decoder.yaml": "stage 2 needs stage 1's checkpoint: tests/test_lightning_models/"
             "test_vse.py runs both stages through `dl4 fit`, then `dl4 test` on 1 and 2 processes"}


@pytest.mark.slow
@pytest.mark.parametrize("config", [c for c in ALL_CONFIGS if c not in ELSEWHERE])
def test_config_trains_then_tests_from_its_checkpoint(config, tmp_path, mnist_root, monkeypatch, capfd):
    """Every config as it is, through dl4's entry point (``dl4.console.main``, in this process: the console script
    itself is run by the tests of the families, of faults and of DDP): `dl4 fit` (one epoch of 2 batches, 2
    validation batches, every picture callback drawing) writes a checkpoint (last.ckpt where the config keeps one);
    `dl4 test --ckpt_path` runs on it (once per model and datamodule class, ``TESTED``); and
    ``Model.load_from_checkpoint`` rebuilds the model, its networks from their class_path, with the same weights."""
    if config == "vse_coco.yaml":  # CI's COCO sample, in the same data root
        require_dataset("coco_sample/annotations/captions_val2017.json")
    common = ["--config", CONFIGS / config, "--trainer.logger=false", "--trainer.enable_progress_bar=false",
              f"--trainer.default_root_dir={tmp_path}", *DATA.get(config, lambda tmp: [])(tmp_path)]
    here = dict(cwd=tmp_path, data_root=mnist_root, monkeypatch=monkeypatch, capture=capfd)
    out = dl4_here("fit", *common, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                   "--trainer.limit_val_batches=2", **here)
    assert out.returncode == 0, out.stderr[-3000:]
    written = sorted((tmp_path / "checkpoints").glob("*.ckpt"))  # last.ckpt, or Lightning's default checkpoint
    assert written and "Checkpoints: " in out.stdout  # dl4's summary of a finished fit
    assert f"test with: dl4 test --config {CONFIGS / config}" in out.stdout  # the run's own config
    assert "litlogger" not in out.stdout + out.stderr and "LeafSpec" not in out.stderr  # nothing to act on
    ckpt = tmp_path / "checkpoints" / "last.ckpt" if (tmp_path / "checkpoints" / "last.ckpt").is_file() else written[0]
    if config in TESTED:
        out = dl4_here("test", *common, "--ckpt_path", ckpt, "--trainer.limit_test_batches=2",
                       *SHORT_TEST.get(config, []), **here)
        assert out.returncode == 0, out.stderr[-3000:]
        reported = dict(re.findall(r"(test/\w+)\s+(\S+)", out.stdout))  # Lightning's table of test metrics
        assert reported, out.stdout[-2000:]
        assert all(math.isfinite(float(v)) for v in reported.values()), reported
        assert headline_metric(config) in reported, (headline_metric(config), sorted(reported))

    import lightning_models

    name = yaml.safe_load((CONFIGS / config).read_text())["model"]["class_path"].rsplit(".", 1)[-1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = getattr(lightning_models, name).load_from_checkpoint(ckpt, map_location="cpu")
    assert not [str(w.message) for w in caught if "nn.Module" in str(w.message)]  # no network-argument warnings
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    loaded = model.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert not [k for k, v in model.hparams.items() if isinstance(v, torch.nn.Module)]  # configs, not objects


def test_print_config_resolves_short_names_and_interpolation(tmp_path, monkeypatch, capfd):
    text = (CONFIGS / "vae_mnist.yaml").read_text().replace("batch_size: 100", "batch_size: 100\n    eval_batch_size: "
                                                            "${data.init_args.batch_size}")
    (tmp_path / "interpolated.yaml").write_text(text)
    out = dl4_here("fit", "--config", tmp_path / "interpolated.yaml", "--print_config", cwd=tmp_path,
                   monkeypatch=monkeypatch, capture=capfd)
    assert out.returncode == 0, out.stderr
    printed = yaml.safe_load(out.stdout)
    assert printed["model"]["class_path"] == "lightning_models.VAE"
    assert printed["data"]["init_args"]["eval_batch_size"] == printed["data"]["init_args"]["batch_size"] == 100
    assert printed["seed_everything"] == 0


def test_model_can_be_chosen_by_short_name_on_the_command_line(tmp_path, monkeypatch, capfd):
    out = dl4_here("fit", "--config", CONFIGS / "ae_mnist.yaml", "--model=DenoisingAutoencoder",
                   "--model.noise_level=0.5", "--print_config", cwd=tmp_path, monkeypatch=monkeypatch, capture=capfd)
    assert out.returncode == 0, out.stderr
    model = yaml.safe_load(out.stdout)["model"]
    assert model["class_path"].endswith("DenoisingAutoencoder") and model["init_args"]["noise_level"] == 0.5


def test_fit_then_test_logs_scalars_images_and_config_to_offline_wandb(tmp_path, mnist_root):
    (tmp_path / "notes.txt").write_text("mine")
    common = ["--config", CONFIGS / "vae_mnist.yaml", "--trainer.enable_progress_bar=false"]
    out = dl4("fit", *common, "--trainer.max_epochs=2", "--trainer.limit_train_batches=30",
              "--trainer.limit_val_batches=2", cwd=tmp_path, data_root=mnist_root)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "wandb sync runs/wandb/offline-run-" in out.stdout and "Checkpoints: " in out.stdout
    (run_dir,) = (tmp_path / "runs" / "wandb").glob("offline-run-*")
    rows = history(run_dir)
    keys = {k for row in rows for k in row}
    assert {"train/neg_elbo", "train/kl", "val/neg_elbo", "epoch"} <= keys
    val = [row["val/neg_elbo"] for row in rows if "val/neg_elbo" in row]
    assert len(val) == 2 and val[1] < val[0] < 550
    for image in ("media/reconstructions", "media/prior_samples", "media/latent_interpolation"):
        logged = [row for row in rows if f"{image}/_type" in row]
        assert logged, f"{image} not logged"
        (name,) = logged[-1][f"{image}/filenames"]
        with Image.open(run_dir / "files" / name) as png:
            assert png.size == (logged[-1][f"{image}/width"], logged[-1][f"{image}/height"]) and png.size[0] > 100
    cfg = run_config(run_dir)
    assert cfg["model"]["class_path"] == "lightning_models.VAE" and cfg["seed_everything"] == 0
    assert yaml.safe_load((run_dir / "files" / "config.yaml").read_text())["model"]["init_args"]["decoder"]["init_args"]["code_dim"] == 50

    ckpt = next((tmp_path / "runs" / "dl4").glob("*/checkpoints/last.ckpt"))
    out = dl4("test", *common, "--ckpt_path", ckpt, "--model.init_args.iw_samples=20", "--trainer.limit_test_batches=2",
              cwd=tmp_path, data_root=mnist_root)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test/iw_nll_k20" in out.stdout and "test/neg_elbo" in out.stdout
    test_run = max((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    (logged,) = [row for row in history(test_run) if "test/iw_nll_k20" in row]
    assert logged["test/iw_nll_k20"] <= logged["test/neg_elbo"] + 2  # the bound tightens (up to sampling noise)

    # a second training run in the same folder neither fails on the saved config nor touches the first run
    first_run_files = sorted(p.name for p in run_dir.rglob("*"))
    out = dl4("fit", *common, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
              "--trainer.limit_val_batches=2", cwd=tmp_path, data_root=mnist_root)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(list((tmp_path / "runs" / "wandb").glob("offline-run-*"))) == 3  # fit, test, fit
    assert sorted(p.name for p in run_dir.rglob("*")) == first_run_files
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _untouched(folder: Path) -> bool:
    return sorted(p.name for p in folder.iterdir()) == ["notes.txt"] and (folder / "notes.txt").read_text() == "mine"


MISTAKES = {  # what the user wrote -> what the one line must say
    "unknown key in the YAML": (["--config", "bad.yaml"], ["bad.yaml: model.init_args.likelihod", "did you mean likelihood?"]),
    "unknown key on the command line": (["--trainer.max_epoch=3"], ["--trainer.max_epoch: no such option",
                                                                     "did you mean --trainer.max_epochs?"]),
    "a string where a number goes": (["--model.init_args.decoder.init_args.code_dim=fifty"],
                                     ["model.init_args.decoder.init_args.code_dim: got 'fifty'; expected int"]),
    "a value outside the choices": (["--model.init_args.likelihood=bern"], ["model.init_args.likelihood: got 'bern'",
                                     "expected one of bernoulli, gaussian; did you mean bernoulli?"]),
    "an unknown model class": (["--model=VAEE"], ["model.class_path: 'VAEE' is not one of dl4's models",
                                                  "did you mean VAE?"]),
    "an unknown data class": (["--data=MNISTDataModul"], ["data.class_path: 'MNISTDataModul'",
                                                          "did you mean MNISTDataModule?"]),
    "a YAML indentation error": (["--config", "indented.yaml"], ["indented.yaml, line 3, column 13: not valid YAML"]),
    "a config file that is not there": (["--config", "nowhere.yaml"], ["--config nowhere.yaml: no such file"]),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_every_config_mistake_is_one_line_naming_the_key_before_any_run(mistake, tmp_path, monkeypatch, capfd):
    """Each kind of mistake through dl4's entry point: exit status 2, one line that names the key (and the file),
    what was given and what is expected or the closest valid name; nothing is created. jsonargparse's own message
    (4 to 17 lines) is behind DL4_FULL_ERRORS=1."""
    (tmp_path / "notes.txt").write_text("mine")
    bad = yaml.safe_load((CONFIGS / "vae_mnist.yaml").read_text())
    bad["model"]["init_args"]["likelihod"] = "bernoulli"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    (tmp_path / "indented.yaml").write_text("model:\n  class_path: VAE\n   init_args:\n    iw_samples: 3\n")
    args, expected = MISTAKES[mistake]
    out = dl4_here("fit", "--config", CONFIGS / "vae_mnist.yaml", *args, cwd=tmp_path, monkeypatch=monkeypatch,
                   capture=capfd)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("dl4: error: ")
    for part in expected:
        assert part in line, (part, line)
    for name in ("bad.yaml", "indented.yaml"):
        (tmp_path / name).unlink()
    assert _untouched(tmp_path)


@pytest.mark.parametrize("args, expected", [
    (["fitt", "--config", CONFIGS / "vae_mnist.yaml"], "dl4: error: 'fitt' is not a dl4 command: fit, validate, test, predict, sweep, "
                                     "data; did you mean fit?"),
    (["fit"], "dl4: error: model: required (give --config configs/<experiment>.yaml, or --model=<class name>)"),
], ids=["unknown command", "no config"])
def test_a_command_line_mistake_is_one_line(args, expected, tmp_path, monkeypatch, capfd):
    out = dl4_here(*args, cwd=tmp_path, monkeypatch=monkeypatch, capture=capfd)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(expected), line


def test_the_parsers_full_message_is_behind_a_variable(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("DL4_FULL_ERRORS", "1")
    out = dl4_here("fit", "--config", CONFIGS / "vae_mnist.yaml", "--model.init_args.likelihood=bern", cwd=tmp_path,
                   monkeypatch=monkeypatch, capture=capfd)
    assert out.returncode == 2
    first, *rest = out.stderr.strip().splitlines()
    assert first.startswith("dl4: error: model.init_args.likelihood") and any("Parser key" in r for r in rest)


def test_a_mistake_through_the_installed_console_script_is_one_line(tmp_path):
    out = dl4("fit", "--config", CONFIGS / "vae_mnist.yaml", "--trainer.max_epoch=3", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["dl4: error: --trainer.max_epoch: no such option; did you mean "
                                               "--trainer.max_epochs? (DL4_FULL_ERRORS=1 shows the parser's message)"]
    assert list(tmp_path.iterdir()) == []


def test_missing_data_folder_says_where_it_looked_and_touches_nothing(tmp_path, monkeypatch, capfd):
    (tmp_path / "notes.txt").write_text("mine")
    out = dl4_here("fit", "--config", CONFIGS / "ae_mnist.yaml", "--data.init_args.download=false",
                   "--trainer.enable_progress_bar=false", cwd=tmp_path, data_root=tmp_path / "empty",
                   monkeypatch=monkeypatch, capture=capfd)
    assert out.returncode == 1
    assert "dl4: error: MNIST not found" in out.stderr
    assert str(tmp_path / "empty" / "MNIST" / "raw") in out.stderr and "Traceback" not in out.stderr
    assert _untouched(tmp_path)  # no run folder, no checkpoint, no config written


def test_console_script_is_the_installed_entry_point():
    out = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; "
                          "print([e.value for e in m.entry_points(group='console_scripts') if e.name == 'dl4'])"],
                         capture_output=True, text=True)
    assert "dl4.console:main" in out.stdout


def test_runtime_drops_lightnings_per_step_nvml_probe_without_a_gpu():
    """Without a GPU, `PYTORCH_NVML_BASED_CUDA_CHECK=1` (set by importing Lightning) makes every Adam step dlopen
    NVML; the runtime set-up drops it then, and keeps it where a GPU is (fork safety)."""
    code = ("import os, torch, lightning; assert os.environ['PYTORCH_NVML_BASED_CUDA_CHECK'] == '1'\n"
            "from dl4.cli import configure_runtime; configure_runtime()\n"
            "print(os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK'), torch.cuda.is_available())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == (["1", "True"] if out[1] == "True" else ["None", "False"])
