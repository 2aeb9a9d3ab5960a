"""The NTM's numbers in docs/results/ntm.md: training speed by batch size, convergence, and generalisation.

    python benchmarks/ntm.py speed [--batch_sizes 1 8 32 128]
        training sequences per second (forward, backward, gradient clipping, Adam step) of the NTM at the paper's
        copy size (LSTM controller 100, memory 128 x 20, one read and one write head), eager and with its time
        step compiled, and of the 3 x 256 LSTM baseline; copy lengths drawn from 1-20 as in training; this
        machine's CPU (or --device cuda). Every batch size compiles anew (shapes are static).
    python benchmarks/ntm.py converge --config configs/ntm_copy.yaml [--max_epochs N] [-- extra dl4 arguments]
        runs `dl4 fit` on the config (CSV logs), then `dl4 test` on its best checkpoint; prints the sequences and
        seconds until the validation cost first fell below the threshold and until it stayed below it, and the
        test bits per sequence and bit errors at every test length.
"""

import argparse
import csv
import math
import tempfile
import time
from pathlib import Path

import torch

from common import Timer, build_run, report
from datamodules.algorithmic import copy_batch
from lightning_models.nn.ntm import NeuralTuringMachine, StackedLSTM


def speed(args):
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    def compiled_ntm():
        net = NeuralTuringMachine(9, 8)
        net.compile_step()
        return net

    nets = {"NTM (LSTM 100, 128 x 20, 1R 1W)": lambda: NeuralTuringMachine(9, 8),
            "NTM, compiled step (`compile: true`)": compiled_ntm,
            "LSTM baseline (3 x 256)": lambda: StackedLSTM(9, 8, 256, 3)}
    rows = []
    for name, make in nets.items():
        for batch_size in args.batch_sizes:
            torch.manual_seed(0)
            net = make().to(device)
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)
            g = torch.Generator().manual_seed(0)
            lengths = torch.randint(1, 21, (args.warmup + args.batches,), generator=g).tolist()
            batches = [tuple(t.to(device) for t in copy_batch(batch_size, n, 8, g)) for n in lengths]
            steps, begin = 0, time.perf_counter()
            for i, (x, y) in enumerate(batches):
                if i == args.warmup:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    start, steps = time.perf_counter(), 0
                    warmup_seconds = start - begin
                logits = net(x)[-y.shape[0]:]
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum") / batch_size
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 10)
                opt.step()
                steps += x.shape[0] if i >= args.warmup else 0
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            rows.append([name, batch_size, f"{args.batches * batch_size / seconds:.0f}",
                         f"{seconds / args.batches * 1000:.1f}", f"{seconds / steps * 1000:.2f}",
                         f"{warmup_seconds:.0f} s"])
            print(" | ".join(map(str, rows[-1])), flush=True)
    report("ntm_speed", ["model", "batch", "sequences/s", "ms per batch", "ms per time step",
                         f"first {args.warmup} batches (compilation)"], rows, {"device": str(device)})


def read_metrics(run_dir: Path) -> list[dict]:
    (path,) = run_dir.rglob("metrics.csv")
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def converge(args, extra):
    work = Path(tempfile.mkdtemp(prefix="dl4_ntm_"))
    common = ["--config", str(args.config), "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={work}",
              "--trainer.enable_progress_bar=false", *extra]
    if args.max_epochs:
        common.append(f"--trainer.max_epochs={args.max_epochs}")
    run = build_run(args.config, common[2:])
    with Timer() as timer:
        run.trainer.fit(run.model, datamodule=run.datamodule)
    wall = timer.seconds
    rows = [r for r in read_metrics(work) if "val/bits_per_seq" in r]
    first = next((r for r in rows if r["val/bits_per_seq"] < args.threshold), None)
    stable = None
    for i, r in enumerate(rows):
        if all(later["val/bits_per_seq"] < args.threshold for later in rows[i:]):
            stable = r
            break
    print(f"\n{args.config}: {len(rows)} validations, `dl4 fit` took {wall:.0f} s in all (start-up included)")
    for name, r in (("first below", first), ("below from then on", stable)):
        if r is None:
            print(f"  {name} {args.threshold} bits per sequence: never")
        else:
            print(f"  {name} {args.threshold} bits per sequence: after {r['val/sequences']:.0f} sequences, "
                  f"{r['val/train_seconds']:.0f} s of training (cost {r['val/bits_per_seq']:.3f})")
    print(f"  final validation cost: {rows[-1]['val/bits_per_seq']:.3f} bits per sequence")
    # the checkpoint with the lowest validation cost (ModelCheckpoint in the configs), else the last one
    best = list(work.rglob("best-*.ckpt"))
    ckpt = best[0] if best else next(work.rglob("last.ckpt"))
    print(f"  testing {ckpt.name}")
    (results,) = run.trainer.test(run.model, datamodule=run.datamodule, ckpt_path=str(ckpt), verbose=False)
    lengths = sorted({int(k.rsplit("len", 1)[1]) for k in results if "_len" in k})
    print()
    report(f"ntm_converge_{args.config.stem}", ["length", "bits per sequence", "bit errors per sequence"],
           [[n, f"{results.get(f'test/bits_per_seq_len{n}', math.nan):.2f}",
             f"{results.get(f'test/bit_errors_per_seq_len{n}', math.nan):.2f}"] for n in lengths],
           {"validations": len(rows), "fit_seconds": round(wall),
            "first_below": first and {k: first[k] for k in ("val/sequences", "val/train_seconds")},
            "stable_below": stable and {k: stable[k] for k in ("val/sequences", "val/train_seconds")},
            "threshold_bits": args.threshold})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p = sub.add_parser("converge")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--max_epochs", type=int)
    p.add_argument("--threshold", type=float, default=0.1)
    args, extra = parser.parse_known_args()
    if args.command == "speed":
        if extra:
            parser.error(f"unknown arguments {extra}")
        speed(args)
    else:
        if not args.config.is_file():
            parser.error(f"--config {args.config}: no such file")
        converge(args, [e for e in extra if e != "--"])


if __name__ == "__main__":
    main()
