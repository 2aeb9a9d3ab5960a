"""``dl4 sweep``: a W&B sweep file, run where W&B's sweep server cannot be reached (compute nodes without internet).

    dl4 sweep sweeps/vae_mnist.yaml --count 20
    dl4 sweep sweeps/vae_mnist.yaml --count 10 --storage /shared/vae.journal    # on every machine sharing the sweep

The engine is Optuna, through W&B's own translation of its sweep format (``wandb.sdk.sweeps.scheduler.optuna``,
the ``wandb[optuna]`` extra; ``dl4/internals.py``). W&B's own sweep engine (the ``sweeps`` package behind ``wandb[sweeps]``) requires
numpy < 2, which would downgrade the numpy that torch and the rest were installed with. ``method`` maps to
Optuna's samplers: grid -> GridSampler, random -> RandomSampler, bayes -> TPESampler (Optuna's Bayesian optimiser;
W&B's ``bayes`` is a Gaussian process, so the two propose different points). ``early_terminate`` is W&B's server's
(hyperband): here every trial runs its whole budget.

Each trial is the sweep's ``command`` with the arguments W&B's agent would give it (``--key=value``, built by the
agent's own ``create_sweep_command_args``): an ordinary ``dl4 fit`` run, logged offline into the W&B group
``sweep-<name>``, so ``wandb sync`` uploads them all later. Its metric is the run's W&B summary value of
``metric.name``, which is what W&B's sweeps read. The trials live in Optuna's journal file (``--storage``, by
default ``runs/sweeps/<name>/optuna.journal``): machines that share a file system share the sweep by giving the
same file. The table of trials is printed and written next to it (``trials.csv``).
"""

import argparse
import contextlib
import csv
import io
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import yaml

from dl4.errors import ConfigError

METHODS = {"grid", "random", "bayes"}
TOP_LEVEL = {"program", "command", "method", "metric", "parameters", "early_terminate", "name", "description",
             "project", "entity", "run_cap"}
PARAMETER_KEYS = {"value", "values", "distribution", "min", "max", "q", "probabilities"}
AGENT_MACROS = {"${env}", "${interpreter}", "${program}", "${args}"}


def load_sweep(path: str | Path) -> dict:
    """The sweep file, checked strictly against W&B's sweep format and against what ``dl4 sweep`` can run: the
    first problem found is a ConfigError naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist (the sweeps are in sweeps/)")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None

    def bad(key, what):
        raise ConfigError(f"{path}: {key}: {what}")

    if not isinstance(spec, dict):
        bad("(top level)", "a sweep file is a mapping (method, metric, parameters, command)")
    for key in spec:
        if key not in TOP_LEVEL:
            bad(key, f"not a W&B sweep key (known: {', '.join(sorted(TOP_LEVEL))})")
    if spec.get("method") not in METHODS:
        bad("method", f"must be one of {', '.join(sorted(METHODS))}, got {spec.get('method')!r}")
    metric = spec.get("metric")
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
        bad("metric", "needs a name (a key the model logs at the end of every validation epoch) and a goal")
    if metric.get("goal") not in ("minimize", "maximize"):
        bad("metric.goal", f"must be minimize or maximize, got {metric.get('goal')!r}")
    if set(metric) - {"name", "goal", "target"}:
        bad("metric", f"unknown keys {sorted(set(metric) - {'name', 'goal', 'target'})}")
    command = spec.get("command")
    if not isinstance(command, list) or "${args}" not in command:
        bad("command", "must be a list that ends in ${args}, e.g. [dl4, fit, --config, configs/x.yaml, ${args}]")
    if command[:2] != ["dl4", "fit"] or "--config" not in command[:-1]:
        bad("command", "must start with: dl4 fit --config configs/<experiment>.yaml")
    if not all(isinstance(c, str) for c in command) or set(c for c in command if c.startswith("${")) - AGENT_MACROS:
        bad("command", f"only strings and the agent's macros {sorted(AGENT_MACROS)}")
    if spec.get("program", "dl4") != "dl4":
        bad("program", "must be dl4 (the command runs dl4 fit)")
    early = spec.get("early_terminate")
    if early is not None and (not isinstance(early, dict) or early.get("type") != "hyperband"
                              or not ({"min_iter", "max_iter"} & set(early))
                              or set(early) - {"type", "min_iter", "max_iter", "eta", "s", "strict"}):
        bad("early_terminate", "W&B's form is {type: hyperband, min_iter: N (or max_iter and s), eta: 3}")
    parameters = spec.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        bad("parameters", "a mapping of CLI keys (e.g. model.init_args.lr) to W&B parameter specs")
    from dl4.internals import sweep_parameter_to_distribution

    for key, parameter in parameters.items():
        where = f"parameters.{key}"
        if not isinstance(parameter, dict) or not parameter or set(parameter) - PARAMETER_KEYS:
            bad(where, f"a W&B parameter spec: values: [...], value: x, or distribution with min and max "
                f"(keys {sorted(PARAMETER_KEYS)})")
        if "values" in parameter and (not isinstance(parameter["values"], list) or not parameter["values"]):
            bad(where, "values must be a non-empty list")
        if any(v is None for v in parameter.get("values", [parameter.get("value", 0)])):
            bad(where, "null cannot be passed as --key=value (W&B's agent writes it as the string None)")
        if "min" in parameter and not parameter["min"] < parameter.get("max", -math.inf):
            bad(where, "min must be below max")
        if spec["method"] == "grid" and not ({"value", "values"} & set(parameter)):
            bad(where, "a grid sweep needs values (or a value) for every parameter")
        try:  # W&B's own mapping says whether Optuna can draw it (values are checked above; lists become indices)
            sweep_parameter_to_distribution({**parameter, **({"values": [0]} if "values" in parameter else {})})
        except (ValueError, KeyError, TypeError) as err:
            bad(where, f"{err} (dl4 sweep runs uniform, int_uniform, log_uniform_values, q_uniform and values)")
    return spec


def agent_command(spec: dict, params: dict) -> list[str]:
    """The command line W&B's agent starts for a run with these parameters: ``wandb/wandb_agent.py``,
    ``Agent._command_run``, with ``wandb/sdk/launch/sweeps/utils.py``'s ``create_sweep_command_args`` building
    ``${args}`` (``--key=value``, the value written by Python's ``str``: True, [16, 32], 'mask')."""
    from dl4.internals import create_sweep_command, create_sweep_command_args

    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars.update(interpreter=["python"], program=[spec.get("program", "dl4")], env=["/usr/bin/env"])
    command = []
    for part in create_sweep_command(list(spec["command"])):
        part = str(part)
        command += (sweep_vars.get(part[2:-1]) or []) if part.startswith("${") and part.endswith("}") else [part]
    return command


def corner(spec: dict, end: int) -> dict:
    """A point of the sweep's space: every parameter at its first (``end=0``) or last (``end=-1``) value, or its
    min or max."""
    return {k: p["values"][end] if "values" in p else p["value"] if "value" in p else p["max" if end else "min"]
            for k, p in spec["parameters"].items()}


def check_parses(command: list[str]) -> dict:
    """The trial's command, parsed by dl4's own parser with ``--print_config`` (nothing is built, no run is
    created): the config it would run, or, for an unknown key or a wrong value, a ConfigError carrying the
    parser's one-line reason."""
    from dl4.cli import DL4CLI

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # dl4 sweep's own argv
        try:
            DL4CLI(args=[*command[1:], "--print_config"])
        except ConfigError as err:
            raise ConfigError(f"the sweep's command does not parse ({' '.join(command)}): {err}") from None
        except SystemExit as stop:  # --print_config's exit (0), or a parser exit without a message
            if stop.code:
                raise ConfigError(f"the sweep's command does not parse ({' '.join(command)})") from None
    return yaml.safe_load(out.getvalue())


class Engine:
    """The Optuna study behind one sweep: its distributions from W&B's mapping, its sampler from the method."""

    def __init__(self, spec: dict, name: str, storage: Path, seed: int | None = None):
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        from dl4.internals import search_space_from_sweep_config, sweep_directions

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        parameters = spec["parameters"]
        # Optuna's categorical choices are None, bool, int, float or str; a list value (a layer's widths) is
        # offered as its index into the parameter's values, and decoded back.
        self.choices = {k: p["values"] for k, p in parameters.items() if "values" in p}
        space = {k: {**p, "values": list(range(len(p["values"])))} if k in self.choices else p
                 for k, p in parameters.items()}
        self.distributions = search_space_from_sweep_config(space)
        self.grid_size = None
        if spec["method"] == "grid":
            grid = {k: list(range(len(p["values"]))) if k in self.choices else [p["value"]]
                    for k, p in parameters.items()}
            self.grid_size = math.prod(len(v) for v in grid.values())
            sampler = optuna.samplers.GridSampler(grid, seed=seed)
        elif spec["method"] == "random":
            sampler = optuna.samplers.RandomSampler(seed=seed)
        else:
            sampler = optuna.samplers.TPESampler(seed=seed)
        storage.parent.mkdir(parents=True, exist_ok=True)
        self.study = optuna.create_study(
            study_name=name, storage=JournalStorage(JournalFileBackend(str(storage))), sampler=sampler,
            direction=sweep_directions(spec)[0], load_if_exists=True)

    def exhausted(self) -> bool:
        return self.grid_size is not None and len(self.study.trials) >= self.grid_size

    def ask(self):
        trial = self.study.ask(self.distributions)
        params = {k: self.choices[k][v] if k in self.choices else v for k, v in trial.params.items()}
        return trial, params


def find_run(run_id: str, root: Path = Path(".")) -> Path | None:
    """The local folder of the W&B run with this id (``<save_dir>/wandb/*-run-*-<id>``), under the sweep's folder."""
    for pattern in ("wandb", "*/wandb", "*/*/wandb"):
        found = sorted(root.glob(f"{pattern}/*run-*-{run_id}"))
        if found:
            return found[-1]
    return None


def run_trial(spec: dict, engine: Engine, group: str, logs: Path) -> dict:
    """One trial: the agent's command for the engine's next point, as a ``dl4 fit`` subprocess in the W&B run
    ``WANDB_RUN_ID`` (a fresh id) of the group; then the run's metric is read and told to the engine."""
    import optuna

    from dl4.internals import generate_id  # the ids W&B gives its runs

    trial, params = engine.ask()
    run_id = generate_id()
    command = agent_command(spec, params)
    trial.set_user_attr("run_id", run_id)
    trial.set_user_attr("params", json.dumps(params))
    env = {**os.environ, "WANDB_RUN_ID": run_id, "WANDB_RUN_GROUP": group, "WANDB_JOB_TYPE": "sweep-trial"}
    env.setdefault("WANDB_MODE", "offline")
    log = logs / f"trial-{trial.number}-{run_id}.log"
    print(f"dl4 sweep: trial {trial.number} (run {run_id}): {' '.join(command[4:]) or '(no parameters)'}",
          flush=True)
    row = {"trial": trial.number, "run_id": run_id, **params}
    with open(log, "w") as out:
        try:
            status = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        except KeyboardInterrupt:  # Ctrl-C reaches the trial too (one process group): it is not left running
            engine.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
    run_dir = find_run(run_id)
    metric = spec["metric"]["name"]
    value = None
    if status == 0 and run_dir is not None:
        from dl4.wandb_records import summary

        value = summary(run_dir).get(metric)
    if status != 0 or not isinstance(value, (int, float)) or not math.isfinite(value):
        reason = (failure_cause(status, log) if status else
                  f"the run logged no finite {metric} ({run_dir or 'no W&B run folder found'})")
        trial.set_user_attr("cause", reason)
        with contextlib.suppress(RuntimeError):  # GridSampler stops the study once the grid is spent
            engine.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        print(f"dl4 sweep: trial {trial.number} failed: {reason} (its log: {log})", file=sys.stderr, flush=True)
        return {**row, "state": "failed", metric: None, "cause": reason, "run": str(run_dir or log)}
    with contextlib.suppress(RuntimeError):  # GridSampler stops the study once the grid is spent
        engine.study.tell(trial, value)
    print(f"dl4 sweep: trial {trial.number}: {metric} = {value:.6g}", flush=True)
    return {**row, "state": "complete", metric: value, "run": str(run_dir)}


def failure_cause(status: int, log: Path) -> str:
    """A failed trial's cause in one line: the signal that killed it (SIGKILL: most often the out-of-memory killer),
    dl4's own ``dl4: error:`` line, or the last line of a traceback, from the trial's log."""
    if status < 0 or status in (128 + signal.SIGKILL, 128 + signal.SIGTERM):
        number = -status if status < 0 else status - 128
        name = signal.Signals(number).name
        return f"killed by {name}" + (" (out of memory? the kernel's OOM killer sends it)" if name == "SIGKILL" else "")
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()] \
        if log.is_file() else []
    own = [line for line in lines if line.startswith("dl4: error:") or line.startswith("dl4: stopped")]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b.*:", line)]
    return (own or raised or [f"exit status {status}"])[-1][:300]


def table(spec: dict, engine: Engine) -> list[dict]:
    """Every trial of the study (also those other machines ran), best first by the metric."""
    metric, rows = spec["metric"]["name"], []
    for t in engine.study.trials:
        rows.append({"trial": t.number, "state": t.state.name.lower(), metric: t.value,
                     **json.loads(t.user_attrs.get("params", "{}")), "run_id": t.user_attrs.get("run_id"),
                     **({"cause": t.user_attrs["cause"]} if "cause" in t.user_attrs else {})})
    sign = -1 if spec["metric"]["goal"] == "maximize" else 1
    return sorted(rows, key=lambda r: (r[metric] is None, sign * (r[metric] or 0), r["trial"]))


def write_table(rows: list[dict], path: Path) -> str:
    columns = list(dict.fromkeys(itertools.chain.from_iterable(rows)))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    cells = [[str(c) for c in columns]] + [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def _cell(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else "" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dl4 sweep", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Runs a W&B sweep file here, with Optuna, where W&B's sweep server cannot be reached: each trial "
                    "is a `dl4 fit` logged offline\n(upload them later with `wandb sync`). See docs/clusters.md.",
        epilog="examples:\n  dl4 sweep sweeps/vae_mnist.yaml --count 20\n"
               "  dl4 sweep sweeps/vae_mnist.yaml --count 10 --storage /shared/vae.journal   # on every machine")
    parser.add_argument("sweep", help="a W&B sweep file, e.g. sweeps/vae_mnist.yaml")
    parser.add_argument("--count", type=int, default=10, help="trials to run on this machine (default 10)")
    parser.add_argument("--storage", type=Path, default=None,
                        help="Optuna journal file holding the sweep's trials; give the same file on every machine "
                             "(default runs/sweeps/<name>/optuna.journal)")
    parser.add_argument("--name", default=None, help="the sweep's name (default: the file's name key or stem)")
    parser.add_argument("--seed", type=int, default=None, help="the sampler's seed (default: random)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    spec = load_sweep(args.sweep)
    name = args.name or spec.get("name") or Path(args.sweep).stem
    storage = args.storage or Path("runs", "sweeps", name, "optuna.journal")
    check_parses(agent_command(spec, corner(spec, 0)))  # a wrong key fails here, before anything is written
    engine = Engine(spec, name, storage, seed=args.seed)
    logs = storage.parent
    ran, interrupted = [], False
    try:
        for _ in range(args.count):
            if engine.exhausted():
                print(f"dl4 sweep: the grid's {engine.grid_size} points have all been run", flush=True)
                break
            ran.append(run_trial(spec, engine, f"sweep-{name}", logs))
    except KeyboardInterrupt:
        interrupted = True
        print("dl4 sweep: interrupted; the trial that was running is marked failed", file=sys.stderr, flush=True)
    rows = table(spec, engine)
    text = write_table(rows, logs / "trials.csv")
    print(f"\nSweep {name} ({storage}), {spec['metric']['name']} ({spec['metric']['goal']}):\n{text}\n"
          f"Table: {logs / 'trials.csv'}. The trials are the W&B group sweep-{name}; upload them with "
          f"wandb sync <save_dir>/wandb/offline-run-* (the configs' save_dir is runs)",
          flush=True)
    failed = [r for r in ran if r["state"] == "failed"]
    if failed:
        print(f"dl4 sweep: {len(failed)} of {len(ran)} trials failed: " + "; ".join(
            f"trial {r['trial']}: {r['cause']}" for r in failed), file=sys.stderr, flush=True)
    return 130 if interrupted else 1 if failed else 0
