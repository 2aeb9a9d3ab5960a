"""`dl4 predict` for every family, through the entry point, on checkpoints trained here and inputs written here: the
answers are checked against what the inputs are (and against a trivial model on the same inputs), not only that
files exist. The DDP run and the bad inputs through the console script are in the full tier."""

import json
import re
from pathlib import Path

import pytest
import torch
from torchvision.datasets import MNIST
from torchvision.utils import save_image

from conftest import CONFIGS, dl4, dl4_here
from datamodules.user_inputs import digit_images

QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


class Runner:
    """`dl4 fit` then `dl4 predict` of one config in a folder, in this process (``dl4_here``)."""

    def __init__(self, config: str, folder: Path, monkeypatch, capfd, data_root):
        self.config, self.folder = CONFIGS / config, folder
        self.here = {"cwd": folder, "monkeypatch": monkeypatch, "capture": capfd, "data_root": data_root}

    def run(self, command: str, *args):
        return dl4_here(command, "--config", self.config, *QUIET, f"--trainer.default_root_dir={self.folder}", *args,
                        **self.here)

    def fit(self, *args) -> Path:
        out = self.run("fit", *args)
        assert out.returncode == 0, out.stderr[-3000:]
        return max(self.folder.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)

    def predict(self, ckpt: Path, *args) -> tuple[list[dict], dict, Path]:
        out = self.run("predict", "--ckpt_path", ckpt, *args)
        assert out.returncode == 0, out.stderr[-3000:]
        folder = Path(re.search(r"Predictions: (\S+)", out.stdout).group(1))
        folder = folder if folder.is_absolute() else self.folder / folder
        records = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
        self.stdout = out.stdout
        return records, torch.load(folder / "arrays.pt"), folder


def mnist_test_digits(root: Path, n: int, first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ds = MNIST(str(root), train=False)
    return ds.data[first:first + n], ds.targets[first:first + n]


def write_paper_digits(folder: Path, digits: torch.Tensor, size: int = 56) -> list[str]:
    """Digits as a user photographs them: dark ink on light paper, ``size`` pixels square (MNIST's are 28)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, digit in enumerate(digits):
        ink = 1 - torch.nn.functional.interpolate(digit[None, None].float() / 255, size=(size, size),
                                                  mode="bilinear")[0]
        names.append(f"digit{i:02d}.png")
        save_image(ink, folder / names[-1])
    return names


def test_user_images_are_read_as_mnist_draws_its_digits(mnist_root, tmp_path):
    """A digit saved as dark ink on white comes back as MNIST's digit, exactly at 28 x 28, and close at another size
    and aspect (a JPEG, padded to a square, then resized)."""
    digits, _ = mnist_test_digits(mnist_root, 3)
    save_image(1 - digits[0].float() / 255, tmp_path / "a.png")
    names, x = digit_images(tmp_path / "a.png", 28)
    assert names == ["a.png"] and x.dtype == torch.uint8 and x.shape == (1, 1, 28, 28)
    assert torch.equal(x[0, 0], digits[0])
    wide = torch.zeros(3, 28, 40)
    wide[:, :, 6:34] = digits[1].float() / 255
    save_image(1 - wide, tmp_path / "b.jpg")
    _, y = digit_images(tmp_path / "b.jpg", 28)
    # 28 x 40 padded to 40 x 40, resized to 28: the digit is 28 * 28 / 40 = 19.6 pixels tall, centred
    expected = torch.nn.functional.interpolate(torch.nn.functional.pad(digits[1].float(), (6, 6, 6, 6))[None, None],
                                               size=(28, 28), mode="bilinear", antialias=True)[0, 0]
    assert torch.corrcoef(torch.stack([y[0, 0].float().flatten(), expected.flatten()]))[0, 1] > 0.97


def test_vae_reconstructs_the_users_digits_and_samples_by_seed(mnist_root, tmp_path, monkeypatch, capfd):
    """Eight test digits, drawn as dark ink on 56 x 56 paper. The VAE after one epoch (550 steps of batch 100, about
    10 s) scores each (-ELBO and the IW-NLL, lower on average), and beats the trivial model, the mean training
    image, on both: its reconstructions' squared error, and its IW-NLL against the mean image's Bernoulli NLL.
    Measured, seeds 0 / 1 / 2 (``--seed_everything``): error 0.75 / 0.74 / 0.62 of the mean image's, NLL 0.87 /
    0.87 / 0.82 of it. Bars: 0.85 and 0.93. Samples are the same for a seed and differ across seeds."""
    run = Runner("vae_mnist.yaml", tmp_path, monkeypatch, capfd, mnist_root)
    ckpt = run.fit("--trainer.max_epochs=1", "--trainer.limit_val_batches=1")
    digits, labels = mnist_test_digits(mnist_root, 8)
    names = write_paper_digits(tmp_path / "mine", digits)
    records, arrays, folder = run.predict(ckpt, "--data.init_args.predict_path=mine", "--model.init_args.iw_samples=64")
    assert [r["input"] for r in records] == names and [r["index"] for r in records] == list(range(8))
    assert all((folder / r["reconstruction"]).is_file() for r in records) and (folder / "reconstruction_grid.png").is_file()
    assert arrays["reconstruction"].shape == (8, 1, 28, 28) and arrays["code"].shape == (8, 50)
    elbo = torch.tensor([r["neg_elbo"] for r in records])
    iw = torch.tensor([r["iw_nll_k64"] for r in records])
    assert iw.mean() < elbo.mean(), (iw, elbo)
    x = digit_images(tmp_path / "mine", 28)[1].float() / 255
    from datamodules.mnist import load_mnist

    mean_image = load_mnist(str(mnist_root), True, download=False)[0].float().mean(0) / 255
    error = ((arrays["reconstruction"] - x) ** 2).flatten(1).sum(1)
    trivial = ((mean_image - x) ** 2).flatten(1).sum(1)
    assert error.mean() < 0.85 * trivial.mean(), (error, trivial)
    p = mean_image.clamp(1e-3, 1 - 1e-3).expand_as(x)
    trivial_nll = torch.nn.functional.binary_cross_entropy(p, x, reduction="none").flatten(1).sum(1)
    assert iw.mean() < 0.93 * trivial_nll.mean(), (iw, trivial_nll)

    def samples(seed):
        records, arrays, _ = run.predict(ckpt, "--data.init_args.predict_samples=6", f"--data.init_args.predict_seed={seed}")
        assert [r["input"] for r in records] == [f"sample {i} of seed {seed}" for i in range(6)]
        return arrays["sample"]

    first, again, other = samples(3), samples(3), samples(4)
    assert first.shape == (6, 1, 28, 28) and torch.equal(first, again)
    assert (first - other).abs().amax(dim=(1, 2, 3)).min() > 0.05


def test_an_autoencoder_predicts_the_test_set_as_dl4_test_scores_it(mnist_root, tmp_path, monkeypatch, capfd):
    """Without inputs of the user's, predict runs over the test set: its mean reconstruction error is `dl4 test`'s
    test/recon, every image once, with its label; an autoencoder has nothing to sample from (one line, status 2)."""
    run = Runner("ae_mnist.yaml", tmp_path, monkeypatch, capfd, mnist_root)
    ckpt = run.fit("--trainer.max_epochs=1", "--trainer.limit_train_batches=50", "--trainer.limit_val_batches=1")
    out = run.run("test", "--ckpt_path", ckpt)
    assert out.returncode == 0, out.stderr[-2000:]
    recon = float(re.search(r"test/recon\s+([0-9.]+)", out.stdout).group(1))
    records, arrays, folder = run.predict(ckpt)
    assert [r["index"] for r in records] == list(range(10000))
    assert [r["label"] for r in records[:5]] == mnist_test_digits(mnist_root, 5)[1].tolist()
    assert abs(sum(r["recon_error"] for r in records) / 10000 - recon) < 1e-3 * recon
    assert arrays["code"].shape == (10000, 32) and len(list((folder / "pictures" / "reconstruction").iterdir())) == 1000
    out = run.run("predict", "--ckpt_path", ckpt, "--data.init_args.predict_samples=4")
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith("dl4: error: data.predict_samples")


def test_gan_samples_by_seed_interpolate_to_the_next_sample_and_d_scores_images(mnist_root, tmp_path, monkeypatch,
                                                                                capfd):
    run = Runner("gan_mnist.yaml", tmp_path, monkeypatch, capfd, mnist_root)
    ckpt = run.fit("--trainer.max_epochs=1", "--trainer.limit_train_batches=20", "--trainer.limit_val_batches=0")
    records, arrays, folder = run.predict(ckpt, "--data.init_args.predict_samples=5", "--data.init_args.predict_seed=7")
    frames, samples = arrays["interpolation"], arrays["sample"]
    assert frames.shape == (5, 8, 1, 28, 28) and torch.equal(frames[:, 0], samples)
    torch.testing.assert_close(frames[:-1, -1], samples[1:])  # each strip ends where the next sample starts
    assert (folder / "sample_grid.png").is_file() and (folder / "interpolation_grid.png").is_file()
    _, again, _ = run.predict(ckpt, "--data.init_args.predict_samples=5", "--data.init_args.predict_seed=7")
    _, other, _ = run.predict(ckpt, "--data.init_args.predict_samples=5", "--data.init_args.predict_seed=8")
    assert torch.equal(again["sample"], samples) and not torch.allclose(other["sample"], samples)
    write_paper_digits(tmp_path / "mine", mnist_test_digits(mnist_root, 3)[0])
    records, _, _ = run.predict(ckpt, "--data.init_args.predict_path=mine")
    assert len(records) == 3 and all(0 < r["p_real"] < 1 for r in records)


STORY = """1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary?\tbathroom\t1
4 Daniel went back to the office.
5 Where is Daniel?\toffice\t4
6 Sandra journeyed to the garden.
7 Where is John?\thallway\t2
8 John travelled to the kitchen.
9 Where is John?\tkitchen\t8
1 Sandra went to the bedroom.
2 Mary went back to the garden.
3 Where is Sandra?\tbedroom\t1
4 Daniel moved to the hallway.
5 Where is Mary?\tgarden\t2
6 Sandra went to the kitchen.
7 Where is Daniel?\thallway\t4
8 Where is Sandra?\tkitchen\t6
9 Mary zoomed to the office.
10 Where is Mary?
"""


def test_memn2n_answers_a_story_typed_here(babi_root, tmp_path, monkeypatch, capfd):
    """Task 1 (1k), 5 epochs of linear start and 20 with the softmax (about 8 s; ``test_memn2n_learns_task_1``: under
    10% test error). Eight questions typed here, answers in six places: the story-blind answerer (always the most
    frequent answer) gets at most 2 right; the bar is 7 of 8. A question without an answer is answered and not
    scored; an unknown word ("zoomed") is named in its note; each hop's attention is a distribution over the memory
    (its sentences, oldest first, in the record)."""
    run = Runner("memn2n_babi.yaml", tmp_path, monkeypatch, capfd, babi_root)
    ckpt = run.fit("--trainer.max_epochs=25", "--model.init_args.linear_start_epochs=5")
    (tmp_path / "story.txt").write_text(STORY)
    records, arrays, _ = run.predict(ckpt, "--data.init_args.predict_path=story.txt")
    assert [r["input"] for r in records][:2] == ["line 3: where is mary?", "line 5: where is daniel?"]
    scored = [r for r in records if "answer" in r]
    assert len(scored) == 8 and sum(r["correct"] for r in scored) >= 7, records
    assert all(r["correct"] == (r["predicted"] == r["answer"]) for r in scored)
    last = records[-1]
    assert "correct" not in last and "zoomed" in last["note"] and last["story"][-1] == "mary to the office"
    # every hop's softmax spans the memory's slots (the empty ones too, as the authors' code has it)
    torch.testing.assert_close(arrays["attention"].sum(-1), torch.ones(len(records), 3))
    for r in records:
        assert len(r["attention"]) == 3 and all(len(hop) == len(r["story"]) and sum(hop) <= 1 + 1e-3
                                                for hop in r["attention"])
    assert "accuracy:" in run.stdout and "of the 8 inputs with an answer" in run.stdout
