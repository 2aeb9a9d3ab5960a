"""The W&B sweeps: every sweep file is valid and its points parse; W&B's own agent code runs each sweep's command
into the agent's run; `dl4 sweep` runs a sweep offline with Optuna and picks the best trial."""

import os

import pytest
import yaml

from conftest import CAPTION_SIZE_ARGS, REPO, dl4_here
from dl4 import sweep
from dl4.wandb_records import config as run_config
from dl4.wandb_records import history, records
from dl4.errors import ConfigError

SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
TINY = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
        "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def extra(name: str, captions_root=None, mnist_root=None) -> list[str]:
    """What a sweep's command needs on top here: the NTM eager (no compiler in 2 steps), the VSE's generated data."""
    if name.startswith("ntm"):
        return ["--model.init_args.compile=false"]
    if name.startswith("vse"):
        return [f"--data.init_args.root={captions_root}", f"--data.init_args.data_dir={mnist_root}",
                *CAPTION_SIZE_ARGS, "--data.init_args.eval_batch_size=20"]
    return []


def lookup(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


def test_there_is_a_sweep_for_every_family():
    configs = {yaml.safe_load(p.read_text())["command"][3].split("/")[-1].split("_")[0] for p in SWEEPS}
    assert {"dae", "vae", "dcgan", "ntm", "memn2n", "st", "vse"} <= configs


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_file_is_valid_and_its_corners_and_draws_parse(path, monkeypatch, tmp_path):
    """W&B's format, checked strictly (W&B's own schema is in its `sweeps` package, which needs numpy < 2), and each
    parameter mapped by W&B's own Optuna translation; then the grid's corners (or the ranges' ends) and three
    random draws, as the agent writes them (`--key=value`), parsed by `dl4 fit ... --print_config`: every key is a
    real CLI key of the config and the printed config holds the drawn value."""
    spec = sweep.load_sweep(path)
    assert (REPO / spec["command"][spec["command"].index("--config") + 1]).is_file()
    monkeypatch.chdir(REPO)
    engine = sweep.Engine({**spec, "method": "random"}, "draws", tmp_path / "draws.journal", seed=0)
    points = [sweep.corner(spec, 0), sweep.corner(spec, -1), *(engine.ask()[1] for _ in range(3))]
    for params in points:
        printed = sweep.check_parses(sweep.agent_command(spec, params))
        for key, value in params.items():
            assert lookup(printed, key) == (pytest.approx(value) if isinstance(value, float) else value), key


@pytest.mark.parametrize("change, message", [
    ({"method": "hyperopt"}, "method: must be one of bayes, grid, random"),
    ({"metric": {"name": "val/loss", "goal": "lower"}}, "metric.goal: must be minimize or maximize"),
    ({"parameters": {"optimizer.init_args.lr": {"distribution": "normal", "mu": 0, "sigma": 1}}},
     "parameters.optimizer.init_args.lr"),
    ({"parameters": {"optimizer.init_args.lr": {"min": 0.1, "max": 0.01}}}, "min must be below max"),
    ({"command": ["python", "train.py", "${args}"]}, "command: must start with: dl4 fit --config"),
    ({"early_terminate": {"type": "asha"}}, "early_terminate"),
    ({"epochs": 3}, "epochs: not a W&B sweep key"),
])
def test_a_bad_sweep_file_fails_naming_the_key(change, message, tmp_path):
    spec = {**yaml.safe_load((REPO / "sweeps" / "vae_mnist.yaml").read_text()), **change}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")) as err:
        sweep.load_sweep(tmp_path / "bad.yaml")
    assert str(tmp_path / "bad.yaml") in str(err.value) and "\n" not in str(err.value)


def test_a_key_the_config_does_not_have_fails_before_any_run(tmp_path, monkeypatch, capsys):
    spec = yaml.safe_load((REPO / "sweeps" / "vae_mnist.yaml").read_text())
    spec["parameters"]["model.init_args.no_such_key"] = {"values": [1, 2]}
    spec["command"] = [c.replace("configs/", f"{REPO}/configs/") for c in spec["command"]]
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path)
    from dl4.console import main

    with pytest.raises(SystemExit) as stop:
        main(["sweep", "typo.yaml", "--count", "1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_key" in err[0] and "does not parse" in err[0], err
    assert not (tmp_path / "runs").exists()  # no run, no sweep storage


@pytest.mark.slow
@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_sweeps_metric_is_logged_after_each_validation_epoch(path, tmp_path, monkeypatch, mnist_root, babi_root,
                                                                   captions_root):
    """The sweep's command with its last corner, as the agent writes it, built by dl4's parser in this process and
    trained 2 epochs of 2 batches: its metric is in the log after each of the 2 validation epochs."""
    import csv

    from conftest import build_from_config

    spec = yaml.safe_load(path.read_text())
    command = sweep.agent_command(spec, sweep.corner(spec, -1))
    monkeypatch.setenv("DL4_DATA_DIR", str(babi_root if "memn2n" in path.stem else mnist_root))
    monkeypatch.chdir(REPO)
    cli = build_from_config(command[3], *command[4:], *TINY, *extra(path.stem, captions_root, mnist_root),
                            "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path}", logger=True)
    cli.trainer.fit(cli.model, cli.datamodule)
    (log,) = tmp_path.rglob("metrics.csv")
    metric = spec["metric"]["name"]
    assert sum(1 for row in csv.DictReader(open(log)) if row.get(metric)) == 2, metric


@pytest.mark.slow
@pytest.mark.parametrize("path", [REPO / "sweeps" / "vse_mnist_captions.yaml", REPO / "sweeps" / "dae_mnist.yaml"],
                         ids=lambda p: p.stem)
def test_wandb_agent_runs_the_command_into_its_run(path, tmp_path, monkeypatch, mnist_root, captions_root):
    """The sweep's command run by W&B's agent itself (`wandb/wandb_agent.py`, through `dl4.internals.wandb_agent_trial`: the command line
    from `create_sweep_command_args`, with WANDB_SWEEP_ID, WANDB_RUN_ID and WANDB_SWEEP_PARAM_PATH in the
    environment), 2 epochs of 2 batches, offline: dl4's run is the agent's run (its id), and it logs the sweep's
    metric at the end of each validation epoch, with the drawn values in its config. Two sweeps between them pass
    every kind of value: floats, a boolean and lists (the VSE's), strings (the DAE's grid)."""
    from dl4.internals import wandb_agent_trial

    spec = yaml.safe_load(path.read_text())
    params = sweep.corner(spec, -1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep42")
    monkeypatch.setenv("DL4_DATA_DIR", str(mnist_root))
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    for key in ("WANDB_DIR", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH"):  # the agent sets them in this process
        monkeypatch.setenv(key, str(tmp_path) if key == "WANDB_DIR" else "")
    command = spec["command"]
    process = wandb_agent_trial([*command[:-1], *TINY, *extra(path.stem, captions_root, mnist_root), command[-1]],
                                "sweep42", "agentrun1", params)
    assert process.wait(timeout=600) == 0
    assert os.environ["WANDB_SWEEP_PARAM_PATH"].endswith("config-agentrun1.yaml")
    (run,) = (tmp_path / "runs" / "wandb").glob("offline-run-*-agentrun1")
    (header,) = [r.run for r in records(next(run.glob("run-*.wandb"))) if r.WhichOneof("record_type") == "run"]
    assert header.run_id == "agentrun1" and header.sweep_id == "sweep42"
    metric = spec["metric"]["name"]
    values = [row[metric] for row in history(run) if metric in row]
    assert len(values) == 2, f"{metric} logged {len(values)} times in 2 validation epochs"
    logged = run_config(run)
    for key, value in params.items():
        assert lookup(logged, key) == value, key


@pytest.mark.slow
def test_dl4_sweep_runs_trials_offline_shares_its_storage_and_picks_the_best(tmp_path, mnist_root, monkeypatch, capfd):
    """`dl4 sweep --count 1`, then again on the same storage (a second machine, later, another seed): 2 trials of the
    VAE sweep over a tiny budget, each an offline W&B run of the group sweep-<name>; the table, best first, holds
    each run's last logged metric, and the best is the best of the two."""
    spec = yaml.safe_load((REPO / "sweeps" / "vae_mnist.yaml").read_text())
    spec["command"] = [*spec["command"][:-1], *TINY, spec["command"][-1]]
    (tmp_path / "vae.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")  # the trials' (each a `dl4 fit` process of its own)
    for seed in (1, 2):  # `dl4 sweep` by its entry point in this process; its trials are processes of their own
        out = dl4_here("sweep", "vae.yaml", "--count", 1, "--storage", "shared/vae.journal", "--seed", seed,
                       cwd=tmp_path, data_root=mnist_root, monkeypatch=monkeypatch, capture=capfd)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("trial"))
    rows = [line.split() for line in lines[header + 1:header + 3]]
    assert len(rows) == 2 and all(r[1] == "complete" for r in rows), lines[header:]
    runs = sorted((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    last = {}
    for run in runs:
        (head,) = [r.run for r in records(next(run.glob("run-*.wandb"))) if r.WhichOneof("record_type") == "run"]
        assert head.run_group == "sweep-vae"
        last[head.run_id] = [row["val/neg_elbo"] for row in history(run) if "val/neg_elbo" in row][-1]
    table = {r[-1]: float(r[2]) for r in rows}  # run id -> metric, as printed
    assert table == pytest.approx(last, rel=1e-5)
    assert rows[0][-1] == min(last, key=last.get)
    assert (tmp_path / "shared" / "trials.csv").read_text().count("complete") == 2


def test_a_failed_trial_names_its_cause_and_the_sweep_exits_1_after_running_the_others(tmp_path, mnist_root):
    """A grid of two trials through the console script, one of them impossible (lr = -1): the other still runs
    and completes; the failed one's one-line cause is in the printed table, in trials.csv and in the last line,
    and `dl4 sweep` exits 1."""
    import csv

    from conftest import dl4

    spec = yaml.safe_load((REPO / "sweeps" / "vae_mnist.yaml").read_text())
    spec["command"] = [*spec["command"][:-1], *TINY, spec["command"][-1]]
    spec["method"] = "grid"
    spec["parameters"] = {"model.init_args.optimizer.init_args.lr": {"values": [-1.0, 0.001]}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "configs").symlink_to(REPO / "configs")
    out = dl4("sweep", "bad.yaml", "--count", 2, "--storage", "s/bad.journal", cwd=tmp_path, data_root=mnist_root,
              timeout=600)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    cause = "dl4: error: model.init_args.optimizer: Invalid learning rate: -1.0"
    rows = list(csv.DictReader(open(tmp_path / "s" / "trials.csv")))
    assert sorted(r["state"] for r in rows) == ["complete", "fail"], rows
    assert [r["cause"] for r in rows if r["state"] == "fail"] == [cause]
    assert cause in out.stdout  # the printed table
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("dl4 sweep: 1 of 2 trials failed: trial ") and cause in last


@pytest.mark.parametrize("status, log, cause", [
    (-9, "", "killed by SIGKILL (out of memory?"),
    (137, "", "killed by SIGKILL"),
    (-15, "", "killed by SIGTERM"),
    (1, "Traceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory. Tried", "RuntimeError: CUDA out"),
    (3, "Seed set to 0\ndl4: error: training diverged: ...\n", "dl4: error: training diverged"),
    (1, "nothing useful\n", "exit status 1"),
])
def test_a_failed_trials_cause_is_one_line(status, log, cause, tmp_path):
    (tmp_path / "trial.log").write_text(log)
    assert sweep.failure_cause(status, tmp_path / "trial.log").startswith(cause)
