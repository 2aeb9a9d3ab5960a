"""The STN numbers in docs/results/stn.md: the paper's Table 1 on distorted MNIST, and speed against the PyTorch
tutorial's recipe.

    python benchmarks/stn.py table --out benchmarks/results/stn/ [--distortion rts] [--models cnn st_cnn ...]
                                   [--epochs 40] [--precision bf16-mixed] [-- CLI arguments]
        trains every model of the distortion's row (its configs/, the same epochs, schedule, batch and seed for
        each), one after the other, prints the validation error after every epoch, tests the last model on the
        fixed test set and writes <out>/<distortion>_<model>.json as each finishes (a stopped run keeps the models
        it finished; rerunning skips them); then the table: parameters, epochs, wall time, test error (%), the
        paper's number.
    python benchmarks/stn.py report --out benchmarks/results/stn/
        the table from the JSON files already there.
    python benchmarks/stn.py speed [--steps 300] [--rounds 3]
        images per second of training, the PyTorch tutorial's STN (torchvision MNIST through a DataLoader with
        ToTensor/Normalize, batch 64, a plain loop) against the same network and batch trained by dl4
        (STNClassifier, MNIST kept as a tensor on the device, Lightning's loop; float32 and bfloat16 mixed), the
        same network in a plain loop over dl4's MNIST tensors, and the ceiling (a plain loop over one batch in
        memory), in one process, side by side, rounds interleaved; best and median over the rounds.

Every model runs as its config says (Adam, the learning rate annealed to 0 by a cosine over the run, batch 256), with
``T_max`` set to the given epochs, so a short budget ends annealed rather than mid-descent.
"""

import argparse
import json
import time
from pathlib import Path

from common import QUIET, REPO, Timer, build_run, report as write_table

# Jaderberg et al. 2015, Table 1, test error (%): model -> distortion -> error (TC: CNN and ST-CNN only)
PAPER = {"fcn": {"r": 2.1, "rts": 5.2, "p": 3.1, "e": 3.2},
         "cnn": {"r": 1.2, "rts": 0.8, "p": 1.5, "e": 1.4, "tc": 3.5},
         "st_fcn": {"r": 1.2, "rts": 0.8, "p": 1.5, "e": 2.7},
         "st_cnn": {"r": 0.7, "rts": 0.5, "p": 0.8, "e": 1.2, "tc": 1.7},
         "st_cnn_tps": {"r": 0.7, "rts": 0.5, "p": 0.8, "e": 1.1}}
MODELS = ["cnn", "st_cnn", "st_cnn_tps"]


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def config_for(name: str, distortion: str) -> tuple[Path, list[str]]:
    """The model's config and overrides for a distortion: RTS and TC have their own configs; R, P and E keep the
    28 x 28 digit, so they run the RTS configs with 28 x 28 inputs."""
    if distortion in ("rts", "tc"):
        return REPO / "configs" / f"{name}_{distortion}_mnist.yaml", []
    size = ("--model.init_args.transformer.init_args.localisation.init_args.input_size=28" if name.startswith("st_")
            else "--model.init_args.classifier.init_args.input_size=28")
    return REPO / "configs" / f"{name}_rts_mnist.yaml", [f"--data.init_args.distortion={distortion}", size]


def train_one(name: str, distortion: str, args, extra: list[str]) -> dict:
    import lightning as L

    class Progress(L.Callback):
        """The validation error after every epoch, and the training time without the validations."""

        def __init__(self):
            self.curve, self.start = [], time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):  # after the epoch's validation
            if "val/error" in trainer.callback_metrics:
                error = float(trainer.callback_metrics["val/error"])
                self.curve.append(round(error, 3))
                print(f"{name} {distortion} epoch {trainer.current_epoch}: val/error {error:.2f}% "
                      f"({time.perf_counter() - self.start:.0f} s)", flush=True)

    config, overrides = config_for(name, distortion)
    cosine = ('--model.init_args.lr_scheduler={"class_path": "torch.optim.lr_scheduler.CosineAnnealingLR", '
              f'"init_args": {{"T_max": {args.epochs}}}}}')
    c = build_run(config, [*QUIET, f"--trainer.max_epochs={args.epochs}", f"--trainer.precision={args.precision}",
                           "--trainer.num_sanity_val_steps=0", cosine, *overrides, *extra])
    progress = Progress()
    c.trainer.callbacks.append(progress)
    with Timer() as t:
        c.trainer.fit(c.model, c.datamodule)
    (result,) = c.trainer.test(c.model, c.datamodule, verbose=False)
    return {"model": name, "distortion": distortion, "config": str(config.relative_to(REPO)),
            "parameters": parameters(c.model), "epochs": args.epochs, "precision": args.precision,
            "batch_size": c.datamodule.batch_size, "seconds": round(t.seconds), "val_curve": progress.curve,
            "test_error": round(result["test/error"], 3), "extra": overrides + extra}


def table(args, extra):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        path = out / f"{args.distortion}_{name}.json"
        if path.exists():
            print(f"{path} exists: skipped")
            continue
        result = train_one(name, args.distortion, args, extra)
        path.write_text(json.dumps(result, indent=1) + "\n")
    report(args)


def report(args):
    rows, meta = [], {}
    for path in sorted(Path(args.out).glob("*.json")):
        r = json.loads(path.read_text())
        rows.append([r["distortion"].upper(), r["model"], f"{r['parameters']:,}", r["epochs"],
                     f"{r['seconds'] / 60:.1f}", f"{min(r['val_curve']):.2f}", f"{r['test_error']:.2f}",
                     PAPER.get(r["model"], {}).get(r["distortion"], "")])
        meta = {"precision": r["precision"], "batch_size": r["batch_size"], "extra": r["extra"]}
    write_table("stn_table", ["distortion", "model", "parameters", "epochs", "minutes", "best val error %",
                              "test error % (last epoch)", "paper %"], rows, meta)


def speed(args):
    """The tutorial (pytorch/tutorials intermediate_source/spatial_transformer_tutorial.py) against dl4, and both
    against the same network in plain loops; ``--rounds`` rounds of every variant in turn (interleaved, so that a
    noisy machine hurts all alike), best and median."""
    import itertools
    import statistics

    import lightning as L
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torchvision import datasets, transforms

    from common import default_data_dir
    from datamodules.mnist import MNISTDataModule
    from lightning_models.nn.stn import SpatialTransformer
    from lightning_models.stn import STNClassifier

    def tutorial_networks():
        """The tutorial's Net, split into dl4's parts: localisation body (+ the regression layer the
        SpatialTransformer adds, as the tutorial's fc_loc[2]) and classifier."""
        localisation = nn.Sequential(nn.Conv2d(1, 8, 7), nn.MaxPool2d(2), nn.ReLU(True), nn.Conv2d(8, 10, 5),
                                     nn.MaxPool2d(2), nn.ReLU(True), nn.Flatten(), nn.Linear(90, 32), nn.ReLU(True))
        classifier = nn.Sequential(nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(10, 20, 5),
                                   nn.Dropout2d(), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(320, 50),
                                   nn.ReLU(), nn.Dropout(), nn.Linear(50, 10))
        return SpatialTransformer(localisation, 32, "affine", (28, 28)), classifier

    root = Path(default_data_dir())
    warmup = 20

    def plain(model, batches, loss_of) -> float:
        """Images per second of SGD(0.01) steps on ``batches`` after ``warmup`` of them."""
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        model.train()
        seen, timer = 0, None
        for step, (x, y) in enumerate(batches):
            if step == warmup:  # (the tutorial's DataLoader workers have started and filled their queues)
                timer, seen = Timer().__enter__(), 0
            optimizer.zero_grad()
            loss_of(model(x)[0], y).backward()
            optimizer.step()
            seen += len(x)
            if step == warmup + args.steps:
                return seen / timer.elapsed

    def tutorial():
        """Its recipe: per-image PIL -> ToTensor -> Normalize in DataLoader workers, batch 64, SGD 0.01, its
        network as it is (NCHW), NLL of log-softmax."""
        torch.manual_seed(0)
        model = STNClassifier(*tutorial_networks()[::-1], channels_last=False)
        loader = torch.utils.data.DataLoader(
            datasets.MNIST(root, train=True, download=False, transform=transforms.Compose(
                [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])),
            batch_size=64, shuffle=True, num_workers=4)
        return plain(model, loader, lambda logits, y: F.nll_loss(F.log_softmax(logits, dim=1), y))

    def no_data():
        """The ceiling: the same network (channels-last, as dl4 keeps it) on one batch in memory, no data at all."""
        torch.manual_seed(0)
        batch = (torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,)))
        return plain(STNClassifier(*tutorial_networks()[::-1]), itertools.repeat(batch), F.cross_entropy)

    dm = MNISTDataModule(str(root), batch_size=64, download=False)
    dm.setup()

    def in_memory():
        """The same network in a plain loop over dl4's MNIST tensors: its shuffled batches, its transfer to floats."""
        torch.manual_seed(0)
        batches = (dm.on_after_batch_transfer(batch, 0) for _ in itertools.count() for batch in dm.train_dataloader())
        return plain(STNClassifier(*tutorial_networks()[::-1]), batches, F.cross_entropy)

    class Throughput(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == warmup:
                self.timer, self.seen = Timer().__enter__(), 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx > warmup:
                self.seen += len(batch[1])

    def dl4(precision: str):
        """dl4: the same networks in STNClassifier (channels-last weights), MNIST as a uint8 tensor on the device,
        Lightning's loop (no logger, bar or checkpoints)."""
        torch.manual_seed(0)
        model = STNClassifier(*tutorial_networks()[::-1])
        model.configure_optimizers = lambda: torch.optim.SGD(model.parameters(), lr=0.01)
        meter = Throughput()
        trainer = L.Trainer(max_steps=warmup + 1 + args.steps, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[meter],
                            limit_val_batches=0, accelerator="auto", devices=1, precision=precision)
        trainer.fit(model, datamodule=MNISTDataModule(str(root), batch_size=64, download=False))
        return meter.seen / meter.timer.elapsed

    base = ("PyTorch tutorial (DataLoader, ToTensor/Normalize, plain loop)", "32-true")
    plain_key = ("the same network, a plain loop over MNIST as tensors (dl4's batches)", "32-true")
    variants = {  # (name, precision): images per second of one run
        base: tutorial,
        ("the same network, a plain loop on one batch in memory (no data at all)", "32-true"): no_data,
        plain_key: in_memory,
        ("dl4 (STNClassifier, MNIST on the device, Lightning)", "32-true"): lambda: dl4("32-true"),
        ("dl4 (STNClassifier, MNIST on the device, Lightning)", "bf16-mixed"): lambda: dl4("bf16-mixed"),
    }
    rates = {key: [] for key in variants}
    for r in range(args.rounds):
        for key, run in variants.items():
            rates[key].append(run())
            print(f"round {r}: {key[0]} ({key[1]}): {rates[key][-1]:,.0f} images/s", flush=True)
    best = {key: max(v) for key, v in rates.items()}
    median = {key: statistics.median(v) for key, v in rates.items()}
    n = parameters(STNClassifier(*tutorial_networks()[::-1]))
    rows = [[*key, n, 64, f"{best[key]:,.0f}", f"{median[key]:,.0f}",
             f"{best[key] / best[base]:.2f}x, {median[key] / median[base]:.2f}x",
             f"{100 * (best[plain_key] / best[key] - 1):+.1f}%, {100 * (median[plain_key] / median[key] - 1):+.1f}%"]
            for key in variants]
    write_table("stn_speed", ["training", "precision", "parameters", "batch", "images / s, best",
                              "images / s, median", "speed vs the tutorial (best, median)",
                              "time per image vs the plain in-memory loop (best, median)"], rows,
                {"steps": args.steps, "rounds": args.rounds})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table")
    t.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "stn"))
    t.add_argument("--distortion", default="rts", choices=["r", "rts", "p", "e", "tc"])
    t.add_argument("--models", nargs="+", default=MODELS)
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--precision", default="bf16-mixed", help="the trainer's precision (32-true, bf16-mixed, ...)")
    r = sub.add_parser("report")
    r.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "stn"))
    s = sub.add_parser("speed")
    s.add_argument("--steps", type=int, default=300)
    s.add_argument("--rounds", type=int, default=3)
    args, extra = parser.parse_known_args()
    if extra[:1] == ["--"]:
        extra = extra[1:]
    {"table": lambda: table(args, extra), "report": lambda: report(args), "speed": lambda: speed(args)}[args.command]()


if __name__ == "__main__":
    main()
