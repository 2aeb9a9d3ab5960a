"""How far every config's normal first epochs stay from DivergenceGuard's thresholds (callbacks/faults.py).

For every ``configs/*.yaml`` (or the ones named), the run is built as ``dl4 fit`` builds it and trained for
``--steps`` steps in epochs of ``--epoch_batches`` batches; after every step it keeps the training loss's growth,
|loss| / max(|first loss|, 1), and the weights', max |w| / max(max |w| at the start, 1), the two quantities the
guard compares with ``loss_growth`` (1e6) and ``weight_growth`` (1e4). Writes the largest of each per config.

    python benchmarks/divergence.py --steps 100 --epoch_batches 20 --out benchmarks/results/divergence_margins.json
"""

import argparse
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from common import build_run, default_data_dir, write_json  # noqa: E402

NEEDS_MORE = {"vse_coco.yaml": "full COCO", "vse_mnist_captions_decoder.yaml": "a trained embedding's checkpoint"}


class Growth(L.Callback):
    def on_train_start(self, trainer, pl_module):
        from callbacks.faults import largest_weight

        self.weight_ref, self.loss_ref = max(largest_weight(pl_module), 1.0), None
        self.loss_growth = self.weight_growth = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        from callbacks.faults import largest_weight

        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if torch.is_tensor(loss):
            value = float(loss.detach().abs().max())
            self.loss_ref = self.loss_ref or max(value, 1.0)
            self.loss_growth = max(self.loss_growth, value / self.loss_ref)
        self.weight_growth = max(self.weight_growth, largest_weight(pl_module) / self.weight_ref)


def measure(config: Path, steps: int, epoch_batches: int) -> dict:
    probe = Growth()
    with tempfile.TemporaryDirectory() as root:
        cli = build_run(config, ["--trainer.logger=false", f"--trainer.max_steps={steps}",
                                 "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                                 f"--trainer.default_root_dir={root}", f"--trainer.limit_train_batches={epoch_batches}",
                                 "--trainer.limit_val_batches=2"])
        cli.trainer.callbacks.append(probe)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return {"steps": cli.trainer.global_step, "loss_growth": probe.loss_growth, "weight_growth": probe.weight_growth}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--epoch_batches", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    default_data_dir()
    configs = [Path(c) for c in args.configs] or [p for p in sorted((REPO / "configs").glob("*.yaml"))
                                                  if p.name not in NEEDS_MORE]
    result = {}
    for config in configs:
        result[config.name] = row = measure(config, args.steps, args.epoch_batches)
        print(f"{config.name:28s} {row['steps']:4d} steps  loss growth {row['loss_growth']:9.3g}  "
              f"weight growth {row['weight_growth']:9.3g}", flush=True)
    print(f"largest: loss {max(r['loss_growth'] for r in result.values()):.3g} (guard: 1e6), weights "
          f"{max(r['weight_growth'] for r in result.values()):.3g} (guard: 1e4)")
    if args.out:
        write_json(args.out, {"command": " ".join(sys.argv), "steps": args.steps, "epoch_batches": args.epoch_batches,
                              "configs": result})


if __name__ == "__main__":
    main()
