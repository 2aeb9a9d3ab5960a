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
    python benchmarks/ntm.py seeds --out DIR [--config configs/ntm_copy.yaml] [--seeds 0 1 2 3 4]
                                   [--settings 1/highest/compiled 2/highest/eager ...] [--cores 2] [-- dl4 arguments]
        the multi-seed protocol: every seed (the initialisation's and the data's, --seed_everything and
        data.init_args.seed) in every floating-point setting (threads / float32_matmul_precision / compiled or
        eager step), each its own process (`seed` below), as many at a time as their threads fit in --cores; runs
        already in DIR are kept, so a stopped protocol resumes, and with a larger -- --trainer.max_epochs=N
        they continue to N epochs. Then `seeds-report`.
    python benchmarks/ntm.py seed --out DIR --seed S --setting 1/highest/compiled [-- dl4 arguments]
        one run: `dl4 fit` (the config's weight averaging kept, its checkpoints and pictures dropped) with a
        probe of every epoch (validation cost, learning rate, gradient norms before clipping per parameter group,
        the weightings' sharpness), then `dl4 test` on the final weights ->
        DIR/<setting>_seed<S>.json, the final weights as DIR/<setting>_seed<S>.pt and, every epoch, a resumable
        .ckpt (neither committed): a stopped run, or a finished one given a larger --trainer.max_epochs,
        continues from it.
    python benchmarks/ntm.py seeds-report --out DIR
        per run: the sequences until the validation cost first fell below --threshold, until it stayed below it to
        the end, the worst cost after first falling below, whether the last quarter of training stayed below, and
        the test cost at lengths 50, 80, 120; per setting the median and the worst seed. The table's JSON also
        holds the recipe the runs trained with, read from their checkpoints (the model's and the data's
        hyperparameters but the seed and the compiled step): tests/test_lightning_models/test_ntm.py checks that
        the committed config still is that recipe.
    python benchmarks/ntm.py failures --out DIR
        where each run's final weights (DIR/*.pt) still err: its validation cost split between the sequences that
        hold an all-zero vector (the output phase's input) and the others, with the number of sequences that cost
        more than 1 bit in each (issue 35).
"""

import argparse
import csv
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import yaml

from common import QUIET, Timer, build_run, report, write_json
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


# --- the multi-seed protocol (issue 18): every seed in every floating-point setting, each its own process ---

SETTINGS = ("1/highest/compiled", "2/highest/compiled", "1/high/compiled", "1/highest/eager")


def parse_setting(text: str) -> tuple[int, str, bool]:
    """'threads/precision/compiled|eager' -> (threads, float32_matmul_precision, compiled)."""
    try:
        threads, precision, mode = text.split("/")
        if precision not in ("highest", "high", "medium") or mode not in ("compiled", "eager"):
            raise ValueError
        return int(threads), precision, mode == "compiled"
    except ValueError:
        raise SystemExit(f"--settings {text!r}: expected THREADS/PRECISION/MODE, e.g. 1/highest/compiled "
                         f"(precision highest, high or medium; mode compiled or eager)") from None


def run_name(setting: str, seed: int) -> str:
    """A run's files in the protocol's folder: <name>.json, .log and .pt."""
    return f"{setting.replace('/', '-')}_seed{seed}"


def gradient_groups(net) -> dict[str, list[tuple[torch.Tensor, slice | None]]]:
    """The NTM's parameters by role, for per-group gradient norms: the controller, every head's addressing
    (key, beta, gate, shift, gamma rows of the head layer), the read heads' shift rows alone, the write heads'
    erase and add rows, the output layer and the initial reads. A net without heads (the LSTM) is one group."""
    if not hasattr(net, "heads"):
        return {"all": [(p, None) for p in net.parameters()]}
    size = sum(net.address_sizes)
    shift = sum(net.address_sizes[:3]), sum(net.address_sizes[:4])
    rows = {"read addressing": slice(0, net.R * size), "write addressing": slice(net.R * size, (net.R + net.V) * size),
            "erase/add": slice((net.R + net.V) * size, None)}
    groups = {"controller": [(p, None) for p in net.controller.parameters()]}
    for name, part in rows.items():
        groups[name] = [(net.heads.weight, part), (net.heads.bias, part)]
    groups["read shift"] = [(p, slice(h * size + shift[0], h * size + shift[1]))
                            for h in range(net.R) for p in (net.heads.weight, net.heads.bias)]
    groups["output"] = [(p, None) for p in net.output.parameters()]
    groups["initial reads"] = [(net.r0, None)]
    return groups


class TrainingProbe(L.Callback):
    """What a relapse is made of, per epoch: every step's gradient norm before clipping, in all and per parameter
    group (median, max, the clip AutoClip applied), the norm of the optimiser's update to each group (what the
    step changed, after clipping and Adam's scaling), the learning rate, and after each validation the validation
    cost and how sharp the read and write weightings are on fixed length-20 sequences (the mean over steps of the
    largest weight, 1 = one row, 1/N = uniform), for the input phase (writes) and the output phase (reads)."""

    def __init__(self, checkpoint: Path, arguments: list[str], sequences: int = 32):
        self.checkpoint, self.arguments, self.sequences = checkpoint, arguments, sequences
        self.epochs, self.steps, self.offset = [], [], 0.0  # offset: a continued run's seconds so far

    def state_dict(self):  # in the run's checkpoint, so that a continued run keeps its earlier epochs
        return {"epochs": self.epochs, "seconds": self.offset + time.perf_counter() - self.start,
                "arguments": same_run(self.arguments)}

    def load_state_dict(self, state):
        if state["arguments"] != same_run(self.arguments):
            raise SystemExit(f"{self.checkpoint}: ran with {state['arguments']}, not {same_run(self.arguments)}; "
                             f"continue it with the same arguments (only --trainer.max_epochs may differ), or use "
                             f"another --out")
        self.epochs, self.offset = state["epochs"], state["seconds"]

    def on_fit_start(self, trainer, pl_module):
        net = getattr(pl_module, "ntm", None) or pl_module.lstm
        self.groups = gradient_groups(net)
        self.probe = trainer.datamodule.fixed_batch(self.sequences, seed=12345)
        self.start = time.perf_counter()

    def group_norms(self, tensor_of) -> dict[str, float]:
        return {name: float(torch.sqrt(sum((tensor_of(p) if part is None else tensor_of(p)[part]).square().sum()
                                           for p, part in params if p.grad is not None)))
                for name, params in self.groups.items()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # before Lightning clips the gradients
        with torch.no_grad():
            norms = self.group_norms(lambda p: p.grad)
            norms["total"] = float(torch.nn.utils.get_total_norm([p.grad for p in pl_module.parameters()
                                                                  if p.grad is not None]))
            self.before = {p: p.detach().clone() for p in pl_module.parameters()}
        self.steps.append(norms)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # the optimiser has stepped
        with torch.no_grad():
            updates = self.group_norms(lambda p: p.detach() - self.before[p])
        self.steps[-1].update({f"update {name}": value for name, value in updates.items()})

    def on_train_epoch_end(self, trainer, pl_module):  # the epoch's validation has run and logged by now
        metrics = trainer.callback_metrics
        record = {"epoch": trainer.current_epoch, "step": trainer.global_step,
                  "sequences": int(pl_module.sequences_seen), "seconds": self.offset + time.perf_counter() - self.start,
                  "val_bits": float(metrics["val/bits_per_seq"]),
                  "lr": trainer.optimizers[0].param_groups[0]["lr"],
                  "val_bits_by_length": {k.rsplit("len", 1)[1]: float(v) for k, v in metrics.items()
                                         if k.startswith("val/bits_per_seq_len")}}
        for name in self.steps[0] if self.steps else ():
            values = sorted(s[name] for s in self.steps)
            record[f"grad/{name}/median"] = values[len(values) // 2]
            record[f"grad/{name}/max"] = values[-1]
        if self.steps and pl_module.hparams.get("clip_percentile") is not None:
            norms = pl_module.grad_norms
            record["grad/clip"] = norms[int((len(norms) - 1) * pl_module.hparams.clip_percentile / 100)]
        if hasattr(pl_module, "ntm"):
            inputs, targets = (t.to(pl_module.device) for t in self.probe)
            was_training = pl_module.training
            pl_module.eval()
            with torch.no_grad():
                _, trace = pl_module(inputs, record=True)
            pl_module.train(was_training)
            out = targets.shape[0]
            record["sharpness/write_input"] = float(trace["write_weights"][:, :-out].amax(-1).mean())
            record["sharpness/read_output"] = float(trace["read_weights"][:, -out:].amax(-1).mean())
        self.epochs.append(record)
        self.steps = []
        partial = self.checkpoint.with_suffix(".ckpt.partial")  # every epoch: a stopped run continues from here
        trainer.save_checkpoint(partial)  # (written aside first, so that a stop mid-write keeps the last one)
        os.replace(partial, self.checkpoint)
        print(f"epoch {record['epoch']}: validation {record['val_bits']:.3f} bits, lr {record['lr']:.2e}, "
              f"{record['seconds']:.0f} s", flush=True)  # the run's log, to follow it


def budget(config: Path, extra: list[str]) -> int:
    """The epochs a protocol run trains for: the last --trainer.max_epochs in the extra arguments, else the
    config's."""
    given = [e.split("=", 1)[1] for e in extra if e.startswith("--trainer.max_epochs=")]
    return int(given[-1]) if given else int(yaml.safe_load(config.read_text())["trainer"]["max_epochs"])


def same_run(extra: list[str]) -> list[str]:
    """The arguments that define a run, less its budget: a run continued to more epochs must match them."""
    return [e for e in extra if not e.startswith("--trainer.max_epochs=")]


def seed_run(args, extra):
    """One seed in one setting, in this process: `dl4 fit` (no logger, no pictures, the config's weight averaging
    if any, the probe), then `dl4 test` on the final weights; writes OUT/<setting>_seed<S>.json and the final
    weights as .pt. The probe checkpoints the run at every epoch's end (.ckpt, with its records), so a stopped
    run, or a finished one given a larger --trainer.max_epochs, continues from there as the uninterrupted run
    would have gone."""
    threads, precision, compiled = parse_setting(args.setting)
    torch.set_num_threads(threads)
    name = run_name(args.setting, args.seed)
    ckpt = args.out / f"{name}.ckpt"
    if ckpt.exists():
        print(f"continuing {ckpt}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ntm_seed_") as root:  # where dl4 saves a SIGTERM checkpoint; ours is .ckpt
        run = build_run(args.config, [*QUIET, f"--seed_everything={args.seed}", f"--data.init_args.seed={args.seed}",
                                      f"--float32_matmul_precision={precision}", f"--trainer.default_root_dir={root}",
                                      f"--model.init_args.compile={str(compiled).lower()}", *extra])
        probe = TrainingProbe(ckpt, extra)
        run.trainer.callbacks.append(probe)
        with Timer() as timer:
            run.trainer.fit(run.model, datamodule=run.datamodule, ckpt_path=str(ckpt) if ckpt.exists() else None)
        (test,) = run.trainer.test(run.model, datamodule=run.datamodule, verbose=False)
    result = {"config": str(args.config), "setting": args.setting, "seed": args.seed, "extra": extra,
              "threads": torch.get_num_threads(), "fit_seconds": probe.offset + timer.seconds,
              "epochs": probe.epochs, "test": {k: float(v) for k, v in test.items()}}
    torch.save(run.model.state_dict(), args.out / f"{name}.pt")  # the final weights, to trace what it learned
    write_json(args.out / f"{name}.json", result)
    print(f"{args.setting} seed {args.seed}: final validation cost {probe.epochs[-1]['val_bits']:.3f} bits, "
          f"{timer.seconds:.0f} s", flush=True)


def protocol(args, extra):
    """Every (setting, seed) as its own process, as many at a time as their threads fit in --cores; a run whose
    JSON holds the budget's epochs is not repeated (so a stopped protocol resumes, and a larger budget continues
    the runs), nor one that another protocol on the same DIR is running (its .running marker there and its log
    written to in the last 10 minutes; a live run logs every epoch), so two machines, or two invocations, can
    share the work; then the report."""
    epochs = budget(args.config, extra)

    def done(setting, seed):
        record = args.out / f"{run_name(setting, seed)}.json"
        return record.exists() and len(json.loads(record.read_text())["epochs"]) >= epochs

    def live(setting, seed):  # .running holds "host pid": on this host the process must be alive
        log, marker = (args.out / f"{run_name(setting, seed)}{suffix}" for suffix in (".log", ".running"))
        if not marker.exists() or not log.exists() or time.time() - log.stat().st_mtime > 600:
            return False
        host, _, pid = marker.read_text().partition(" ")
        return bool(pid) and (host != socket.gethostname() or Path(f"/proc/{pid.strip()}").exists())

    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(s, seed) for s in args.settings for seed in args.seeds if not done(s, seed)]
    running, start = [], time.perf_counter()
    while jobs or running:
        free = args.cores - sum(parse_setting(s)[0] for s, _, _ in running)
        jobs = [(s, seed) for s, seed in jobs if not done(s, seed) and not live(s, seed)]
        fits = [job for job in jobs if parse_setting(job[0])[0] <= free]
        if fits:
            setting, seed = fits[0]
            jobs.remove(fits[0])
            threads = str(parse_setting(setting)[0])
            env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                   "TORCHINDUCTOR_COMPILE_THREADS": "1"}
            command = [sys.executable, __file__, "seed", "--config", str(args.config), "--setting", setting,
                       "--seed", str(seed), "--out", str(args.out), *(["--"] + extra if extra else [])]
            log = open(args.out / f"{run_name(setting, seed)}.log", "a")  # a continued run's log goes on
            log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {socket.gethostname()}: {' '.join(command)}\n")
            log.flush()  # the log is fresh before the process starts, so another protocol leaves the run alone
            running.append((setting, seed, subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)))
            (args.out / f"{run_name(setting, seed)}.running").write_text(f"{socket.gethostname()} {running[-1][2].pid}")
            continue
        time.sleep(2)
        for job in [job for job in running if job[2].poll() is not None]:
            running.remove(job)
            (args.out / f"{run_name(job[0], job[1])}.running").unlink(missing_ok=True)
            print(f"{job[0]} seed {job[1]}: {'done' if job[2].returncode == 0 else 'FAILED'} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    protocol_report(args)


def summarise(run: dict, threshold: float) -> dict:
    """One run's convergence: sequences until the validation cost first fell below the threshold and until it
    stayed below to the end, the worst cost after first falling below it, whether the last quarter of the epochs
    stayed below, and the test cost and bit errors at every test length."""
    epochs = run["epochs"]
    costs = [e["val_bits"] for e in epochs]
    first = next((i for i, c in enumerate(costs) if c < threshold), None)
    stable = next((i for i in range(len(costs)) if all(c < threshold for c in costs[i:])), None)
    quarter = costs[len(costs) - max(1, len(costs) // 4):]
    lengths = sorted({int(k.rsplit("len", 1)[1]) for k in run["test"] if "_len" in k})
    return {"first": first is not None and epochs[first]["sequences"] or None,
            "stable": stable is not None and epochs[stable]["sequences"] or None,
            "relapse": max(costs[first:]) if first is not None else None, "final": costs[-1],
            "last_quarter": all(c < threshold for c in quarter),
            "test": {n: (run["test"][f"test/bits_per_seq_len{n}"], run["test"][f"test/bit_errors_per_seq_len{n}"])
                     for n in lengths}}


VARYING = {"seed", "compile", "_instantiator"}  # set per run by the protocol; not part of the recipe


def recipe(checkpoint: Path) -> dict:
    """The model's and the data's hyperparameters a run trained with, from its checkpoint."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return {part: {k: v for k, v in saved[key].items() if k not in VARYING}
            for part, key in (("model", "hyper_parameters"), ("data", "datamodule_hyper_parameters"))}


def protocol_report(args):
    """Per setting: every seed's row, then the median and the worst seed (by the sequences until it stayed below
    the threshold, never counting as worst)."""
    runs = [json.loads(p.read_text()) for p in sorted(args.out.glob("*_seed*.json"))]
    if not runs:
        raise SystemExit(f"no runs in {args.out}")
    lengths = [n for n in (50, 80, 120) if f"test/bits_per_seq_len{n}" in runs[0]["test"]] or \
        sorted({int(k.rsplit("len", 1)[1]) for k in runs[0]["test"] if "_len" in k})[-3:]
    seq = lambda n: "never" if n is None else f"{n:,}"
    header = ["setting", "seed", f"first < {args.threshold}", f"< {args.threshold} to the end",
              "worst cost after first", f"last quarter < {args.threshold}", "final cost",
              *(f"len {n}: bits / wrong bits" for n in lengths)]
    rows, summary = [], {}
    for setting in dict.fromkeys(r["setting"] for r in runs):
        mine = sorted((r for r in runs if r["setting"] == setting), key=lambda r: r["seed"])
        stats = [summarise(r, args.threshold) for r in mine]
        for r, s in zip(mine, stats):
            rows.append([setting, r["seed"], seq(s["first"]), seq(s["stable"]),
                         "-" if s["relapse"] is None else f"{s['relapse']:.2f}", "yes" if s["last_quarter"] else "**no**",
                         f"{s['final']:.3f}", *(f"{s['test'][n][0]:.2f} / {s['test'][n][1]:.2f}" for n in lengths)])
        key = [math.inf if s["stable"] is None else s["stable"] for s in stats]
        order = sorted(range(len(stats)), key=lambda i: key[i])
        median, worst = order[(len(order) - 1) // 2], order[-1]
        for name, i in (("median", median), ("worst", worst)):
            s = stats[i]
            rows.append([f"**{setting}**", f"{name} (seed {mine[i]['seed']})", seq(s["first"]), seq(s["stable"]),
                         "-" if s["relapse"] is None else f"{s['relapse']:.2f}",
                         "yes" if s["last_quarter"] else "**no**", f"{s['final']:.3f}",
                         *(f"{s['test'][n][0]:.2f} / {s['test'][n][1]:.2f}" for n in lengths)])
        summary[setting] = {"seeds": len(stats), "all_last_quarter": all(s["last_quarter"] for s in stats),
                            "median_seed": mine[median]["seed"], "worst_seed": mine[worst]["seed"]}
    epochs = {len(r["epochs"]) for r in runs}
    recipes = [recipe(c) for c in sorted(args.out.glob("*_seed*.ckpt"))]
    if any(r != recipes[0] for r in recipes):
        raise SystemExit(f"the runs in {args.out} trained with different recipes")
    print(f"{len(runs)} runs of {'/'.join(map(str, sorted(epochs)))} epochs; {sum(r['fit_seconds'] for r in runs):.0f} s "
          f"of training in all")
    report(f"ntm_seeds_{Path(runs[0]['config']).stem}", header, rows,
           {"threshold_bits": args.threshold, "summary": summary, "extra": runs[0]["extra"],
            "epochs": sorted(epochs), "recipe": recipes[0] if recipes else None},
           out=args.out / "table.json")


def failures(args):
    """Each run's validation cost (final weights) split by whether the sequence holds an all-zero vector."""
    from datamodules import AlgorithmicTasksDataModule
    from lightning_models import NTM
    from lightning_models.ntm import sequence_cost

    header = ["run", "validation cost (bits)", "share from sequences with a zero vector", "from the others",
              "sequences > 1 bit: with a zero vector / others", "sequences with a zero vector"]
    rows = []
    for weights in sorted(args.out.glob("*_seed*.pt"), key=lambda p: (p.stem.rsplit("_seed", 1)[0],
                                                                      int(p.stem.rsplit("_seed", 1)[1]))):
        hparams = recipe(weights.with_suffix(".ckpt"))
        model = NTM(**{k: v for k, v in hparams["model"].items()
                       if not k.startswith("_") and k not in ("optimizer", "lr_scheduler")}, compile=False)
        model.load_state_dict(torch.load(weights, map_location="cpu"), strict=False)
        seed = int(weights.stem.rsplit("_seed", 1)[1])
        dm = AlgorithmicTasksDataModule(**{k: v for k, v in hparams["data"].items() if not k.startswith("_")},
                                        seed=seed)
        dm.setup("validate")
        cost, count, bad = {True: 0.0, False: 0.0}, {True: 0, False: 0}, {True: 0, False: 0}
        with torch.no_grad():
            for inputs, targets, length in dm.val_batches:
                out = model(inputs)
                nats, _ = sequence_cost(out[0] if isinstance(out, tuple) else out, targets)
                bits = nats / math.log(2)
                zero = (targets.sum(-1) == 0).any(0)
                for z in (True, False):
                    cost[z] += float(bits[zero == z].sum())
                    count[z] += int((zero == z).sum())
                    bad[z] += int(((bits > 1) & (zero == z)).sum())
        n = count[True] + count[False]
        rows.append([weights.stem, f"{(cost[True] + cost[False]) / n:.3f}", f"{cost[True] / n:.3f}",
                     f"{cost[False] / n:.3f}", f"{bad[True]} / {bad[False]}", f"{count[True]} of {n}"])
    if not rows:
        raise SystemExit(f"no final weights (*.pt) in {args.out}")
    report("ntm_failures", header, rows, {}, out=args.out / "failures.json")


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
    for name in ("seeds", "seed", "seeds-report", "failures"):
        p = sub.add_parser(name)
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--threshold", type=float, default=0.1)
        if name in ("seeds-report", "failures"):
            continue
        p.add_argument("--config", type=Path, default=Path("configs/ntm_copy.yaml"))
        if name == "seeds":
            p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
            p.add_argument("--settings", nargs="+", default=list(SETTINGS))
            p.add_argument("--cores", type=int, default=os.cpu_count())
        else:
            p.add_argument("--seed", type=int, required=True)
            p.add_argument("--setting", default=SETTINGS[0])
    args, extra = parser.parse_known_args()
    extra = [e for e in extra if e != "--"]
    if args.command == "speed":
        if extra:
            parser.error(f"unknown arguments {extra}")
        speed(args)
    elif args.command == "seeds-report":
        protocol_report(args)
    elif args.command == "failures":
        failures(args)
    elif args.command in ("seeds", "seed"):
        for setting in args.settings if args.command == "seeds" else [args.setting]:
            parse_setting(setting)
        (protocol if args.command == "seeds" else seed_run)(args, extra)
    else:
        if not args.config.is_file():
            parser.error(f"--config {args.config}: no such file")
        converge(args, [e for e in extra if e != "--"])


if __name__ == "__main__":
    main()
