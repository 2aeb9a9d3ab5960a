"""The user's own inputs to ``dl4 predict``, read and checked before anything runs.

Each datamodule's ``predict_path`` (and the VSE's ``predict_sentences``) points at one of these; a file that cannot
be used raises ``InputError`` naming it (and the line), which ``dl4`` prints as one line before any output exists.

- Images: a folder (its PNG, JPEG, GIF and WebP files, sorted by name) or one image file, decoded by torchvision.
  ``digit_images`` makes them as MNIST is: grey, a light digit on a dark ground (a dark digit on light paper, told
  by the border, is inverted), padded to a square and resized to the model's input size.
- Bit sequences (the NTM's tasks): a text file of one vector per line as 0/1 characters, sequences separated by a
  blank line, ``#`` starting a comment.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_image

from datamodules.tensors import TensorBatchDataset
from dl4.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")


def image_files(path: str | Path) -> list[Path]:
    """The images a predict path names: the file itself, or the image files of the folder, sorted by name."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: no such file or folder; give a folder of images or one image file")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{path}: no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)} files)")
    return files


def read_image(path: Path, mode: ImageReadMode) -> torch.Tensor:
    """One image as uint8 (C, H, W), or an ``InputError`` naming the file."""
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty; remove it or replace it with an image")
    try:
        return decode_image(str(path), mode=mode)
    except (RuntimeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: not a readable image ({reason}); remove it or save it as PNG or JPEG") from None


def as_digit(image: torch.Tensor, size: int) -> torch.Tensor:
    """A grey uint8 (1, H, W) image -> (1, size, size) uint8 as MNIST draws digits: light on dark (inverted when the
    border is lighter than mid-grey, i.e. a dark digit on paper), padded with the ground to a square, resized."""
    x = image.float()
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)
    if border.mean() > 127.5:
        x = 255.0 - x
    h, w = x.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    x = F.pad(x, (left, side - w - left, top, side - h - top), value=0.0)
    if side != size:
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return x.round().clamp(0, 255).to(torch.uint8)


def digit_images(path: str | Path, size: int) -> tuple[list[str], torch.Tensor]:
    """The names and (N, 1, size, size) uint8 digits of a predict path (see ``as_digit``)."""
    files = image_files(path)
    return [f.name for f in files], torch.stack([as_digit(read_image(f, ImageReadMode.GRAY), size) for f in files])


def noise_seed_inputs(count: int, seed: int) -> tuple[list[str], TensorBatchDataset]:
    """``predict_samples``' inputs: sample i is drawn from the noise of seed ``seed * 1000000 + i`` (a seed always
    gives the same samples, whatever the batch or the device); names and the dataset of those seeds."""
    first = seed * 1_000_000
    return [f"sample {i} of seed {seed}" for i in range(count)], TensorBatchDataset(torch.arange(first, first + count))


def user_lines(path: str | Path | None) -> list[tuple[int, str]]:
    """The non-empty lines of a text file of the user's (sentences, queries) with their numbers; none for None."""
    if path is None:
        return []
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; give a text file, one sentence (or query) a line")
    try:
        lines = [(n, line.strip()) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if line.strip()]
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text; save it as UTF-8, one sentence a line") from None
    if not lines:
        raise InputError(f"{path}: the file has no lines to read")
    return lines


def read_bit_sequences(path: str | Path, width: int) -> tuple[list[str], list[torch.Tensor]]:
    """The sequences of a bit file: names ``<file>:<first line>`` and (L, width) float tensors."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; give a text file of bit vectors (one per line, 0/1 characters, "
                         "a blank line between sequences)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text; write one vector per line as 0/1 characters") from None
    names, sequences, current, start = [], [], [], 0
    for number, line in enumerate([*lines, ""], 1):
        text = line.split("#", 1)[0].replace(" ", "").strip()
        if not text:
            if current:
                names.append(f"{path.name}:{start}")
                sequences.append(torch.tensor(current, dtype=torch.float32))
                current = []
            continue
        if set(text) - {"0", "1"}:
            raise InputError(f"{path}, line {number}: {line.strip()[:40]!r} is not a vector of 0/1 bits")
        if len(text) != width:
            raise InputError(f"{path}, line {number}: a vector of {len(text)} bits, the model's width is {width} "
                             f"(data.width)")
        start = start if current else number
        current.append([float(c) for c in text])
    if not sequences:
        raise InputError(f"{path}: no bit vectors in the file (one vector per line as 0/1 characters)")
    return names, sequences
