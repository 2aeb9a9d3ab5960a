"""The MemN2N numbers in docs/results/memn2n.md: speed per epoch, the paper's bAbI protocol (best of N seeds).

    python benchmarks/memn2n.py speed [--task 1] [--epochs 30]
        seconds per training epoch (and per epoch with its validation) of configs/memn2n_babi.yaml on one task.
    python benchmarks/memn2n.py protocol --out results/ [--seeds 10] [--tasks 1 2 ...] [--jobs 2] [--joint]
        every seed is a separate process (`run` below), `--jobs` at a time; then `report`. Single-task: one model
        per task and seed (configs/memn2n_babi.yaml); --joint: one model per seed on all tasks
        (configs/memn2n_babi_joint.yaml). Extra arguments go to the CLI (e.g. --data.init_args.variant=en-10k).
    python benchmarks/memn2n.py run --seed S --out results/ [--tasks ...] [--joint] [-- CLI arguments]
        one seed: trains each task (or the joint model) and tests the final model; writes results/seed<S>.json.
        Seeds can run on different machines; copy the JSON files into one folder for `report`.
    python benchmarks/memn2n.py report --out results/
        the per-task test error (%) of the seed with the lowest validation error, of the seed with the lowest
        training error (the paper keeps the best of 10 runs by training error), and the mean over seeds, next to
        the paper's Table 1 (PE LS RN).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import QUIET, REPO, build_run, report as write_table

ROOT = REPO

# Sukhbaatar et al. 2015, Table 1, test error (%) on bAbI 1k, PE LS RN with 3 hops: single-task and joint
PAPER = {"single": [0.0, 8.3, 40.3, 2.8, 13.1, 7.6, 17.3, 10.0, 13.2, 15.1, 0.9, 0.2, 0.4, 1.7, 0.0, 1.3, 51.0,
                    11.1, 82.8, 0.0],
         "joint": [0.0, 11.4, 21.9, 13.4, 14.4, 2.8, 18.3, 9.3, 1.9, 6.5, 0.3, 0.1, 0.2, 6.9, 0.0, 2.7, 40.4,
                   9.4, 88.0, 0.0]}
PAPER_MEAN = {"single": 13.9, "joint": 12.4}


def speed(args, extra):
    import lightning as L

    class EpochTimes(L.Callback):
        def __init__(self):
            self.train, self.full, self.start = [], [], None

        def on_train_epoch_start(self, trainer, pl_module):
            now = time.perf_counter()
            if self.start is not None:
                self.full.append(now - self.start)
            self.start = now

        def on_validation_start(self, trainer, pl_module):  # the epoch's training batches are done
            if not trainer.sanity_checking:
                self.train.append(time.perf_counter() - self.start)

    c = build_run(ROOT / "configs" / "memn2n_babi.yaml", [*QUIET, f"--data.init_args.tasks={args.task}",
                                                           f"--trainer.max_epochs={args.epochs}", *extra])
    timer = EpochTimes()
    c.trainer.callbacks.append(timer)
    c.trainer.fit(c.model, c.datamodule)
    (result,) = c.trainer.test(c.model, c.datamodule, verbose=False)
    skip = 3  # the first epochs warm up
    train = sorted(timer.train[skip:])[len(timer.train[skip:]) // 2]
    full = sorted(timer.full[skip:])[len(timer.full[skip:]) // 2]
    steps = c.trainer.num_training_batches
    print(f"task {args.task} (1k), {args.epochs} epochs of {steps} batches:")
    write_table("memn2n_speed", ["task", "batches per epoch", "median training epoch (s)", "ms per batch",
                                 "median epoch with validation (s)", "test error"],
                [[args.task, steps, f"{train:.3f}", f"{train / steps * 1000:.2f}", f"{full:.3f}",
                  f"{result[f'test/error_task{args.task}']:.1f}%"]])


def run(args, extra):
    config = ROOT / "configs" / ("memn2n_babi_joint.yaml" if args.joint else "memn2n_babi.yaml")
    groups = [args.tasks] if args.joint else [[t] for t in args.tasks]
    results = []
    for tasks in groups:
        start = time.perf_counter()
        c = build_run(config, [*QUIET, f"--seed_everything={args.seed}", f"--data.init_args.tasks={json.dumps(tasks)}",
                               f"--data.init_args.seed={args.seed}", *extra])
        c.trainer.fit(c.model, c.datamodule)
        fit = c.trainer.callback_metrics
        val, train = float(fit["val/error"]), float(fit["train/error"])
        (test,) = c.trainer.test(c.model, c.datamodule, verbose=False)
        errors = {str(t): test[f"test/error_task{t}"] for t in tasks}
        results.append({"tasks": tasks, "seed": args.seed, "val_error": val, "train_error": train,
                        "test_errors": errors, "seconds": time.perf_counter() - start})
        print(f"seed {args.seed} tasks {tasks}: val {val:.1f}% test {sum(errors.values()) / len(errors):.1f}% "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)  # after every task: a stopped run keeps what it finished
        (args.out / f"seed{args.seed}.json").write_text(json.dumps(results, indent=1))


def protocol(args, extra):
    start, pending, running = time.perf_counter(), list(range(args.seeds)), []
    while pending or running:
        while pending and len(running) < args.jobs:
            seed = pending.pop(0)
            command = [sys.executable, __file__, "run", "--seed", str(seed), "--out", str(args.out), "--tasks",
                       *map(str, args.tasks), *(["--joint"] if args.joint else []), *extra]
            running.append(subprocess.Popen(command))
        time.sleep(1)
        for p in [p for p in running if p.poll() is not None]:
            running.remove(p)
            if p.returncode:
                sys.exit(f"a run failed: {' '.join(p.args)}")
    print(f"\n{args.seeds} seeds, {args.jobs} at a time: {time.perf_counter() - start:.0f} s wall")
    report(args)


def report(args):
    runs = [r for path in sorted(args.out.glob("seed*.json")) for r in json.loads(path.read_text())]
    joint = any(len(r["tasks"]) > 1 for r in runs)
    paper = PAPER["joint" if joint else "single"]
    by_task: dict[int, list[dict]] = {}
    for r in runs:
        for t in r["tasks"]:
            by_task.setdefault(t, []).append(r)
    seeds = sorted({r["seed"] for r in runs})
    n = len(seeds)
    header = ["task", f"paper (PE LS RN{', joint' if joint else ''})", f"dl4, best of {n} by validation error",
              f"dl4, best of {n} by training error (the paper's rule)", f"dl4, mean of {n}"]
    columns, rows = {"val": [], "train": [], "mean": []}, []
    for t in sorted(by_task):
        candidates = runs if joint else by_task[t]  # a joint model is chosen as a whole
        for rule in ("val", "train"):
            best = min(candidates, key=lambda r: r[f"{rule}_error"])
            columns[rule].append(best["test_errors"][str(t)])
        columns["mean"].append(sum(r["test_errors"][str(t)] for r in by_task[t]) / len(by_task[t]))
        rows.append([t, f"{paper[t - 1]:.1f}", *(f"{c[-1]:.1f}" for c in columns.values())])
    tasks = sorted(by_task)
    paper_mean = sum(paper[t - 1] for t in tasks) / len(tasks)
    rows.append(["**mean**", f"{paper_mean:.1f}", *(f"**{sum(c) / len(c):.1f}**" for c in columns.values())])
    rows.append(["failed (> 5%)", sum(paper[t - 1] > 5 for t in tasks),
                 *(sum(e > 5 for e in c) for c in columns.values())])
    seconds = sum(r["seconds"] for r in runs)
    write_table("memn2n_joint" if joint else "memn2n_single", header, rows,
                {"trainings": len(runs), "seconds_in_all": round(seconds)}, out=args.out / "table.json")
    print(f"\n{len(runs)} trainings, {seconds:.0f} s of training and testing in all (summed over processes)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--task", type=int, default=1)
    p.add_argument("--epochs", type=int, default=30)
    for name in ("protocol", "run", "report"):
        p = sub.add_parser(name)
        p.add_argument("--out", type=Path, required=True)
        if name != "report":
            p.add_argument("--tasks", type=int, nargs="+", default=list(range(1, 21)))
            p.add_argument("--joint", action="store_true")
        if name == "protocol":
            p.add_argument("--seeds", type=int, default=10)
            p.add_argument("--jobs", type=int, default=2)
        if name == "run":
            p.add_argument("--seed", type=int, required=True)
    args, extra = parser.parse_known_args()
    extra = [e for e in extra if e != "--"]
    if args.command == "report":
        report(args)
    else:
        {"speed": speed, "run": run, "protocol": protocol}[args.command](args, extra)


if __name__ == "__main__":
    main()
