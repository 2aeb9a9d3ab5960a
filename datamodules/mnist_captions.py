"""MNIST captions: coloured MNIST digits on a black canvas, with five captions an image, written in the official
MS-COCO captions format so that ``CocoCaptionsDataModule`` reads it exactly as it reads COCO.

    python -m datamodules.mnist_captions --out data/mnist_captions --seed 0     # 20,000 / 1,000 / 1,000 images

Each 64 x 64 canvas holds one digit at one of five places ("in the top left"), or two digits side by side ("a red
seven to the left of a blue two") or one above the other ("a green one above a white five"), each digit in one of
eight colours. Every image gets five phrasings of what it shows. Training canvases use digits of MNIST's training
set; validation and test canvases use MNIST's test set (the first and second 5,000), so no test digit was ever
seen in training. What was drawn (the digits, their colours, MNIST indices and boxes, the layout) is stored in
each image's entry of the annotation file, next to the keys pycocotools reads: it is the record that captions,
retrieval, arithmetic and generated captions are checked against (``parse_caption``).

With 10 colours and 10 digits, a two-digit image has one of 20,000 contents and a one-digit image (5% of them)
one of 900, so a few test images share their content with another ("twins"). Retrieval counts a tie against the
query (``lightning_models.nn.vse.retrieval_ranks``), so even a perfect model ranks each twin second in image
search and sixth in image annotation: ``content_ids`` gives the perfect model (same content, same score), and
``benchmarks/vse.py`` states its R@K, the ceiling in each direction, next to the model's.
"""

import argparse
import json
import random
from pathlib import Path

import torch
from torchvision.io import encode_png

from datamodules.coco_captions import CocoCaptionsDataModule
from dl4.data_root import default_data_dir
from datamodules.mnist import load_mnist
from dl4.errors import ConfigError

SIZE, DIGIT = 64, 28
COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.2, 0.4, 1.0), "yellow": (1.0, 1.0, 0.0),
           "magenta": (1.0, 0.0, 1.0), "cyan": (0.0, 1.0, 1.0), "white": (1.0, 1.0, 1.0), "orange": (1.0, 0.5, 0.0),
           "pink": (1.0, 0.55, 0.75), "purple": (0.55, 0.15, 0.9)}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PLACES = {f"{row} {col}" if (row, col) != ("middle", "middle") else "centre": (c, r)
          for r, row in enumerate(("top", "middle", "bottom")) for c, col in enumerate(("left", "middle", "right"))}
SINGLE_FRACTION = 0.05  # the share of one-digit canvases; the rest are pairs, half side by side, half stacked
TEMPLATES = {  # {a}: the first digit (left, top, or the only one), {b}: the second; five phrasings each
    "side by side": ["a {a} to the left of a {b}", "a {b} to the right of a {a}", "a {a} on the left and a {b} on the "
                     "right", "a {b} on the right and a {a} on the left", "{a} left of {b}"],
    "stacked": ["a {a} above a {b}", "a {b} below a {a}", "a {a} on top and a {b} at the bottom",
                "a {b} at the bottom and a {a} on top", "{a} over {b}"],
    "single": ["a {a} in the {place}", "one {a} in the {place}", "a single {a} in the {place}",
               "the {place} has a {a}", "a {a} alone in the {place}"],
}
SPLITS = {"train": (True, 0), "val": (False, 0), "test": (False, 5000)}  # MNIST split and first index used
VERSION = 2


def content(record: dict) -> tuple:
    """What an image shows, as a comparable tuple: (layout, place or None, ((colour, digit), ...)), digits in
    reading order (left before right, top before bottom)."""
    return record["layout"], record.get("place"), tuple((d["colour"], d["digit"]) for d in record["digits"])


def parse_caption(text: str) -> tuple | None:
    """The content (as ``content`` gives it) a caption states, or None if it names no digit. The first relation
    word after the first digit says where that digit is: left/right (side by side), above/over/top or below/bottom
    (stacked); one digit has a place."""
    words = text.lower().split()
    digits, first_end = [], None
    for i in range(len(words) - 1):
        if words[i] in COLOURS and words[i + 1] in NUMBERS:
            digits.append((words[i], NUMBERS.index(words[i + 1])))
            first_end = first_end if first_end is not None else i + 2
    if not digits:
        return None
    if len(digits) == 1:
        joined = " ".join(words)
        place = next((p for p in PLACES if f"the {p}" in joined), None)
        return "single", place, tuple(digits)
    for word in words[first_end:]:
        if word in ("left", "right"):
            return "side by side", None, tuple(digits[:2] if word == "left" else digits[1::-1])
        if word in ("above", "over", "top", "below", "bottom"):
            first_on_top = word in ("above", "over", "top")
            return "stacked", None, tuple(digits[:2] if first_on_top else digits[1::-1])
    return None


def content_ids(records: list[dict]) -> torch.Tensor:
    """One id per distinct content (every digit, colour and the relation or place): a perfect model scores an
    image and a caption alike exactly when their ids agree."""
    ids: dict = {}
    return torch.tensor([ids.setdefault(content(r), len(ids)) for r in records])


def _layout(rng: random.Random) -> tuple[str, str | None, list[tuple[int, int]]]:
    """A layout, a place (one digit) and the digits' top-left corners, with a few pixels of jitter."""
    jitter = lambda: rng.randint(0, SIZE - 2 * DIGIT)  # noqa: E731  (0-8 pixels)
    if rng.random() < SINGLE_FRACTION:
        place = rng.choice(list(PLACES))
        col, row = PLACES[place]
        step = (SIZE - DIGIT - 4) // 2  # 16: the places' corners are 0, 16 and 32 pixels in, plus 0-4 of jitter
        return "single", place, [(col * step + rng.randint(0, 4), row * step + rng.randint(0, 4))]
    if rng.random() < 0.5:
        y = rng.randint(0, SIZE - DIGIT)
        return "side by side", None, [(jitter() // 2, y), (DIGIT + jitter() // 2 + 4, rng.randint(0, SIZE - DIGIT))]
    x = rng.randint(0, SIZE - DIGIT)
    return "stacked", None, [(x, jitter() // 2), (rng.randint(0, SIZE - DIGIT), DIGIT + jitter() // 2 + 4)]


def generate_split(images: torch.Tensor, labels: torch.Tensor, n: int, rng: random.Random, first: int,
                   split: str, offset: int) -> tuple[list[torch.Tensor], list[dict]]:
    """``n`` canvases (3, 64, 64) uint8 and their records, digits drawn from ``images[first:first + ...]``."""
    pool = list(range(first, first + (60000 if split == "train" else 5000)))
    canvases, records = [], []
    for i in range(n):
        layout, place, corners = _layout(rng)
        canvas = torch.zeros(3, SIZE, SIZE)
        digits = []
        for x, y in corners:
            index = rng.choice(pool)
            colour = rng.choice(list(COLOURS))
            ink = images[index].float() / 255 * torch.tensor(COLOURS[colour]).view(3, 1, 1)
            region = canvas[:, y:y + DIGIT, x:x + DIGIT]
            torch.maximum(region, ink, out=region)  # where two digits overlap, the brighter ink shows
            digits.append({"digit": int(labels[index]), "colour": colour, "mnist_index": index,
                           "box": [x, y, DIGIT, DIGIT]})
        canvases.append((canvas * 255).round().to(torch.uint8))
        record = {"id": offset + i + 1, "file_name": f"{offset + i + 1:012d}.png", "width": SIZE, "height": SIZE,
                  "layout": layout, "digits": digits, "mnist_split": "train" if split == "train" else "test"}
        if place is not None:
            record["place"] = place
        records.append(record)
    return canvases, records


def captions_for(record: dict, first_id: int) -> list[dict]:
    """The five captions of an image, as COCO annotation entries."""
    names = [f"{d['colour']} {NUMBERS[d['digit']]}" for d in record["digits"]]
    values = {"a": names[0], "b": names[-1], "place": record.get("place")}
    return [{"image_id": record["id"], "id": first_id + k, "caption": template.format(**values)}
            for k, template in enumerate(TEMPLATES[record["layout"]])]


def write_mnist_captions(out: str | Path, mnist_dir: str | None = None, seed: int = 0,
                         sizes: dict[str, int] | None = None) -> Path:
    """Writes ``out/{train,val,test}/<id>.png`` and ``out/annotations/captions_<split>.json`` from ``seed``; the
    same seed and sizes write identical files. A folder already written with the same settings is kept as it is;
    one written with other settings is an error (it is never overwritten)."""
    out = Path(out)
    sizes = sizes or {"train": 20000, "val": 1000, "test": 1000}
    manifest = {"generator": "dl4 mnist_captions", "version": VERSION, "seed": seed, "sizes": sizes}
    done = out / "annotations" / "manifest.json"
    if done.is_file():
        if json.loads(done.read_text()) != manifest:
            raise ConfigError(f"{out} holds MNIST captions written with other settings ({done.read_text().strip()}); "
                              f"give another folder (data.init_args.root) or delete that one")
        return out
    data_dir = mnist_dir or default_data_dir()
    mnist = {train: load_mnist(data_dir, train, download=False) for train in (True, False)}
    rng = random.Random(seed)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    offset = {"train": 0, "val": 1_000_000, "test": 2_000_000}
    for split, n in sizes.items():
        train, first = SPLITS[split]
        canvases, records = generate_split(*mnist[train], n, rng, first, split, offset[split])
        folder = out / split
        folder.mkdir(exist_ok=True)
        for canvas, record in zip(canvases, records):
            (folder / record["file_name"]).write_bytes(encode_png(canvas).numpy().tobytes())
        annotations = [a for r in records for a in captions_for(r, 5 * (r["id"] - 1) + 1)]
        coco = {"info": {"description": f"MNIST captions ({split}), dl4 generator v{VERSION}, seed {seed}"},
                "licenses": [], "images": records, "annotations": annotations}
        (out / "annotations" / f"captions_{split}.json").write_text(json.dumps(coco))
    done.write_text(json.dumps(manifest))  # last: a folder without it is incomplete and is written again
    return out


class MNISTCaptionsDataModule(CocoCaptionsDataModule):
    """``CocoCaptionsDataModule`` on MNIST captions, which ``prepare_data`` writes from ``seed`` (from the MNIST
    digits in ``data_dir``) when ``root`` does not hold them yet. The images are kept decoded in memory.

    Args:
        root: where the dataset is (or is written); default ``<data_dir>/mnist_captions``.
        seed, train_size, val_size, test_size: the generator's settings.
        The others are ``CocoCaptionsDataModule``'s.
    """

    def __init__(self, root: str | None = None, data_dir: str | None = None, seed: int = 0, train_size: int = 20000,
                 val_size: int = 1000, test_size: int = 1000, batch_size: int = 128, eval_batch_size: int = 500,
                 min_word_count: int = 1, num_workers: int = 0, predict_path: str | None = None,
                 predict_sentences: str | None = None, predict_queries: str | None = None, predict_top_k: int = 5):
        data_dir = data_dir or default_data_dir()
        super().__init__(root or str(Path(data_dir) / "mnist_captions"), train_split="train", val_split="val",
                         test_split="test", image_size=SIZE, resize=SIZE, random_crop=False, normalize=False,
                         min_word_count=min_word_count, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers, in_memory=True, predict_path=predict_path,
                         predict_sentences=predict_sentences, predict_queries=predict_queries,
                         predict_top_k=predict_top_k)
        self.mnist_dir, self.seed = data_dir, seed
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}

    def prepare_data(self):
        write_mnist_captions(self.root, self.mnist_dir, self.seed, self.sizes)

    def records(self, split: str) -> dict[int, dict]:
        """The generating record of every image of a split, by image id."""
        return {img["id"]: img for img in self.coco(split).dataset["images"]}

    def caption_accuracy(self, split: str, image_ids: list[int], captions: list[str]) -> float:
        """The fraction of captions that state exactly what their image shows: every digit, colour and the
        relation (or the place)."""
        records = self.records(split)
        return sum(parse_caption(c) == content(records[i]) for i, c in zip(image_ids, captions)) / max(len(captions), 1)

    def arithmetic_queries(self, split: str, n: int | None = None) -> list[dict]:
        """Queries for image(red 3) - v("red") + v(c) on the split's one-digit images, each with every other
        colour c (the first pass gives every image the next colour in ``COLOURS``, the second the one after, ...);
        a hit is an image holding that digit in the new colour (``arithmetic_hit``). The first ``n`` (all: None).
        A two-digit image gives no query: which of its digits should change colour is not defined."""
        names = list(COLOURS)
        singles = [(image_id, r["digits"][0]) for image_id, r in self.records(split).items() if len(r["digits"]) == 1]
        out = []
        for shift in range(1, len(names)):
            for image_id, d in singles:
                new = names[(names.index(d["colour"]) + shift) % len(names)]
                out.append({"image_id": image_id, "minus": d["colour"], "plus": new, "target": (new, d["digit"])})
        return out[:n]

    def arithmetic_hit(self, split: str, query: dict, image_id: int) -> bool:
        return query["target"] in {(d["colour"], d["digit"]) for d in self.records(split)[image_id]["digits"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(default_data_dir()) / "mnist_captions"))
    parser.add_argument("--mnist_dir", default=None, help="the folder holding MNIST/raw (default: the data root)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", type=int, nargs=3, default=[20000, 1000, 1000], metavar=("TRAIN", "VAL", "TEST"))
    args = parser.parse_args(argv)
    out = write_mnist_captions(args.out, args.mnist_dir, args.seed, dict(zip(("train", "val", "test"), args.sizes)))
    print(f"MNIST captions in {out}")


if __name__ == "__main__":
    main()
