"""What the models share about checkpoints of networks given in the config."""

import lightning as L
from torch import nn


def restore_network_configs(module: L.LightningModule, checkpoint: dict) -> None:
    """Put the checkpoint's stored configs (``class_path`` and ``init_args``) back into ``module.hparams`` where
    they hold network objects instead.

    ``Model.load_from_checkpoint`` rebuilds networks given by ``class_path`` through LightningCLI's instantiator,
    which passes them to ``__init__`` as modules, so ``save_hyperparameters`` keeps the objects (and Lightning warns
    that they are ``nn.Module``s). A model saved again from there would store pickled networks, not their config.
    Only those entries are replaced: a setting given anew on the command line keeps its new value.
    """
    stored = checkpoint.get("hyper_parameters") or {}
    for key, value in list(module.hparams.items()):
        if isinstance(value, nn.Module) and isinstance(stored.get(key), dict):
            module.hparams[key] = stored[key]
