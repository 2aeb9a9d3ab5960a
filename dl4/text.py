"""Captions as word ids and back: the vocabulary's first ids and ``decode``, shared by the VSE's decoder
(``lightning_models/nn/vse.py``) and the caption data (``datamodules/coco_captions.py``)."""

import torch

PAD, START, END = 0, 1, 2  # the vocabulary's first ids (then <unk>), as ``datamodules.coco_captions.Vocabulary`` has


def decode(ids, words: list[str]) -> str:
    """Caption ids -> text, up to the first ``<end>``, without ``<start>`` and ``<pad>``."""
    out = []
    for i in (ids.tolist() if torch.is_tensor(ids) else ids):
        if i == END:
            break
        if i not in (PAD, START):
            out.append(words[i])
    return " ".join(out)
