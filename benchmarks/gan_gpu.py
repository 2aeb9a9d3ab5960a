"""The GAN paper's Parzen number from jobs of a fixed wall time (a GPU lent for minutes, a cluster's time limit):
`configs/gan_mnist.yaml` trained for as many epochs as fit, resumed exactly by the next job, then the paper's
full Parzen protocol on the best checkpoint.

    python benchmarks/gan_gpu.py --out runs/gan_gpu [--minutes 8.5] [--max_epochs 1000] [--every 5]
                                 [--export DIR] [-- extra `dl4 fit` arguments]

Each command (run it again to continue; the same --out and extra arguments):

1. writes OUT/config.yaml: the config with a CSV logger in OUT, its best-epoch checkpoint (by the small Parzen
   estimate, `best-epoch=N.ckpt`) in OUT/checkpoints, and a `TimeBudget` in place of its last-epoch checkpoint:
   `last.ckpt` every --every epochs and when the budget ends. The budget is --minutes less the start-up so far
   and --reserve seconds (dl4's start-up, the evaluation);
2. runs `dl4 fit --config OUT/config.yaml`, with `--ckpt_path OUT/checkpoints/last.ckpt` when an earlier command
   left one, so it continues where that one stopped: the same random streams, data order, optimiser and schedule
   state as one uninterrupted run;
3. runs the paper's protocol (as `benchmarks/gan_parzen.py`) on the best checkpoint and on the last: 10,000
   samples of G (noise seed 1), sigma chosen on train[50000:51000], the mean log-likelihood of the 10,000 test
   images +- its standard error, in nats. The samples are saved next to the checkpoint as float16
   (`<checkpoint>.samples.npy`, shape (10000, 784), pixels in [0, 1]) and the score is that of exactly the saved
   values, so that an independent evaluator can check it;
4. prints the table rows and writes OUT/gan_gpu.json: the rows, every command's epochs, seconds and device, and
   the small estimate of every epoch. --export DIR copies the small files (JSON, config, metrics, samples, the
   best generator's weights) into DIR under plain names.
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import yaml

from common import REPO, Timer, default_data_dir, markdown_table, write_json
from gan_parzen import gan_samples

from datamodules.mnist import load_mnist
from lightning_models import GAN
from lightning_models.nn.parzen import parzen_evaluate

START = time.monotonic()
COLUMNS = ["checkpoint", "epochs", "sigma", "Parzen log-likelihood (nats)", "small estimate at that epoch"]


def job_config(config: Path, out: Path, seconds: float, every: int, max_epochs: int) -> dict:
    """The config as this job trains it (see the module's docstring, step 1)."""
    cfg = yaml.safe_load(config.read_text())
    trainer = cfg.setdefault("trainer", {})
    trainer["max_epochs"] = max_epochs
    trainer["logger"] = {"class_path": "CSVLogger", "init_args": {"save_dir": str(out), "name": "csv", "version": 0}}
    kept = []
    for spec in trainer.get("callbacks") or []:
        args = spec.get("init_args") or {} if isinstance(spec, dict) else {}
        name = (spec["class_path"] if isinstance(spec, dict) else spec).rsplit(".", 1)[-1]
        if name == "ModelCheckpoint" and args.get("save_last") and not args.get("monitor"):
            continue  # the last-epoch checkpoint: TimeBudget's job
        if name == "ModelCheckpoint":
            spec["init_args"] = {**args, "dirpath": str(out / "checkpoints")}
        kept.append(spec)
    kept.append({"class_path": "TimeBudget",
                 "init_args": {"seconds": round(seconds, 1), "every_n_epochs": every, "dirpath": str(out / "checkpoints")}})
    trainer["callbacks"] = kept
    return cfg


def small_estimates(out: Path) -> dict[int, float]:
    """Epoch (1-based) -> val/parzen_ll, from every CSV file the jobs wrote (a resumed job renames the last's)."""
    curve = {}
    for path in sorted((out / "csv" / "version_0").glob("metrics*.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("val/parzen_ll"):
                    curve[int(row["epoch"]) + 1] = float(row["val/parzen_ll"])
    return dict(sorted(curve.items()))


def epochs_done(ckpt: Path) -> int:
    """Completed epochs of a checkpoint written at an epoch's end (``epoch`` is the 0-based epoch then ending)."""
    return torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] + 1


def evaluate(path: Path, valid: torch.Tensor, test: torch.Tensor, device: torch.device, n: int) -> dict:
    """The full protocol on one checkpoint; saves its samples as float16 and scores exactly those values."""
    model = GAN.load_from_checkpoint(path, map_location=device)
    samples = gan_samples(model, n).flatten(1).half().cpu()  # (noise on the CPU, seed 1: the same on any device)
    np.save(path.with_suffix(".samples.npy"), samples.numpy())
    with Timer() as timer:
        r = parzen_evaluate(samples.float().view(-1, 1, 28, 28).to(device), valid, test)
    print(f"{path.name}: {r['mean']:.1f} +- {r['stderr']:.1f} nats (sigma {r['sigma']:.3f}, {timer.seconds:.1f} s)",
          flush=True)
    return {"path": str(path), "sigma": r["sigma"], "mean": r["mean"], "stderr": r["stderr"],
            "samples": str(path.with_suffix(".samples.npy")), "epochs": epochs_done(path)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the run's folder; a second command continues it")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "gan_mnist.yaml")
    parser.add_argument("--minutes", type=float, default=8.5, help="this command's wall time, evaluation included")
    parser.add_argument("--reserve", type=float, default=60.0,
                        help="seconds of --minutes kept for dl4's start-up and the evaluation")
    parser.add_argument("--max_epochs", type=int, default=1000, help="the run's end, across all its commands")
    parser.add_argument("--every", type=int, default=5, help="write last.ckpt every that many epochs")
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--export", type=Path, help="copy the small result files into this folder")
    parser.add_argument("--data_dir", default=default_data_dir())
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    out = args.out.resolve()
    last = out / "checkpoints" / "last.ckpt"
    seconds = args.minutes * 60 - (time.monotonic() - START) - args.reserve
    if seconds <= 0:
        parser.error(f"--minutes {args.minutes} leaves no training time after --reserve {args.reserve} s")
    jobs_file = out / "jobs.json"
    jobs = json.loads(jobs_file.read_text()) if jobs_file.is_file() else []
    before = epochs_done(last) if last.is_file() else 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"

    if before < args.max_epochs:
        out.mkdir(parents=True, exist_ok=True)
        config = out / "config.yaml"
        config.write_text(yaml.safe_dump(job_config(args.config, out, seconds, args.every, args.max_epochs),
                                         sort_keys=False))
        command = ["dl4", "fit", "--config", str(config), *(["--ckpt_path", str(last)] if last.is_file() else []),
                   *extra]
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        print(f"epochs done: {before}; training for up to {seconds:.0f} s:", " ".join(command), flush=True)
        with Timer() as timer:
            status = subprocess.run(command, cwd=REPO).returncode
        if status != 0:
            sys.exit(f"gan_gpu: dl4 fit exited with status {status}; nothing is evaluated (the checkpoints it "
                     f"wrote are in {out / 'checkpoints'})")
        jobs.append({"started": started, "device": device_name,
                     "epochs": [before, epochs_done(last)], "fit_seconds": round(timer.seconds, 1),
                     "extra_arguments": extra})
        write_json(jobs_file, jobs)
    else:
        print(f"the run is complete ({before} epochs): evaluating only", flush=True)

    best = sorted((out / "checkpoints").glob("best-epoch=*.ckpt"))
    for stale in (out / "checkpoints").glob("*.samples.npy"):  # of a best checkpoint since replaced
        if not stale.with_name(stale.name.removesuffix(".samples.npy") + ".ckpt").is_file():
            stale.unlink()
    if len(best) != 1:
        sys.exit(f"gan_gpu: expected one best-epoch=N.ckpt in {out / 'checkpoints'}, found {len(best)}")
    torch.set_flush_denormal(True)
    x_train, _ = load_mnist(args.data_dir, True, download=False)
    x_test, _ = load_mnist(args.data_dir, False, download=False)
    as_float = lambda x: x.float().div(255).unsqueeze(1).to(device)  # noqa: E731
    valid, test = as_float(x_train[50000:51000]), as_float(x_test)
    curve = small_estimates(out)
    results = [evaluate(p, valid, test, device, args.samples) for p in (best[0], last)]
    fit_seconds = sum(job["fit_seconds"] for job in jobs)
    rows = [[Path(r["path"]).name, r["epochs"], round(r["sigma"], 3), f"{r['mean']:.1f} +- {r['stderr']:.1f}",
             f"{curve[r['epochs']]:.1f}" if r["epochs"] in curve else ""] for r in results]
    print(f"\n{epochs_done(last)} epochs in {len(jobs)} command(s), {fit_seconds:.0f} s of `dl4 fit` on "
          f"{', '.join(sorted({job['device'] for job in jobs}))}\n{markdown_table(COLUMNS, rows)}", flush=True)
    torch.save(GAN.load_from_checkpoint(best[0], map_location="cpu").generator.state_dict(), out / "generator_best.pt")
    summary = write_json(out / "gan_gpu.json", {
        "meta": {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                 "torch": torch.__version__, "config": str(args.config)},
        "columns": COLUMNS, "rows": rows, "results": results, "jobs": jobs, "small_estimate_by_epoch": curve,
        "seconds_this_command": round(time.monotonic() - START, 1)})
    print(f"(written to {summary}; this command took {time.monotonic() - START:.0f} s)")
    if args.export:
        args.export.mkdir(parents=True, exist_ok=True)
        files = {summary: "gan_gpu.json", out / "jobs.json": "jobs.json", out / "config.yaml": "config.yaml",
                 out / "generator_best.pt": "generator_best.pt",
                 Path(results[0]["samples"]): "samples_best.npy", Path(results[1]["samples"]): "samples_last.npy"}
        for source, name in files.items():
            shutil.copyfile(source, args.export / name)


if __name__ == "__main__":
    main()
