"""``dl4 data``: every dataset dl4 uses, fetched or generated into the data root, and verified.

    dl4 data download                      # all of them into $DL4_DATA_DIR (default ./data)
    dl4 data download mnist babi --root /scratch/data
    dl4 data download mnist-captions --seed 1 --root /tmp/d
    dl4 data list                          # what is there, verified or not, and where

MNIST and bAbI come from their official sources, checked against the published checksums the datamodules check
before use (``datamodules/download.py``); the generated datasets are written from a seed by the code that the
datamodules use. A second call verifies what is there and does nothing else. Real COCO (19 GB of images) is not
fetched: ``coco`` says how to get it.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from dl4.data_root import DatasetNotFoundError, default_data_dir
from datamodules.download import DOWNLOADS, check
from datamodules.integrity import CorruptDataError
from dl4.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NTM_CONFIGS = ("ntm_copy", "ntm_repeat_copy", "ntm_associative_recall")
DATASETS = {
    "mnist": "MNIST, 70,000 digits (LeCun et al.), torchvision's layout: MNIST/raw",
    "babi": "bAbI v1.2 tasks 1-20, en and en-10k (Weston et al.): babi/tasks_1-20_v1-2",
    "mnist-captions": "generated from MNIST and --seed: coloured digits, 5 captions each, COCO format: mnist_captions",
    "ntm-tasks": "generated from --seed: the NTM configs' fixed validation and test sets: algorithmic/<task>_seed<N>.pt",
    "coco": "MS-COCO 2014/2017 captions: not fetched (19 GB); how to get it is printed",
}
FOLDERS = {"mnist": "MNIST/raw", "babi": "babi/tasks_1-20_v1-2", "mnist-captions": "mnist_captions",
           "ntm-tasks": "algorithmic"}  # where each lands in the data root
COCO_HOWTO = ("get the images (train2017.zip, val2017.zip) and annotations_trainval2017.zip from "
              "https://cocodataset.org/#download, unzip them into one folder (annotations/captions_<split>.json, "
              "<split>/*.jpg) and give it as --data.init_args.root=... (configs/vse_coco.yaml)")


def ntm_sets(config: str, seed: int) -> dict:
    """The validation and test batches a config's AlgorithmicTasksDataModule evaluates on, with ``seed``."""
    from omegaconf import OmegaConf

    from datamodules.algorithmic import AlgorithmicTasksDataModule

    settings = {**OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{config}.yaml"))["data"]["init_args"], "seed": seed}
    dm = AlgorithmicTasksDataModule(**settings)
    dm.setup()
    return {"config": f"configs/{config}.yaml", "settings": settings,
            "val": dm.val_batches, "test": dm.test_batches}  # each a list of (inputs, targets, length), (T, B, C)


def ntm_path(root: Path, config: str, seed: int) -> Path:
    return root / "algorithmic" / f"{config.removeprefix('ntm_')}_seed{seed}.pt"


def write_ntm_sets(root: Path, seed: int) -> list[str]:
    written = []
    for config in NTM_CONFIGS:
        path, sets = ntm_path(root, config, seed), ntm_sets(config, seed)
        if path.is_file():  # verified by regenerating it; a file that differs is the user's, and kept
            if not _same_sets(torch.load(path, weights_only=True), sets):
                raise ConfigError(f"{path}: not the sets configs/{config}.yaml gives with seed {seed} (written by "
                                  f"another version or config); move or delete it, then run the same command again")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(sets, path.with_name(path.name + ".part"))
        os.replace(path.with_name(path.name + ".part"), path)
        written.append(str(path.relative_to(root)))
    return written


def _same_sets(a: dict, b: dict) -> bool:
    return a["settings"] == b["settings"] and all(
        len(a[k]) == len(b[k]) and all(x[2] == y[2] and torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
                                       for x, y in zip(a[k], b[k])) for k in ("val", "test"))


def download(name: str, root: Path, seed: int, mirror: str | None) -> None:
    """Fetches or writes one dataset into ``root``; what was there and verified is kept as it is."""
    print(f"{name}: {DATASETS[name]}")
    if name in DOWNLOADS:
        written = DOWNLOADS[name](root, mirror)
    elif name == "mnist-captions":
        from datamodules.mnist_captions import write_mnist_captions

        DOWNLOADS["mnist"](root, mirror)
        folder = root / "mnist_captions"
        before = (folder / "annotations" / "manifest.json").is_file()
        write_mnist_captions(folder, str(root), seed)
        written = [] if before else ["mnist_captions"]
    elif name == "ntm-tasks":
        written = write_ntm_sets(root, seed)
    else:
        return print(f"  not fetched: {COCO_HOWTO}")
    where = root / FOLDERS[name]
    print(f"  written and verified: {where}" if written else f"  already there and verified: {where}")


def listing(root: Path, seed: int) -> list[str]:
    """One line per dataset: its state (verified, missing, corrupt, written, ...) and where it is."""
    lines = [f"data root: {root}"]
    for name in ("mnist", "babi"):
        verified, missing, corrupt = check(root, name)
        where = root / FOLDERS[name]
        if corrupt:
            state = f"CORRUPT: {len(corrupt)} file(s) not the published ones ({', '.join(corrupt[:2])}...)"
        elif not verified:
            state = f"missing (dl4 data download {name})"
        elif missing:
            state = f"incomplete: {len(verified)} of {len(verified) + len(missing)} files verified; missing " \
                    f"{', '.join(missing[:2])}{', ...' if len(missing) > 2 else ''}"
        else:
            state = f"verified ({len(verified)} files, published SHA-256s)"
        lines.append(f"{name:18s} {state}: {where}")
    manifest = root / "mnist_captions" / "annotations" / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        state = f"generated (seed {m['seed']}, {'/'.join(str(v) for v in m['sizes'].values())} images)"
    else:
        state = "incomplete (dl4 data download mnist-captions)" if manifest.parent.parent.is_dir() else "not written"
    lines.append(f"{'mnist-captions':18s} {state}: {manifest.parent.parent}")
    for config in NTM_CONFIGS:
        path = ntm_path(root, config, seed)
        if not path.is_file():
            state = f"not written (dl4 data download ntm-tasks --seed {seed})"
        else:
            state = "generated, verified (regenerated from the seed)" if _same_sets(
                torch.load(path, weights_only=True), ntm_sets(config, seed)) else \
                f"DIFFERENT from configs/{config}.yaml with seed {seed} (written by another version or config)"
        lines.append(f"{config.removeprefix('ntm_'):18s} {state}: {path}")
    for annotations in sorted(root.glob("*/annotations/captions_*.json")):
        if annotations.parent.parent.name != "mnist_captions":
            lines.append(f"{'coco-format':18s} captions (not checksummed): {annotations}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dl4 data", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="datasets:\n" + "\n".join(f"  {k:15s} {v}" for k, v in DATASETS.items()))
    parser.add_argument("action", choices=("download", "list"))
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"datasets to download (default all): "
                                                                 f"{', '.join(DATASETS)}")
    parser.add_argument("--root", type=Path, default=None, help="the data root (default $DL4_DATA_DIR or ./data)")
    parser.add_argument("--seed", type=int, default=0, help="the generated datasets' seed (default 0)")
    parser.add_argument("--mirror", default=os.environ.get("DL4_DATA_MIRROR"),
                        help="fetch from this mirror instead of the official sources: URL/mnist/<file>.gz, "
                             "URL/babi/tasks_1-20_v1-2.tar.gz (default $DL4_DATA_MIRROR)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in DATASETS]
    if unknown:
        parser.error(f"unknown dataset {unknown[0]!r}; choose from {', '.join(DATASETS)}")
    root = (args.root or Path(default_data_dir())).resolve()
    if args.action == "list":
        print("\n".join(listing(root, args.seed)))
        return 0
    failed = 0
    for name in args.names or [n for n in DATASETS if n != "coco"]:  # each tried, even after another failed
        try:
            download(name, root, args.seed, args.mirror)
        except (DatasetNotFoundError, CorruptDataError, ConfigError) as err:
            print(f"dl4: error: {err}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0
