"""Precomputed CNN features for ``CocoCaptionsDataModule(features=...)``: a torchvision backbone run once over every
split's images (here, not in ``datamodules/``, because it puts a model on the data).

    python -m dl4.features features --root coco --backbone resnet152 --out features
"""

from pathlib import Path

import numpy as np
import torch

from datamodules.coco_captions import CocoCaptionsDataModule
from lightning_models.nn.vse import TorchvisionEncoder


@torch.no_grad()
def precompute_features(datamodule: CocoCaptionsDataModule, encoder: torch.nn.Module, out: Path,
                        device: str = "cpu") -> list[Path]:
    """Runs ``encoder`` (images -> (B, F)) over every split's images (centre crops) and writes ``out/<split>.npy``,
    one row per image in image-id order, for ``CocoCaptionsDataModule(features=...)``."""
    datamodule.random_crop = False
    datamodule.setup()
    encoder.eval().to(device)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split in ("train", "val", "test"):
        rows = []
        for batch in datamodule.loader(split, shuffle=False):
            batch = datamodule.on_after_batch_transfer(batch, 0)
            rows.append(encoder(batch["images"].to(device)).float().cpu())
        path = out / f"{datamodule.splits[split]}.npy"
        np.save(path, torch.cat(rows).numpy())
        written.append(path)
    return written


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="Precompute image features for CocoCaptionsDataModule(features=)")
    parser.add_argument("command", choices=["features"])
    parser.add_argument("--root", default="coco")
    parser.add_argument("--train_split", default="train2017")
    parser.add_argument("--val_split", default="val2017")
    parser.add_argument("--karpathy_split", default=None)
    parser.add_argument("--backbone", default="resnet152")
    parser.add_argument("--weights", default="DEFAULT", help="torchvision weights name, a .pth file, or none")
    parser.add_argument("--out", default="features")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    dm = CocoCaptionsDataModule(args.root, args.train_split, args.val_split, karpathy_split=args.karpathy_split,
                                random_crop=False)
    encoder = TorchvisionEncoder(args.backbone, None if args.weights == "none" else args.weights)
    for path in precompute_features(dm, encoder, dm.root / args.out, args.device):
        print(path)


if __name__ == "__main__":
    main()
