"""Every config's model trains with the optimiser and schedule its config gives (``model.init_args.optimizer``,
one pair per player for the GAN), built over every parameter that trains, the ones a model builds in ``setup``
included (the VSE's vocabulary-sized layers); a config in LightningCLI's old form gets one line."""

import importlib

import lightning as L
import pytest
import yaml

from conftest import CONFIGS, build_from_config, dl4_here

NEEDS_MORE = {"vse_coco.yaml": "full COCO (its model and optimiser are vse_mnist_captions.yaml's)",
              "vse_mnist_captions_decoder.yaml": "a trained embedding's checkpoint (tests/test_lightning_models)"}

def one_config_per_model() -> list[str]:
    """The first config (by name) of each model class: the optimiser's wiring is the class's; every config's
    numbers are checked by benchmarks/first_steps.py."""
    first = {}
    for path in sorted(CONFIGS.glob("*.yaml")):
        if path.name not in NEEDS_MORE:
            first.setdefault(yaml.safe_load(path.read_text())["model"]["class_path"], path.name)
    return sorted(first.values())


PLAYERS = {"optimizer": None, "d_optimizer": "discriminator", "g_optimizer": "generator"}  # optimiser: its network


class Stop(Exception):
    pass


class Record(L.Callback):
    """What Lightning trains with, seen when training starts (after setup and configure_optimizers); then stops."""

    def on_train_start(self, trainer, pl_module):
        self.optimizers, self.schedulers = trainer.optimizers, [c.scheduler for c in trainer.lr_scheduler_configs]
        raise Stop


def by_path(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("config", one_config_per_model())
def test_each_model_trains_with_its_configs_optimiser_over_every_trainable_parameter(config, mnist_root, monkeypatch):
    monkeypatch.setenv("DL4_DATA_DIR", str(mnist_root))
    given = yaml.safe_load((CONFIGS / config).read_text())["model"]["init_args"]
    cli = build_from_config(CONFIGS / config, "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]",
                            "--trainer.num_sanity_val_steps=0", "--trainer.enable_checkpointing=false")
    record = Record()
    cli.trainer.callbacks.append(record)
    with pytest.raises(Stop):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    model = cli.model
    keys = [k for k in PLAYERS if k in given]
    assert keys, f"{config} gives no optimiser"
    assert len(record.optimizers) == len(keys)
    for key, opt in zip(keys, record.optimizers):  # the GAN's: [D's, G's]
        spec = given[key]
        assert type(opt) is by_path(spec["class_path"]), (key, type(opt))
        for name, value in (spec.get("init_args") or {}).items():
            if name in opt.defaults and not isinstance(value, (list, dict)):
                assert opt.defaults[name] == value, (key, name)
        net = model if PLAYERS[key] is None else getattr(model, PLAYERS[key])
        optimised = {id(p) for g in opt.param_groups for p in g["params"]}
        trainable = {id(p) for p in net.parameters() if p.requires_grad}
        assert optimised == trainable, f"{key}: {len(trainable - optimised)} trainable parameters not optimised"
    schedules = [v["class_path"] for k, v in given.items() if k.endswith("lr_scheduler") and v]
    assert sorted(type(s).__name__ for s in record.schedulers) == sorted(p.rsplit(".", 1)[1] for p in schedules) or \
        config.startswith("memn2n")  # MemN2N's default schedule (HalvingLR) is built even when none is given


@pytest.mark.parametrize("where", ["file", "flag"])
def test_lightningclis_top_level_optimizer_gets_one_line_saying_where_it_goes(where, tmp_path, monkeypatch, capfd):
    args = ["fit", "--config", CONFIGS / "vae_mnist.yaml"]
    if where == "file":
        (tmp_path / "old.yaml").write_text("optimizer:\n  class_path: torch.optim.SGD\n  init_args: {lr: 0.1}\n")
        args += ["--config", tmp_path / "old.yaml"]
    else:
        args += ["--optimizer.init_args.lr=0.1"]
    out = dl4_here(*args, cwd=tmp_path, monkeypatch=monkeypatch, capture=capfd)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("dl4: error: ") and "model.init_args.optimizer" in line
    assert ("old.yaml" in line) if where == "file" else ("--model.init_args.optimizer.init_args.lr=0.1" in line)
    assert not (tmp_path / "runs").exists()
