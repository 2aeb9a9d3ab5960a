"""What the tests share: where the data and configs are, the real `dl4` console script, runs built from configs."""

import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# every jsonargparse deprecation, not the first of each kind: one raised by dl4's own call fails (pyproject.toml)
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "all")


def _data_root() -> Path:
    """``$DL4_DATA_DIR``, else the user's cache folder (``$DL4_CACHE_DIR``, default ``~/.cache/dl4``) ``/data``."""
    if "DL4_DATA_DIR" in os.environ:
        return Path(os.environ["DL4_DATA_DIR"]).resolve()
    cache = os.environ.get("DL4_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dl4"
    return Path(cache).resolve() / "data"


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


FETCHABLE = {"MNIST/": "mnist", "babi/": "babi"}  # the datasets `dl4 data download` fetches
NOT_FETCHABLE = {"coco_sample/": "coco_sample is a 159-image sample of COCO 2017 (its captions_*.json and images) "
                                 "that CI's data root holds; put a COCO-format folder of that name in the data root"}
FETCH_FAILED: dict[str, str] = {}  # dataset -> why fetching it failed, tried once a session
MISSING: dict[str, str] = {}  # what the skipped tests lacked, said once at the end (pytest_terminal_summary)


def require_dataset(relative: str) -> Path:
    """The data root if it holds ``relative``. Without ``DL4_DATA_DIR`` a fetchable dataset is fetched once into the
    cache folder (``datamodules/download.py``, verified); if it cannot be, the test skips on a developer machine.
    Under CI (``CI=true``) nothing is fetched and a missing dataset fails."""
    root = _data_root()
    name = next((n for prefix, n in FETCHABLE.items() if relative.startswith(prefix)), None)
    if not (root / relative).exists() and name and not under_ci() and "DL4_DATA_DIR" not in os.environ \
            and name not in FETCH_FAILED:
        from datamodules.download import DOWNLOADS

        try:
            print(f"fetching {name} into the test cache {root} (once; DL4_DATA_DIR=... uses a data root you have)")
            DOWNLOADS[name](root)
        except (OSError, ValueError) as err:  # DownloadError, CorruptDataError
            FETCH_FAILED[name] = str(err)
    if not (root / relative).exists():
        how = f"`dl4 data download {name} --root {root}` on a machine with internet" if name else next(
            why for prefix, why in NOT_FETCHABLE.items() if relative.startswith(prefix))
        message = f"{root / relative} not found: {how}, or set DL4_DATA_DIR to a folder holding it" + (
            f" (fetching failed: {FETCH_FAILED[name]})" if name in FETCH_FAILED else "")
        if under_ci():
            pytest.fail(f"CI must have its datasets: {message}")
        MISSING[relative.split("/")[0]] = message
        pytest.skip(f"{root / relative.split('/')[0]} missing: how to get it is under 'datasets missing' below")
    return root


def pytest_terminal_summary(terminalreporter):
    if MISSING:
        terminalreporter.section("datasets missing: their tests were skipped")
        for message in MISSING.values():
            terminalreporter.write_line(message)


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    return require_dataset("MNIST/raw/train-images-idx3-ubyte")


@pytest.fixture(scope="session")
def mnist(mnist_root):
    """The MNIST datamodule, set up once (grey levels, on the CPU)."""
    from datamodules import MNISTDataModule

    dm = MNISTDataModule(str(mnist_root), download=False)
    dm.setup()
    return dm


@pytest.fixture(scope="session")
def babi_root() -> Path:
    return require_dataset("babi/tasks_1-20_v1-2/en/qa1_single-supporting-fact_train.txt")


# MNIST captions for the tests: 101 evaluation images, so that two processes get 51 each and one is counted twice
CAPTION_SIZES = {"train": 1500, "val": 101, "test": 101}
CAPTION_SIZE_ARGS = [f"--data.init_args.{k}_size={v}" for k, v in CAPTION_SIZES.items()]


@pytest.fixture(scope="session")
def captions_root(mnist_root, tmp_path_factory) -> Path:
    """MNIST captions (datamodules/mnist_captions.py) generated once from the real MNIST, seed 0."""
    from datamodules.mnist_captions import write_mnist_captions

    return write_mnist_captions(tmp_path_factory.mktemp("vse") / "mnist_captions", str(mnist_root), 0, CAPTION_SIZES)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from seed 0, and leaves the matmul precision as it found it (a config run in this process
    sets its own)."""
    torch.manual_seed(0)
    precision = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(precision)


def build_from_config(config: str | Path, *overrides: str, logger: bool = False):
    """The config's model, datamodule and trainer, built as `dl4 fit` builds them (``DL4CLI(run=False)``, so its
    seed, nets and optimiser from the config); without a logger unless asked."""
    from dl4.cli import DL4CLI

    args = ["--config", str(config), *([] if logger else ["--trainer.logger=false"]), *overrides]
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        return DL4CLI(args=args, run=False)


def dl4(*args, cwd, data_root=None, timeout=300, env=None) -> subprocess.CompletedProcess:
    """The installed `dl4` console script in a subprocess, as a user runs it: no W&B variables of this process,
    the data root given (else the environment's), ``env`` added, output captured."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}, **(env or {})}
    if data_root:
        env["DL4_DATA_DIR"] = str(data_root)
    env["PYTHONWARNINGS"] = "ignore"
    return subprocess.run(["dl4", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def dl4_here(*args, cwd, monkeypatch, capture=None, data_root=None) -> subprocess.CompletedProcess:
    """`dl4` run by its entry point (``dl4.console.main``) in this process: the same exit status and output as the
    console script (``capture`` is pytest's ``capfd``, which sees Lightning's log lines too, or ``capsys``; without
    one, the output is not kept), without a new interpreter's 8 s of imports. For runs that need no process of their
    own (no signals, no DDP, no W&B). ``monkeypatch`` may be ``pytest.MonkeyPatch.context()``'s, in a fixture."""
    from dl4.console import main

    monkeypatch.chdir(cwd)
    if data_root:
        monkeypatch.setenv("DL4_DATA_DIR", str(data_root))
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setattr(sys, "argv", ["dl4"])
    if capture:
        capture.readouterr()
    try:
        main([str(a) for a in args])
        status = 0
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    out = capture.readouterr() if capture else None
    return subprocess.CompletedProcess(args, status, out.out if out else "", out.err if out else "")


def ddp_fit(config, tmp_path, data_root, *overrides: str) -> Path:
    """`dl4 fit` of a config on 2 CPU processes (DDP, gloo), 2 short epochs, CSV logs; returns the run folder."""
    out = dl4("fit", "--config", config, "--trainer.accelerator=cpu", "--trainer.devices=2",
              "--trainer.strategy=ddp", "--trainer.logger=CSVLogger", "--trainer.logger.save_dir=runs",
              "--trainer.max_epochs=2", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2",
              "--trainer.enable_progress_bar=false", *overrides, cwd=tmp_path, data_root=data_root, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = (tmp_path / "runs").glob("*/version_*")
    return run


def assert_ddp_validation_is_one_process(run: Path, config, *overrides: str, skip=(), data_root=None,
                                      val_batches: str = "4") -> dict:
    """The validation numbers a `ddp_fit` run logged at its end (2 processes, 2 batches each) are those of one process
    validating the same weights (its last checkpoint) on the same examples (4 batches; ``val_batches="1.0"`` for a
    run validated on the whole set): the metrics are reduced across processes, and each example is seen once
    (``datamodules.tensors.eval_sampler``). Sums in another order differ in the last bits, hence the relative
    tolerance of 1e-5: the VSE's test, for which it was set, differed by 2.6e-6, 4.6e-6 and 5.9e-6 (its caption
    loss) with seeds 0, 1 and 2, while one example counted twice or left out moves a mean over its 80 examples by
    about 1e-2. ``skip``: keys drawn from fresh noise. Returns the numbers compared."""
    import csv

    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if any(k.startswith("val/") and v for k, v in r.items())]
    ddp = {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v and k not in skip}
    checkpoints = sorted((run / "checkpoints").glob("*.ckpt"), key=lambda p: (p.name != "last.ckpt", -p.stat().st_mtime))
    with mock.patch.dict(os.environ, {"DL4_DATA_DIR": str(data_root)} if data_root else {}):
        cli = build_from_config(config, f"--trainer.limit_val_batches={val_batches}", "--trainer.enable_progress_bar=false",
                                "--trainer.callbacks=[]", *overrides)
        (one,) = cli.trainer.validate(cli.model, cli.datamodule, ckpt_path=str(checkpoints[0]), verbose=False)
    compared = {k: v for k, v in ddp.items() if k in one}  # not those only fit logs (the NTM's val/sequences)
    assert compared, (sorted(ddp), sorted(one))
    relative = {k: abs(one[k] - v) / max(abs(v), 1e-12) for k, v in compared.items()}
    worst = max(relative, key=relative.get)
    print(f"DDP against one process: largest relative difference {relative[worst]:.1e} ({worst})")  # with -s
    for key, value in compared.items():
        assert one[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    return compared


# --- the two tiers -------------------------------------------------------------------------------------------------
# `python -m pytest` runs the fast tier (unit and equation tests, error messages, learning tests of seconds);
# `python -m pytest --full` (what .ci/run runs) runs both. A test's tier follows from what it does, not from a list:
# it is in the full tier if it, or a test helper it calls (a function defined under tests/, followed through), starts
# a process or sends a signal (``STARTS_A_PROCESS``: the `dl4` console script, `ddp_fit`'s two DDP processes,
# torchrun, a SLURM job, a W&B agent, a fresh virtual environment), or if it is marked `slow`: it trains for more than
# about ten seconds on 2 cores (the mark says so next to the test, with its measured time in the docstring).
STARTS_A_PROCESS = {("subprocess", name) for name in ("run", "Popen", "call", "check_call", "check_output")} | {
    ("os", "kill"), ("os", "killpg"), ("signal", "raise_signal"), ("signal", "pthread_kill"), ("os", "fork"),
    ("mp", "spawn"), ("multiprocessing", "Process"), ("torch.multiprocessing", "spawn")}
TIERS: dict[str, str] = {}  # node id -> "fast" or "full", for every test collected (tests/test_tiers.py checks it)


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true",
                     help="run the full tier too (processes, DDP, signals, W&B agents, sweeps, SLURM, long "
                          "learning runs)")


def pytest_configure(config):
    config.addinivalue_line("markers", "fast: the fast tier (set by conftest.py from what the test does)")
    config.addinivalue_line("markers", "full: the full tier, run with --full (set by conftest.py)")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # one of pytest-xdist's workers (`-n auto`): each runs its tests, and the processes they start, on one
        # thread, so that N workers keep N cores busy. On 2 cores (2026-12-07): one thread per worker, 8.1-9.3 min
        # for the full suite; one process, 11.7; two threads per worker, 14.9 (their thread pools wait on each
        # other), with a timing test failing.
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def _calls(function, seen=None) -> set[tuple[str, str]]:
    """(module or object, attribute) pairs a function reads, such as ("subprocess", "run"), with those of the test
    helpers it uses (functions defined under tests/), followed through nested functions and lambdas."""
    import dis
    import types

    seen = set() if seen is None else seen
    if function in seen or not isinstance(function, types.FunctionType):
        return set()
    seen.add(function)
    pairs, helpers, codes = set(), set(), [function.__code__]
    while codes:
        code = codes.pop()
        codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
        owner = None
        for ins in dis.get_instructions(code):
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF", "LOAD_FAST"):
                owner = ins.argval
                helpers.add(ins.argval)
            elif ins.opname in ("LOAD_ATTR", "LOAD_METHOD") and owner is not None:
                pairs.add((owner, ins.argval))
                owner = f"{owner}.{ins.argval}"
            else:
                owner = None
    for name in helpers:
        helper = function.__globals__.get(name)
        if isinstance(helper, types.FunctionType) and Path(helper.__code__.co_filename).is_relative_to(REPO / "tests"):
            pairs |= _calls(helper, seen)
    return pairs


def _fixture_functions(item) -> list:
    """The functions of the fixtures a test uses (those defined in its module or in this file)."""
    import inspect

    here = sys.modules[__name__]
    found = []
    for name in getattr(item, "fixturenames", ()):
        definition = getattr(getattr(item, "module", None), name, None) or getattr(here, name, None)
        if definition is not None and hasattr(definition, "__wrapped__"):  # a @pytest.fixture
            found.append(inspect.unwrap(definition))
    return found


def tier(item) -> str:
    """"full" if the test is marked slow, or if it or a fixture it uses starts a process; else "fast"."""
    if item.get_closest_marker("slow"):
        return "full"
    seen = set()
    uses = set().union(*(_calls(f, seen) for f in [getattr(item, "function", None), *_fixture_functions(item)]))
    return "full" if uses & STARTS_A_PROCESS else "fast"


def pytest_collection_modifyitems(config, items):
    kept, deselected = [], []
    for item in items:
        TIERS[item.nodeid] = tier(item)
        item.add_marker(TIERS[item.nodeid])
        (kept if TIERS[item.nodeid] == "fast" or config.getoption("--full") else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
