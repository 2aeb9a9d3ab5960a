"""Where a training step's time goes under `dl4 fit`, per family: the loader, the transfer hooks, the model's own
forward, backward and optimiser step, every callback's hooks, and the rest (Lightning's loop, logging), against the
same model and data in a plain PyTorch loop, side by side in one process.

    python benchmarks/overhead.py [--steps 400] [--rounds 3] [--configs vae_mnist.yaml ...]

Each run is built as `dl4 fit` builds it (the config's logger, W&B offline, its callbacks, the progress bar, dl4's
fault callbacks), with Lightning's ``SimpleProfiler`` timing every hook, and a ``StepClock`` timing the steps
themselves (from one step's start to the next's, the first ``warmup`` steps left out, validation off) in a run without
the profiler; the breakdown comes from a second, profiled run, whose step is also given. The plain loop
draws the same batches from the same datamodule (its loader and transfer hooks) and runs the model's own loss,
``backward``, the model's gradient clipping where the config clips, and ``optimizer.step`` (the config's
optimiser), nothing else. Between the two, "Lightning alone" trains the same model and datamodule under a bare
``Trainer`` (no logger, bar, checkpoints or callbacks but the config's weight averaging): what Lightning's own loop
costs, before anything dl4 adds. Writes benchmarks/results/overhead.json.
"""

import argparse
import statistics
import time

import lightning as L
import torch.nn.functional as F

from common import QUIET, REPO, build_run, report

CONFIGS = ["vae_mnist.yaml", "gan_mnist.yaml", "st_cnn_rts_mnist.yaml", "memn2n_babi.yaml", "ntm_copy.yaml"]
EXTRA = {"ntm_copy.yaml": ["--model.init_args.compile=false"]}  # (compiled: 30 s to build; eager is the reference)


class StepClock(L.Callback):
    """The wall time from each training step's start to the next one's."""

    def __init__(self):
        self.starts = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.starts.append(time.perf_counter())

    def intervals(self, warmup: int) -> list[float]:
        return [b - a for a, b in zip(self.starts[warmup:], self.starts[warmup + 1:])]


def per_step(durations: dict, key: str, warmup: int) -> float:
    values = durations.get(key, [])[warmup:]
    return sum(values) / len(values) if values else 0.0


def breakdown(trainer, warmup: int) -> dict[str, float]:
    """The profiler's per-step actions grouped, in seconds per step."""
    d = trainer.profiler.recorded_durations
    steps = len(d.get("run_training_batch", []))
    strategy = type(trainer.strategy).__name__
    module = type(trainer.lightning_module).__name__
    forward = per_step(d, f"[Strategy]{strategy}.training_step", warmup)
    backward = per_step(d, f"[Strategy]{strategy}.backward", warmup)
    step = per_step(d, f"[LightningModule]{module}.optimizer_step", warmup)
    out = {"loader": per_step(d, "[_TrainingEpochLoop].train_dataloader_next", warmup),
           "transfer": per_step(d, f"[Strategy]{strategy}.batch_to_device", warmup),
           "forward": forward, "backward": backward,
           # automatic optimisation: optimizer_step runs the closure (forward, backward) and then the step;
           # manual (the GAN): the steps happen inside training_step, and optimizer_step is not called
           "optimizer": max(0.0, step - forward - backward) if step else 0.0}
    callbacks = {}
    for key, values in d.items():
        if key.startswith("[Callback]") and len(values) >= steps > 0:
            name = key[len("[Callback]"):].split("{")[0].split(".")[0]
            if name == StepClock.__name__:  # the benchmark's own clock, not part of the run
                continue
            callbacks[name] = callbacks.get(name, 0.0) + sum(values[warmup:]) / max(1, len(values) - warmup)
    out["callbacks"] = sum(callbacks.values())
    out["callbacks_by_name"] = dict(sorted(callbacks.items(), key=lambda kv: -kv[1]))
    return out


def plain_loop(cli, steps: int, warmup: int) -> float | None:
    """The model's loss, backward and the config's optimiser (a fresh one) on the batches `fit` draws, through the
    datamodule's transfer hooks: the mean seconds per step after ``warmup``. The run is built like the others
    (``QUIET``: no logger, bar or callbacks but a weight averaging), and trained one step first so that its model
    and data are set up."""
    model, dm = cli.model, cli.datamodule
    loss_of = PLAIN.get(type(model).__name__)
    if loss_of is None:
        return None
    cli.trainer.fit(model, datamodule=dm)  # one step, so that both are set up (networks built) as `fit` does
    cli.trainer.training = True  # what the datamodule's hooks ask (MNIST's dynamic binarisation)
    model.train()
    optimizer = model.configure_optimizers()
    optimizer = optimizer[0][0] if isinstance(optimizer, tuple) else (
        optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer)
    optimizer = optimizer[0] if isinstance(optimizer, list) else optimizer
    clip, algorithm = cli.trainer.gradient_clip_val, cli.trainer.gradient_clip_algorithm or "norm"
    times, n, epoch = [], 0, 0
    while n < steps:
        loader = dm.train_dataloader()
        if hasattr(loader.sampler, "set_epoch"):  # the batches `fit` draws, epoch after epoch
            loader.sampler.set_epoch(epoch)
        epoch += 1
        for batch in loader:
            start = time.perf_counter()
            batch = dm.on_after_batch_transfer(dm.transfer_batch_to_device(batch, model.device, 0), 0)
            loss = loss_of(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:  # the model's own clipping (MemN2N: each weight matrix's norm on its own)
                model.configure_gradient_clipping(optimizer, clip, algorithm)
            optimizer.step()
            times.append(time.perf_counter() - start)  # (CPU: the step has finished when step() returns)
            n += 1
            if n >= steps:
                break
    return statistics.mean(times[warmup:])


def _ntm_loss(model, batch):
    from lightning_models.ntm import sequence_cost

    inputs, targets, *mask = batch
    return sequence_cost(model(inputs), targets, *mask)[0].mean()


PLAIN = {
    "VAE": lambda model, batch: model.negative_elbo(batch[0])[0].mean(),
    "STNClassifier": lambda model, batch: F.cross_entropy(model(batch[0])[0], batch[1]),
    "MemN2N": lambda model, batch: F.cross_entropy(model(batch)[0], batch.answers, reduction="sum"),
    "NTM": _ntm_loss,
}


def lightning_alone(config: str, steps: int, warmup: int) -> float:
    """Lightning's loop alone: the config's model and datamodule (built by the CLI) under a bare ``Trainer`` with no
    logger, bar, checkpoints or callbacks but the config's weight averaging and its gradient clipping; the mean
    seconds per step after ``warmup``."""
    from lightning.pytorch.callbacks import WeightAveraging

    cli = build_run(REPO / "configs" / config, [*QUIET, *EXTRA.get(config, [])])
    clock = StepClock()
    trainer = L.Trainer(max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        gradient_clip_val=cli.trainer.gradient_clip_val,
                        gradient_clip_algorithm=cli.trainer.gradient_clip_algorithm,
                        callbacks=[clock, *(c for c in cli.trainer.callbacks if isinstance(c, WeightAveraging))],
                        default_root_dir="/tmp/dl4-overhead")
    trainer.fit(cli.model, datamodule=cli.datamodule)
    return statistics.mean(clock.intervals(warmup))


def fit(config: str, steps: int, warmup: int, profiled: bool):
    """`dl4 fit` of ``steps`` steps without validation: (the CLI, the mean seconds per step after ``warmup``)."""
    overrides = [f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
                 *EXTRA.get(config, [])]
    if profiled:  # the profiler's summary goes to a file, not to the terminal
        overrides += ["--trainer.profiler=lightning.pytorch.profilers.SimpleProfiler",
                      "--trainer.profiler.init_args.dirpath=/tmp/dl4-overhead",
                      "--trainer.profiler.init_args.filename=profile"]
    cli = build_run(REPO / "configs" / config, overrides)
    clock = StepClock()
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    import wandb

    wandb.finish()
    return cli, statistics.mean(clock.intervals(warmup))


def measure(config: str, steps: int, warmup: int) -> dict:
    """The step's time as `dl4 fit` runs it, its breakdown from a second, profiled run (the profiler's own cost,
    a few microseconds a hook, lands in its hooks), and the plain loop's step."""
    plain = build_run(REPO / "configs" / config, [*QUIET, "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
                                                  "--trainer.num_sanity_val_steps=0", *EXTRA.get(config, [])])
    plain_step = plain_loop(plain, steps, warmup)
    alone = lightning_alone(config, steps, warmup)
    _, step = fit(config, steps, warmup, profiled=False)
    cli, profiled_step = fit(config, steps, warmup, profiled=True)
    row = {"config": config, "step": step, "profiled_step": profiled_step, "plain": plain_step, "lightning": alone,
           **breakdown(cli.trainer, warmup)}
    row["rest"] = profiled_step - sum(row[k] for k in ("loader", "transfer", "forward", "backward", "optimizer",
                                                       "callbacks"))
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    args = parser.parse_args()
    rows = {}
    for _ in range(args.rounds):  # interleaved: a noisy machine hurts every config alike
        for config in args.configs:
            row = measure(config, args.steps, args.warmup)
            best = rows.get(config)
            if best is None:
                rows[config] = row
                continue
            # each variant's best round (its step when nothing else ran), the breakdown of the best profiled run
            fastest = {k: None if row[k] is None else min(row[k], best[k]) for k in ("step", "plain", "lightning")}
            rows[config] = {**(row if row["profiled_step"] < best["profiled_step"] else best), **fastest}
    ms = lambda s: None if s is None else round(1000 * s, 3)  # noqa: E731
    columns = ["config", "dl4 fit step (ms)", "plain loop step (ms)", "dl4 over plain", "Lightning alone (ms)",
               "Lightning over plain", "profiled step", "loader",
               "transfer", "forward", "backward", "optimizer", "callbacks", "rest", "callbacks over 0.01 ms"]
    def over(t, plain):
        return None if plain is None else f"{100 * (t - plain) / plain:+.0f}%"

    table = []
    for row in rows.values():
        table.append([row["config"], ms(row["step"]), ms(row["plain"]), over(row["step"], row["plain"]),
                      ms(row["lightning"]), over(row["lightning"], row["plain"]), ms(row["profiled_step"]),
                      *(ms(row[k]) for k in ("loader", "transfer", "forward", "backward", "optimizer", "callbacks",
                                             "rest")),
                      ", ".join(f"{k} {ms(v)}" for k, v in row["callbacks_by_name"].items() if v > 1e-5)])
    report("overhead", columns, table, {"steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
                                        "unit": "ms per training step (mean over the steps after warmup; each "
                                                "variant's best round; the breakdown from the best profiled run)"})


if __name__ == "__main__":
    main()
