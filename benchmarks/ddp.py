"""One process against two (DDP, gloo on the CPU here), one family per row: wall time per epoch, the validation
metric after the same training budget, and the validation of the same checkpoint on one and on two processes.

    python benchmarks/ddp.py                       # every family, 2 epochs of 40 steps (about 15 min on 2 cores)
    python benchmarks/ddp.py --only stn --steps 20

Both trainings see the same number of examples per step: one process takes the config's batch size B, each of
the two processes B / 2 (the global batch is B, the gradients are averaged). Their numbers after training are not
the same, and the table says by how much: the two processes' sampler (DistributedSampler) orders the examples in
another permutation, each process draws its own dropout, corruption and generated sequences, and each normalises
its batch over its own B / 2 examples. The validation of one checkpoint is the deterministic part: the same weights,
the same validation examples, each seen once, the metrics reduced across processes: it must agree to float
rounding (sums taken in another order).
"""

import argparse
import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import REPO, default_data_dir, report  # noqa: E402

CAPTIONS = ["--data.init_args.train_size=6000", "--data.init_args.val_size=501", "--data.init_args.test_size=101",
            "--data.init_args.eval_batch_size=50"]
FAMILIES = {  # family: config, metric, extra flags
    "autoencoders": ("dae_mnist.yaml", "val/recon", []),
    "gan": ("dcgan_mnist.yaml", "val/parzen_ll", []),
    "ntm": ("ntm_copy.yaml", "val/bits_per_seq", []),
    "memn2n": ("memn2n_babi.yaml", "val/error", []),
    "stn": ("st_cnn_rts_mnist.yaml", "val/error", []),
    "vse": ("vse_mnist_captions.yaml", "val/rsum", CAPTIONS),
}


class EpochClock(L.Callback):
    """Prints each training epoch's wall time (without its validation) from global rank zero."""

    def on_train_epoch_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            print(f"DL4_EPOCH_SECONDS {time.perf_counter() - self.start:.3f}", flush=True)


def dl4(args: list[str], cwd: Path, devices: int) -> str:
    ddp = [f"--trainer.devices={devices}", "--trainer.accelerator=cpu",
           *(["--trainer.strategy=ddp"] if devices > 1 else [])]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(["dl4", *args, *ddp], cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"dl4 {' '.join(args + ddp)} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def last_val(run_dir: Path, metric: str) -> float:
    (path,) = run_dir.rglob("metrics.csv")
    rows = [r for r in csv.DictReader(open(path)) if r.get(metric)]
    return float(rows[-1][metric])


def family_row(name: str, steps: int, epochs: int, work: Path) -> list:
    config, metric, extra = FAMILIES[name]
    B = yaml.safe_load((REPO / "configs" / config).read_text())["data"]["init_args"].get("batch_size", 32)
    if name == "vse":  # MNIST captions are generated on first use, into a folder of the benchmark's
        extra = [*extra, f"--data.init_args.root={work / 'mnist_captions'}"]
    common = ["--config", str(REPO / "configs" / config), *extra]
    base = [*common, "--trainer.logger=CSVLogger",
            "--trainer.enable_progress_bar=false", f"--trainer.max_epochs={epochs}",
            f"--trainer.limit_train_batches={steps}", "--trainer.limit_val_batches=1.0",
            "--trainer.callbacks=[{class_path: benchmarks.ddp.EpochClock}, {class_path: ModelCheckpoint, "
            "init_args: {save_last: true}}]"]
    seconds, trained, ckpts = {}, {}, {}
    for devices in (1, 2):
        folder = work / name / f"fit{devices}"
        out = dl4(["fit", *base, f"--trainer.logger.save_dir={folder}", f"--data.init_args.batch_size={B // devices}"],
                  REPO, devices)
        epochs_s = [float(s) for s in re.findall(r"DL4_EPOCH_SECONDS ([\d.]+)", out)]
        seconds[devices] = epochs_s[-1]  # the last epoch: no compilation or first-touch costs in it
        trained[devices] = last_val(folder, metric)
        ckpts[devices] = next(folder.rglob("last.ckpt"))
    validated = {}
    for devices in (1, 2):
        folder = work / name / f"validate{devices}"
        dl4(["validate", *common, "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={folder}",
             "--trainer.enable_progress_bar=false", "--ckpt_path", str(ckpts[1])], REPO, devices)
        validated[devices] = last_val(folder, metric)
    gap = abs(validated[2] - validated[1]) / max(abs(validated[1]), 1e-12)
    return [name, f"`{config}`", f"`{metric}`", B, f"{seconds[1]:.1f}", f"{seconds[2]:.1f}",
            f"{trained[1]:.4g}", f"{trained[2]:.4g}", f"{validated[1]:.6g}", f"{validated[2]:.6g}", f"{gap:.1e}"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(FAMILIES), default=sorted(FAMILIES))
    parser.add_argument("--steps", type=int, default=40, help="training steps per epoch (global batches)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "ddp_benchmark")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    default_data_dir()
    rows = [family_row(name, args.steps, args.epochs, args.work) for name in args.only]
    columns = ["family", "config", "metric", "global batch", "s / epoch, 1 process", "s / epoch, 2 processes",
               "after training, 1 process", "after training, 2 processes", "validate the checkpoint, 1 process",
               "the same, 2 processes", "relative difference"]
    report("ddp", columns, rows, {"steps_per_epoch": args.steps, "epochs": args.epochs}, args.out)


if __name__ == "__main__":
    main()
