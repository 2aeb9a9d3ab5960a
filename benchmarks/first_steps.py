"""The first training steps of every config, recorded and compared: proof that a refactoring changed no numbers.

For every ``configs/*.yaml`` (or the ones named), the run is built through the real CLI exactly as ``dl4 fit``
builds it (its seed, model, data, callbacks and trainer), with no logger and ``log_every_n_steps: 1``, and trained
for ``--steps`` steps. After every step it keeps what the model logged (``train/*``) and a fingerprint of all
parameters (the sum and the sum of absolute values, in float64), then writes them as JSON.

    python benchmarks/first_steps.py --out benchmarks/results/first_steps.json          # record
    python benchmarks/first_steps.py --check benchmarks/results/first_steps.json        # compare, exit 1 if any differs
    python benchmarks/first_steps.py --steps 40 --epoch_batches 3 --out benchmarks/results/first_epochs.json

``--check`` compares bit for bit and prints the largest relative difference where a config differs. The numbers are
those of one machine (a CPU's kernels, a torch build): a record made elsewhere differs in its last digits.
``memn2n_babi_joint.yaml`` differs between two runs of the same code (relative 1e-7 by step 20): some backward
kernel of its 20-task batches sums in a thread-dependent order on this CPU. A GAN step is two optimizer steps, so
its ``--steps`` are ``--steps / 2`` batches.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from common import build_run, default_data_dir, write_json  # noqa: E402


class FirstSteps(L.Callback):
    """After every training step: the ``train/*`` values logged on it and a fingerprint of the parameters."""

    def __init__(self):
        self.steps: list[dict] = []

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        params = [p.detach().double() for p in pl_module.parameters()]
        logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")
                  and not k.endswith("_epoch")}
        self.steps.append({"step": trainer.global_step, "logged": logged,
                           "param_sum": float(sum(p.sum() for p in params)),
                           "param_abs_sum": float(sum(p.abs().sum() for p in params))})


def record(config: Path, steps: int, epoch_batches: int | None = None) -> list[dict]:
    probe = FirstSteps()
    epochs = ([f"--trainer.limit_train_batches={epoch_batches}", "--trainer.limit_val_batches=2"]
              if epoch_batches else [])
    with tempfile.TemporaryDirectory() as root:
        cli = build_run(config, ["--trainer.logger=false", f"--trainer.max_steps={steps}",
                                 "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
                                 "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={root}",
                                 *epochs])
        cli.trainer.callbacks.append(probe)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return probe.steps


def largest_difference(a: list[dict], b: list[dict]) -> float:
    """The largest relative difference of any number of two records (inf where their steps or keys differ)."""
    if len(a) != len(b):
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        pairs = [(x["param_sum"], y["param_sum"]), (x["param_abs_sum"], y["param_abs_sum"])]
        if x["logged"].keys() != y["logged"].keys():
            return float("inf")
        pairs += [(x["logged"][k], y["logged"][k]) for k in x["logged"]]
        worst = max([worst] + [abs(u - v) / max(abs(u), abs(v), 1e-12) for u, v in pairs])
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", help="config files (default: every configs/*.yaml)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--epoch_batches", type=int, help="epochs of this many batches (and 2 validation batches), "
                        "so that the steps cross epoch ends: schedules, momentum ramps, validation")
    parser.add_argument("--out", type=Path, help="write the record here")
    parser.add_argument("--check", type=Path, help="compare with this record; exit 1 where a number differs")
    args = parser.parse_args()
    default_data_dir()
    configs = [Path(c) for c in args.configs] or sorted((REPO / "configs").glob("*.yaml"))
    expected = json.loads(args.check.read_text()) if args.check else {}
    result, differ = {}, []
    for config in configs:
        result[config.name] = steps = record(config, args.steps, args.epoch_batches)
        status = ""
        if args.check:
            same = expected.get(config.name) == steps
            worst = largest_difference(expected.get(config.name, []), steps)
            status = "same" if same else f"DIFFERS (largest relative difference {worst:.1e})"
            if not same:
                differ.append(config.name)
        last = steps[-1] if steps else {}
        print(f"{config.name:28s} {len(steps):3d} steps  last {last.get('logged')}  params {last.get('param_sum')} "
              f"{status}", flush=True)
    if args.out:
        write_json(args.out, result)
    if differ:
        print(f"differ from {args.check}: {', '.join(differ)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
