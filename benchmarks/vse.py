"""The multimodal numbers in docs/results/vse.md: visual-semantic embeddings on MNIST captions and on the COCO
sample.

    python benchmarks/vse.py mnist --out benchmarks/results/vse_mnist_captions.json [--epochs 40]
                                   [--decoder_epochs 10] [--root data/mnist_captions] [--ckpt PATH | --embedding PATH]
                                   [-- CLI arguments]
        writes MNIST captions (20,000 / 1,000 / 1,000 images from seed 0) to --root if they are not there, trains
        the embedding (configs/vse_mnist_captions.yaml), then the decoder on it, frozen
        (configs/vse_mnist_captions_decoder.yaml), or only the decoder on stage 1's --embedding checkpoint, or only
        evaluates --ckpt; saves the checkpoints in runs/; then
        on the 1,000 test images and their 5,000 captions: retrieval both ways (R@1/5/10, median rank; a tie counts
        against the query) with the ceiling of the test set in each direction (the R@K of a perfect model, which
        scores images of the same content alike, so that twins tie), the generated captions (greedy and beam 3:
        BLEU-1..4, CIDEr-D and the exact accuracy of digits, colours and relation) and the embedding arithmetic image(red 3) - v("red") + v(c) for every
        one-digit test image and every other colour c (a hit: the nearest other image holds that digit in colour c),
        with the nearest image sought among the test images and among the training and test images.
    python benchmarks/vse.py ceiling --out benchmarks/results/vse_mnist_captions_ceiling.json
        only that ceiling, on the same 1,000 test images (no model): how many share their content, and a perfect
        model's R@1/5/10 both ways.
    python benchmarks/vse.py coco --out benchmarks/results/vse_coco_sample.json [--epochs 3]
        the whole pipeline on the 159 real COCO 2017 images of the data root's coco_sample (JPEGs decoded in
        workers, train, retrieval, generated captions) through configs/vse_coco.yaml: that it runs; 79 validation
        images give no meaningful numbers.
"""

import argparse
import json
import os
import platform
import sys
from datetime import date
from pathlib import Path

import lightning as L
import torch

from common import COMMAND, REPO, Timer, build_run, default_data_dir, write_json

QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
         "--trainer.callbacks=[]"]


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def ceiling(dm, split: str = "test") -> dict:
    """A perfect model's retrieval on the split: it scores an image and a caption 1 when their content is the same,
    else 0, so twins (images of the same content) tie, and a tie counts against the query."""
    from datamodules.mnist_captions import content_ids
    from lightning_models.nn.vse import recall_at, retrieval_ranks

    ids = dm.datasets[split].split.image_ids
    row = {i: r for r, i in enumerate(ids)}
    owner = torch.tensor([row[int(i)] for i in dm.all_captions(split)["image_id"]])
    records = dm.records(split)
    same = content_ids([records[i] for i in ids])
    i2t, t2i = retrieval_ranks((same[:, None] == same[owner][None, :]).float(), owner)
    return {"images_sharing_their_content": int((same.bincount()[same] > 1).sum()),
            "image_to_text": recall_at(i2t), "text_to_image": recall_at(t2i)}


@torch.no_grad()
def evaluate_mnist(model, dm) -> dict:
    """Everything the results table reports, on the test split."""
    from lightning_models.nn.vse import decode, recall_at, retrieval_ranks

    model.eval()
    data = dm.datasets["test"]
    images = dm.on_after_batch_transfer({"images": data.source}, 0)["images"]
    codes = torch.cat([model.image_codes(chunk) for chunk in images.split(500)])
    x = torch.nn.functional.normalize(codes, dim=-1)
    captions = dm.all_captions("test")
    v = torch.cat([model.embed_captions(t, n) for t, n in zip(captions["tokens"].split(1000),
                                                                 captions["lengths"].split(1000))])
    ids = data.split.image_ids
    row = {i: r for r, i in enumerate(ids)}
    owner = torch.tensor([row[int(i)] for i in captions["image_id"]])
    i2t, t2i = retrieval_ranks(x @ v.T, owner)
    records = dm.records("test")
    out = {"test_images": len(ids), "test_captions": len(owner), "ceiling": ceiling(dm),
           "image_to_text": recall_at(i2t), "text_to_image": recall_at(t2i)}
    references = dm.references("test")
    for beam in (1, 3):
        generated = torch.cat([model.generate(chunk, beam) for chunk in codes.split(500)])
        texts = [decode(r, model.vocabulary) for r in generated]
        out[f"captions_beam{beam}"] = caption_scores(texts, [references[i] for i in ids])
        out[f"captions_beam{beam}"]["accuracy"] = 100 * dm.caption_accuracy("test", ids, texts)
        out[f"captions_beam{beam}"]["examples"] = [f"{records[i]['file_name']}: {t}" for i, t in zip(ids[:5], texts)]
    # the arithmetic: every one-digit test image with every other colour; the nearest image among the other test
    # images, and among the training and test images (the 1,000 test images hold 56 one-digit images, so the
    # one-digit image a query asks for is mostly not among them)
    queries = dm.arithmetic_queries("test")
    at = torch.tensor([row[q["image_id"]] for q in queries])
    train = dm.datasets["train"]
    train_images = dm.on_after_batch_transfer({"images": train.source}, 0)["images"]
    train_x = torch.cat([model.embed_images(chunk) for chunk in train_images.split(500)])
    pool_split = ["test"] * len(ids) + ["train"] * len(train_x)
    pool_ids = list(ids) + list(train.split.image_ids)
    out["arithmetic"] = {"queries": len(queries), "one_digit_test_images": len(set(q["image_id"] for q in queries))}
    for name, pool in (("test_pool", x), ("train_and_test_pool", torch.cat([x, train_x]))):
        nearest = model.arithmetic(images[at], [q["minus"] for q in queries], [q["plus"] for q in queries], pool,
                                   k=1, exclude=at)[:, 0]
        hits = [dm.arithmetic_hit(pool_split[int(n)], q, pool_ids[int(n)]) for q, n in zip(queries, nearest)]
        out["arithmetic"][name] = {"images": len(pool), "hits": sum(hits), "accuracy": 100 * sum(hits) / len(hits)}
    return out


def caption_scores(texts: list[str], references: list[list[str]]) -> dict:
    from pycocoevalcap.cider.cider import Cider
    from torchmetrics.functional.text import bleu_score

    out = {f"bleu{n}": 100 * float(bleu_score(texts, references, n_gram=n)) for n in (1, 2, 3, 4)}
    out["cider"] = 100 * float(Cider().compute_score(dict(enumerate(references)),
                                                     {k: [t] for k, t in enumerate(texts)})[0])
    return out


class PrintValidation(L.Callback):
    """One line of validation numbers per epoch (the curve of the results page)."""

    def on_train_epoch_end(self, trainer, pl_module):  # after the epoch's validation has logged
        m = trainer.callback_metrics
        keys = ("val/i2t_r1", "val/t2i_r1", "val/caption_accuracy", "val/bleu4")
        print(f"epoch {trainer.current_epoch}: " + ", ".join(f"{k[4:]} {float(m[k]):.1f}" for k in keys if k in m),
              flush=True)


def mnist(args, extra):
    from datamodules.mnist_captions import write_mnist_captions

    data_dir = default_data_dir()
    root = Path(args.root).resolve()
    with Timer() as gen:
        write_mnist_captions(root, data_dir, seed=0)
    common = [f"--data.init_args.root={root}", *QUIET, "--trainer.enable_checkpointing=false", *extra]
    result = {"command": f"python {COMMAND}", "date": str(date.today()), "machine": machine(),
              "configs": ["configs/vse_mnist_captions.yaml", "configs/vse_mnist_captions_decoder.yaml"],
              "epochs": args.epochs, "decoder_epochs": args.decoder_epochs, "overrides": extra,
              "generate_seconds": round(gen.seconds, 1)}
    stem = Path(args.out).stem
    embedding, ckpt = REPO / "runs" / f"{stem}_embedding.ckpt", REPO / "runs" / f"{stem}.ckpt"  # not committed
    if args.ckpt:
        from lightning_models import VSE

        run = build_run(REPO / "configs" / "vse_mnist_captions_decoder.yaml", common)
        run.model = VSE.load_from_checkpoint(args.ckpt, map_location="cpu")
        result["checkpoint"] = args.ckpt
        run.datamodule.prepare_data()
        run.datamodule.setup()
        run.datamodule.set_vocabulary(run.model.vocabulary)
    else:
        if args.embedding:  # stage 1 done already: its checkpoint
            embedding = Path(args.embedding).resolve()
            result["embedding_checkpoint"] = str(embedding)
        stages = [("embedding", "vse_mnist_captions.yaml", args.epochs, embedding, []),
                  ("decoder", "vse_mnist_captions_decoder.yaml", args.decoder_epochs, ckpt,
                   [f"--model.init_args.embedding_from={embedding}"])][1 if args.embedding else 0:]
        for stage, config, epochs, out, more in stages:
            print(f"stage {stage}: {config}, {epochs} epochs", flush=True)
            run = build_run(REPO / "configs" / config, [*common, f"--trainer.max_epochs={epochs}",
                                                        f"--model.init_args.lr_scheduler.init_args.T_max={epochs}", *more])
            run.trainer.callbacks.append(PrintValidation())
            with Timer() as t:
                run.trainer.fit(run.model, run.datamodule)
            result[f"{stage}_train_seconds"] = round(t.seconds, 1)
            run.trainer.save_checkpoint(out)
        if not args.embedding:
            result["train_seconds"] = round(result["embedding_train_seconds"] + result["decoder_train_seconds"], 1)
        result["checkpoint"] = str(ckpt)
    with Timer() as t:
        result.update(evaluate_mnist(run.model, run.datamodule))
    result["evaluate_seconds"] = round(t.seconds, 1)
    write_json(args.out, result)
    print(json.dumps(result, indent=1))


def test_set_ceiling(args, extra):
    from datamodules.mnist_captions import write_mnist_captions

    root = Path(args.root).resolve()
    write_mnist_captions(root, default_data_dir(), seed=0)
    run = build_run(REPO / "configs" / "vse_mnist_captions.yaml", [f"--data.init_args.root={root}", *QUIET, *extra])
    run.datamodule.prepare_data()
    run.datamodule.setup()
    result = {"command": f"python {COMMAND}", "date": str(date.today()), "machine": machine(),
              "test_images": len(run.datamodule.datasets["test"].split.image_ids), "ceiling": ceiling(run.datamodule)}
    write_json(args.out, result)
    print(json.dumps(result, indent=1))


def coco(args, extra):
    data_dir = Path(default_data_dir())
    overrides = [f"--data.init_args.root={data_dir / 'coco_sample'}", f"--trainer.max_epochs={args.epochs}",
                 *QUIET, "--trainer.enable_checkpointing=false", "--data.init_args.batch_size=16",
                 "--data.init_args.eval_batch_size=40", "--data.init_args.num_workers=2", *extra]
    run = build_run(REPO / "configs" / "vse_coco.yaml", overrides)
    with Timer() as t:
        run.trainer.fit(run.model, run.datamodule)
        metrics = run.trainer.test(run.model, run.datamodule, verbose=False)[0]
    examples = run.model.caption(run.datamodule.fixed_batch(3, split="test")["images"])
    result = {"command": f"python {COMMAND}", "date": str(date.today()), "machine": machine(),
              "epochs": args.epochs, "seconds": round(t.seconds, 1), "test": metrics, "generated": examples,
              "note": "80 training and 79 test images: a check that the pipeline runs, not a result"}
    write_json(args.out, result)
    print(json.dumps(result, indent=1))


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=["mnist", "ceiling", "coco"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--decoder_epochs", type=int, default=None)
    parser.add_argument("--root", default=str(REPO / "data" / "mnist_captions"))
    parser.add_argument("--ckpt", default=None, help="evaluate this checkpoint (of stage 2), train nothing")
    parser.add_argument("--embedding", default=None, help="stage 1's checkpoint: train only stage 2 on it")
    args = parser.parse_args(argv)
    if args.task == "mnist":
        args.epochs = args.epochs or 40
        args.decoder_epochs = args.decoder_epochs or 10
        mnist(args, extra)
    elif args.task == "ceiling":
        test_set_ceiling(args, extra)
    else:
        args.epochs = args.epochs or 3
        coco(args, extra)


if __name__ == "__main__":
    main()
