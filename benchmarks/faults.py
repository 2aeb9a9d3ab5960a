"""What the fault callbacks cost on the hot path: training steps with and without DivergenceGuard,
PreemptionCheckpoint and RunState (dl4 adds all three to every run), side by side in one process.

    python benchmarks/faults.py [--batches 400] [--repeats 3]

The guard keeps each step's loss and judges the kept losses only at its checks (the logger's steps and a few
more); the other two do nothing per step but look at a flag. Prints a table and writes
benchmarks/results/faults_overhead.json.
"""

import argparse
import platform
import statistics

import torch

from common import QUIET, REPO, Timer, build_run, markdown_table, write_json
from callbacks.faults import DivergenceGuard, PreemptionCheckpoint, RunState

CONFIGS = ["ae_mnist.yaml", "ntm_copy.yaml"]  # the smallest steps: where a per-step cost shows most


def seconds_per_step(config: str, batches: int, guarded: bool) -> float:
    extra = ["--model.init_args.compile=false"] if config.startswith("ntm") else []
    cli = build_run(REPO / "configs" / config, [*QUIET, "--trainer.max_epochs=1", f"--trainer.limit_train_batches="
                                               f"{batches}", "--trainer.limit_val_batches=0", *extra])
    trainer = cli.trainer
    if not guarded:
        trainer.callbacks = [cb for cb in trainer.callbacks
                             if not isinstance(cb, (DivergenceGuard, PreemptionCheckpoint, RunState))]
    assert guarded == any(isinstance(cb, DivergenceGuard) for cb in trainer.callbacks)
    with Timer() as t:
        trainer.fit(cli.model, datamodule=cli.datamodule)
    return t.seconds / trainer.global_step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    args = parser.parse_args()
    rows, results = [], {}
    for config in args.configs:
        times = {True: [], False: []}
        for _ in range(args.repeats):  # alternated, so that drifts of the machine hit both alike
            for guarded in (False, True):
                times[guarded].append(seconds_per_step(config, args.batches, guarded))
        plain, guarded = statistics.median(times[False]), statistics.median(times[True])
        results[config] = {"ms_per_step_without": plain * 1e3, "ms_per_step_with": guarded * 1e3,
                           "overhead_percent": 100 * (guarded / plain - 1), "repeats": times}
        rows.append([config, f"{plain * 1e3:.3f}", f"{guarded * 1e3:.3f}", f"{100 * (guarded / plain - 1):+.1f}%"])
    print(markdown_table(["config", "ms/step without", "ms/step with the fault callbacks", "difference"], rows))
    results["machine"] = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__}
    write_json(REPO / "benchmarks" / "results" / "faults_overhead.json", results)


if __name__ == "__main__":
    main()
