"""What the models share about checkpoints of networks given in the config."""

import warnings

import lightning as L
from torch import nn


def restore_network_configs(module: L.LightningModule, checkpoint: dict) -> None:
    """Put the checkpoint's stored configs (``class_path`` and ``init_args``) back into ``module.hparams`` where
    they hold network objects instead.

    ``Model.load_from_checkpoint`` rebuilds networks given by ``class_path`` through LightningCLI's instantiator,
    which passes them to ``__init__`` as modules, so ``save_hyperparameters`` keeps the objects. A model saved again
    from there would store pickled networks, not their config. Only those entries are replaced: a setting given anew
    on the command line keeps its new value.
    """
    stored = checkpoint.get("hyper_parameters") or {}
    for key, value in list(module.hparams.items()):
        if isinstance(value, nn.Module) and isinstance(stored.get(key), dict):
            module.hparams[key] = stored[key]


class ConfiguredNetworks(L.LightningModule):
    """A LightningModule whose networks come from its config (``class_path`` and ``init_args``): loading its
    checkpoint keeps the networks' configs in ``hparams`` (``restore_network_configs``).

    Lightning warns, while ``load_from_checkpoint`` runs ``__init__`` with the networks its instantiator rebuilt from
    the checkpoint's configs, that those arguments are ``nn.Module``s "saved during checkpointing". Here they are
    not: ``on_load_checkpoint`` puts the configs back before anything is saved (``tests/test_dl4/test_cli.py``
    loads a checkpoint of every config and checks both), so that one warning is silenced for the load; a model
    built in Python with network objects still gets it. So is the deprecation notice jsonargparse gives Lightning's
    instantiator (Lightning's call, which dl4 cannot change).
    """

    @classmethod
    def load_from_checkpoint(cls, *args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Attribute '\w+' is an instance of `nn.Module`")
            # Lightning 2.6's instantiator calls jsonargparse's instantiate_classes, deprecated in jsonargparse 4.49
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="lightning.pytorch.cli")
            return super().load_from_checkpoint(*args, **kwargs)

    def on_load_checkpoint(self, checkpoint):
        restore_network_configs(self, checkpoint)
