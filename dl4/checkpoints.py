"""The checkpoint a ``dl4`` command is given: read and checked before any run is created, ``last`` found, and the
checkpoint's saved model settings merged with the config in a stated order.

Precedence (highest first): explicit ``--model.*`` flags on the command line, then the checkpoint's saved model
hyperparameters, then the config files. So a checkpoint is always rebuilt with the network it was trained with,
even if the YAML changed since, and an evaluation setting given on the command line
(``--model.init_args.iw_samples=5000``) is used. A flag that changes the network's shape is refused when the
weights are loaded (``dl4`` names the mismatching tensor).
"""

import os
from pathlib import Path

import torch

from dl4.errors import ConfigError


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: missing, truncated, not a Lightning checkpoint, or of another model."""


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint at ``path`` (memory-mapped: only what is read is loaded), or a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--ckpt_path {path}: no such file" if not path.exists() else
                              f"--ckpt_path {path}: is a folder, not a checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, not a torch file, a pickle with foreign objects, ...
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"--ckpt_path {path}: not a readable checkpoint (truncated, corrupt or not written "
                              f"by torch.save: {why[:200]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "pytorch-lightning_version" not in ckpt:
        raise CheckpointError(f"--ckpt_path {path}: a torch file, but not a Lightning checkpoint (no state_dict "
                              "and pytorch-lightning_version): save models with Trainer.save_checkpoint")
    return ckpt


def model_class(ckpt: dict) -> str | None:
    return (ckpt.get("hyper_parameters") or {}).get("_class_path")


def check_model_class(ckpt: dict, path, configured: str) -> None:
    stored = model_class(ckpt)
    if stored and stored.rsplit(".", 1)[-1] != configured.rsplit(".", 1)[-1]:
        raise CheckpointError(f"--ckpt_path {path} holds a {stored}, but the config's model is {configured}: "
                              f"use the config it was trained with (or --model={stored.rsplit('.', 1)[-1]})")


def explicit_model_keys(argv: list[str]) -> list[list[str]]:
    """The model settings given as flags (``--model.init_args.encoder.init_args.code_dim=64`` ->
    ``[encoder, code_dim]``), without jsonargparse's ``init_args`` levels."""
    keys = []
    for arg in argv:
        if arg.startswith("--model."):
            path = arg[len("--model."):].split("=", 1)[0].split(".")
            keys.append([part for part in path if part not in ("init_args", "dict_kwargs")])
    return keys


def drop_key(hparams: dict, path: list[str]) -> None:
    """Remove ``path`` from nested hyperparameters whose networks are ``{class_path, init_args}`` dicts."""
    node = hparams
    for i, part in enumerate(path):
        if isinstance(node, dict) and isinstance(node.get("init_args"), dict) and part not in node:
            node = node["init_args"]
        if not isinstance(node, dict) or part not in node:
            return
        if i == len(path) - 1:
            del node[part]
        else:
            node = node[part]


def find_last(folders: list[Path], configured: str) -> Path:
    """The newest ``last.ckpt`` of a ``configured`` model in ``folders`` (each a checkpoint folder or a glob)."""
    found = []
    for folder in folders:
        for path in sorted(Path().glob(str(folder)) if any(c in str(folder) for c in "*?") else [folder]):
            ckpt = Path(path) / "last.ckpt"
            if ckpt.is_file():
                found.append(ckpt)
    matching = []
    for ckpt in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            stored = model_class(read_checkpoint(ckpt))
        except CheckpointError:
            continue
        if stored is None or stored.rsplit(".", 1)[-1] == configured.rsplit(".", 1)[-1]:
            matching.append(ckpt)
    if not matching:
        where = ", ".join(str(f) for f in folders)
        raise CheckpointError(f"--ckpt_path last: no last.ckpt of a {configured.rsplit('.', 1)[-1]} in {where}; "
                              "start without --ckpt_path, or give the checkpoint's path")
    return matching[0]


def checkpoint_folders(trainer_config) -> list[Path]:
    """Where the config's runs keep checkpoints (ModelCheckpoint's ``dirpath`` if set, else under the logger's
    ``save_dir``/``name``/<version>, else ``default_root_dir``), as globs over the runs."""
    root = Path(trainer_config.get("default_root_dir") or os.getcwd())
    folders = []
    for cb in trainer_config.get("callbacks") or []:
        dirpath = _init_args(cb).get("dirpath")
        if dirpath:
            folders.append(Path(dirpath))
    logger = trainer_config.get("logger")
    for lg in (logger if isinstance(logger, list) else [logger]):
        if lg in (None, False):
            continue
        if lg is True:
            folders.append(root / "lightning_logs" / "version_*" / "checkpoints")
            continue
        args, name = _init_args(lg), str(getattr(lg, "class_path", ""))
        save_dir = Path(args.get("save_dir") or root)
        project = args.get("project") or "lightning_logs" if name.endswith("WandbLogger") else \
            args.get("name") or "lightning_logs"
        folders.append(save_dir / project / "*" / "checkpoints")
    folders.append(root / "checkpoints")
    return folders


def _init_args(namespace) -> dict:
    args = getattr(namespace, "init_args", None)
    return dict(vars(args)) if args is not None and hasattr(args, "__dict__") else dict(args or {})
