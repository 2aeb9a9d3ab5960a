"""``dl4/internals.py`` is the one project file that touches private names of Lightning, torch and W&B: an AST check
of every other file (library code, benchmarks, tests), and a test of each use there, which fails when an upgrade
changes what the use relies on."""

import ast
import importlib
import inspect
import re
from functools import cache
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
LIBRARIES = ("lightning", "torch", "wandb")
PRIVATE_MODULES = ("wandb.sdk", "wandb.proto")  # W&B's public surface is ``wandb.*``; these are its internals
FOLDERS = ("dl4", "lightning_models", "datamodules", "callbacks", "benchmarks", "tests")
INTERNALS = REPO / "dl4" / "internals.py"
OWN_TESTS = Path(__file__).resolve()  # the tests of each use in dl4/internals.py (below) read them too


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def project_files() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (REPO / folder).rglob("*.py") if p not in (INTERNALS, OWN_TESTS))


@cache
def project_private_names() -> frozenset[str]:
    """The private names the project itself defines: functions and methods, ``self._x = ...`` attributes, and
    module- or class-level assignments."""
    names = set()
    for path in project_files() + [INTERNALS]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return frozenset(n for n in names if private(n))


@cache
def library_private_names(cls: type) -> frozenset[str]:
    """The private attributes and methods a library class (and its library bases) has: what ``hasattr`` sees,
    and the ``self._x`` its methods assign."""
    names = set()
    for base in cls.__mro__:
        if base is object or not base.__module__.split(".")[0] in LIBRARIES:
            continue
        names |= {n for n in vars(base) if private(n)}
        try:
            source = inspect.getsource(base)
        except (OSError, TypeError):
            continue
        names |= set(re.findall(r"self\.(_[a-zA-Z]\w*)\s*[:=]", source))
    return frozenset(n for n in names if private(n))


def resolve(expr: ast.expr, imports: dict[str, str], classes: dict[str, list[type]]) -> list[type]:
    """The classes a base-class expression stands for (through the file's imports and its own classes), whose
    library ancestors ``library_private_names`` reads."""
    if isinstance(expr, ast.Name) and expr.id in classes:
        return classes[expr.id]
    parts = []
    while isinstance(expr, ast.Attribute):
        parts.insert(0, expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name) or expr.id not in imports:
        return []
    dotted = ".".join([imports[expr.id], *parts])
    module, _, name = dotted.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        try:
            found = importlib.import_module(dotted)
        except ImportError:
            return []
    return [found] if isinstance(found, type) else []


def private_uses(source: str, filename: str = "<source>") -> list[str]:
    """Every place ``source`` touches a private name of Lightning, torch or W&B: a private module or name imported, a
    private attribute of a library module or of another object read, and, in a class with a library base, a private
    attribute of that base read (``self._x``, ``super()._x``) or a private method of it overridden."""
    tree = ast.parse(source)
    found, imports, classes = [], {}, {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                imports[(alias.asname or alias.name).split(".")[0]] = alias.name if alias.asname else \
                    alias.name.split(".")[0]
                if alias.name.split(".")[0] in LIBRARIES and (any(private(p) for p in alias.name.split("."))
                                                              or alias.name.startswith(PRIVATE_MODULES)):
                    found.append(f"{filename}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                imports[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            if node.module.split(".")[0] in LIBRARIES and (
                    any(private(p) for p in node.module.split(".")) or node.module.startswith(PRIVATE_MODULES)
                    or any(private(a.name) for a in node.names)):
                found.append(f"{filename}:{node.lineno}: from {node.module} import ...")
    own = project_private_names()

    def library_bases(cls_node: ast.ClassDef) -> list[type]:
        return [c for b in cls_node.bases for c in resolve(b, imports, classes)]

    def visit(node: ast.AST, cls: ast.ClassDef | None):
        if isinstance(node, ast.ClassDef):
            classes[node.name] = library_bases(node)
            for child in node.body:
                visit(child, node)
            return
        bases = classes.get(cls.name, []) if cls is not None else []
        inherited = set().union(*(library_private_names(b) for b in bases)) if bases else set()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and cls is not None and node.name in inherited:
            found.append(f"{filename}:{node.lineno}: overrides {node.name} of {bases[0].__name__}")
        if isinstance(node, ast.Attribute) and private(node.attr):
            value = node.value
            if isinstance(value, ast.Name) and value.id in ("self", "cls") or \
                    isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super":
                if node.attr in inherited:
                    found.append(f"{filename}:{node.lineno}: {ast.unparse(node)} (of {bases[0].__name__})")
            else:
                root = value
                while isinstance(root, ast.Attribute):
                    root = root.value
                library_module = isinstance(root, ast.Name) and imports.get(root.id, "").split(".")[0] in LIBRARIES
                if library_module or node.attr not in own:
                    found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.ClassDef) or cls is None:
                visit(child, cls)
            else:
                visit(child, None)

    visit(tree, None)
    return found


def test_no_project_file_outside_internals_touches_a_private_name_of_lightning_torch_or_wandb():
    found = [use for path in project_files()
             for use in private_uses(path.read_text(), str(path.relative_to(REPO)))]
    assert not found, "private names outside dl4/internals.py:\n" + "\n".join(found)


@pytest.mark.parametrize("source, caught", [
    ("def f(trainer):\n    return trainer._logger_connector.should_update_logs\n", "trainer._logger_connector"),
    ("import torch\nE = torch._dynamo.exc.BackendCompilerFailed\n", "torch._dynamo"),
    ("from wandb.proto import wandb_internal_pb2\n", "from wandb.proto"),
    ("import lightning as L\nclass M(L.LightningModule):\n    def f(self):\n        return self._trainer\n",
     "self._trainer"),
    ("from lightning.pytorch.cli import LightningCLI\nclass C(LightningCLI):\n    def _parse_ckpt_path(self):\n"
     "        pass\n", "overrides _parse_ckpt_path"),
    ("from lightning.pytorch.callbacks import ModelCheckpoint\nclass T(ModelCheckpoint):\n    def f(self, t):\n"
     "        super()._save_last_checkpoint(t, {})\n", "super()._save_last_checkpoint"),
])
def test_the_check_catches_each_kind_of_private_use(source, caught):
    found = private_uses(source)
    assert any(caught in use for use in found), found


def test_the_check_leaves_a_classs_own_private_names_alone():
    source = ("import lightning as L\nclass M(L.LightningModule):\n    def __init__(self):\n        super().__init__()\n"
              "        self._g_loss = None\n    def _evaluate(self, batch):\n        return self._g_loss\n")
    assert private_uses(source) == []


# --- each use in dl4/internals.py, on the installed versions ---

def test_ckpt_path_hook():
    """LightningCLI still reads --ckpt_path's hyperparameters in ``_parse_ckpt_path``, called from its
    constructor between parsing and building (the behaviour: tests/test_faults.py's checkpoint-settings tests)."""
    from lightning.pytorch.cli import LightningCLI

    from dl4.cli import DL4CLI

    source = inspect.getsource(LightningCLI.__init__)
    assert source.index("self.parse_arguments(") < source.index("self._parse_ckpt_path()") < \
        source.index("self.instantiate_classes()")
    assert DL4CLI._parse_ckpt_path is not LightningCLI._parse_ckpt_path


def test_logger_writes_this_step(tmp_path):
    """True on the steps whose logged values reach the logger: every log_every_n_steps-th batch, and the last."""
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    from dl4.internals import logger_writes_this_step

    seen = []

    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            seen.append(logger_writes_this_step(self.trainer))
            return super().training_step(batch, batch_idx)

    trainer = L.Trainer(max_steps=7, log_every_n_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(Model())
    assert seen == [False, False, True, False, False, True, False]
    assert logger_writes_this_step(None) is False


def test_hpc_checkpoint_path(tmp_path):
    """The next hpc_ckpt_N.ckpt in default_root_dir, the file a requeued SLURM job resumes from."""
    import lightning as L

    from dl4.internals import hpc_checkpoint_path

    trainer = L.Trainer(default_root_dir=tmp_path, logger=False)
    assert Path(hpc_checkpoint_path(trainer)) == tmp_path / "hpc_ckpt_1.ckpt"
    (tmp_path / "hpc_ckpt_1.ckpt").touch()
    (tmp_path / "hpc_ckpt_3.ckpt").touch()
    assert Path(hpc_checkpoint_path(trainer)) == tmp_path / "hpc_ckpt_4.ckpt"


def test_find_unused_parameters():
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    from dl4.internals import find_unused_parameters

    assert find_unused_parameters(DDPStrategy()) == {"find_unused_parameters": True}
    assert find_unused_parameters(DDPStrategy(find_unused_parameters=False)) == {"find_unused_parameters": False}
    assert find_unused_parameters(SingleDeviceStrategy("cpu")) is None


def test_drop_loader_position(tmp_path):
    """A checkpoint of a run on a stateful loader (dl4's tensor loaders) holds the loader's position where
    ``drop_loader_position`` removes it (exact resumes: tests/test_faults.py)."""
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    from datamodules.tensors import TensorBatchDataset, tensor_loader
    from dl4.internals import drop_loader_position

    class Model(BoringModel):
        def train_dataloader(self):
            return tensor_loader(TensorBatchDataset(torch.randn(64, 32)), batch_size=8, shuffle=True)

        def training_step(self, batch, batch_idx):
            return super().training_step(batch[0], batch_idx)

    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(Model())
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    checkpoint = torch.load(tmp_path / "mid.ckpt", weights_only=False)
    assert "combined_loader" in checkpoint["loops"]["fit_loop"]["state_dict"]
    drop_loader_position(checkpoint)
    assert "combined_loader" not in checkpoint["loops"]["fit_loop"]["state_dict"]


def test_backend_compiler_failed():
    from dl4.internals import backend_compiler_failed

    error = backend_compiler_failed()
    assert issubclass(error, Exception) and error.__name__ == "BackendCompilerFailed"


def test_set_last_lr():
    from lightning_models.schedules import DecayOnceBelow

    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = DecayOnceBelow(opt, monitor="val/x", below=0.5, factor=0.5)
    scheduler.step(0.1)
    assert scheduler.get_last_lr() == [0.5] == [opt.param_groups[0]["lr"]]


def test_wandb_record():
    from dl4.internals import wandb_record

    record = wandb_record()
    assert record.WhichOneof("record_type") is None
    assert {"history", "summary", "config", "run", "artifact"} <= {f.name for f in record.DESCRIPTOR.fields}


def test_sweep_helpers():
    import optuna

    from dl4 import internals

    distribution = internals.sweep_parameter_to_distribution({"distribution": "log_uniform_values", "min": 1e-4,
                                                               "max": 1e-2})
    assert isinstance(distribution, optuna.distributions.FloatDistribution) and distribution.log
    space = internals.search_space_from_sweep_config({"k": {"values": [1, 2]}})
    assert isinstance(space["k"], optuna.distributions.CategoricalDistribution)
    assert internals.sweep_directions({"metric": {"name": "m", "goal": "maximize"}}) == ["maximize"]
    args = internals.create_sweep_command_args({"args": {"model.init_args.k": {"value": 3}}})
    assert args["args"] == ["--model.init_args.k=3"]
    assert internals.create_sweep_command(["dl4", "fit", "${args}"]) == ["dl4", "fit", "${args}"]
    run_id = internals.generate_id()
    assert isinstance(run_id, str) and len(run_id) == 8 and run_id != internals.generate_id()
