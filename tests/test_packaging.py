"""What can be checked of the Docker image and the W&B sweeps without a Docker engine or a W&B server."""

import re
import tomllib

import pytest
import yaml

from conftest import REPO, dl4

DOCKERFILE = (REPO / "Dockerfile").read_text()
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))


def instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    return [tuple(line.split(None, 1)) for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_dockerfile_copies_only_what_exists_and_installs_the_package():
    steps = instructions(DOCKERFILE)
    copies = [args.split()[:-1] for op, args in steps if op == "COPY"]
    assert copies
    for sources in copies:
        for source in sources:
            assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {s for sources in copies for s in sources}
    for package in packages:
        assert package.rstrip("*") in copied, f"package {package} is not copied into the image"
    assert any(op == "RUN" and "pip install ." in args for op, args in steps)
    assert ("ENTRYPOINT", '["dl4"]') in steps


def test_dockerfile_base_image_torch_satisfies_the_requirement():
    base = re.search(r"BASE_IMAGE=pytorch/pytorch:(\d+)\.(\d+)\.\d+-cuda", DOCKERFILE)
    assert base, "the base image must be an official pytorch/pytorch CUDA image"
    requirement = next(d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
                       if d.startswith("torch>="))
    minimum = tuple(int(p) for p in requirement.split(">=")[1].split(".")[:2])
    assert tuple(int(g) for g in base.groups()) >= minimum  # so pip keeps the image's CUDA build of torch


def test_dockerignore_keeps_data_and_runs_out_of_the_build_context():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {"data", "runs", "wandb", ".git"} <= set(ignored)


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.name)
def test_sweep_command_runs_with_its_parameters_and_logs_its_metric(sweep, tmp_path, mnist_root):
    """The sweep's command with one value of every parameter, as a W&B agent would run it (2 training and 2
    validation batches): the CLI accepts every key, the run's saved config holds the values, and the metric the
    sweep optimises is one the model logs."""
    spec = yaml.safe_load(sweep.read_text())
    command = spec["command"]
    assert command[:2] == ["dl4", "fit"] and command[-1] == "${args}"
    chosen = {key: values["values"][-1] if "values" in values else values["min"]
              for key, values in spec["parameters"].items()}
    args = [a.replace("configs/", f"{REPO}/configs/") for a in command[1:-1]]
    out = dl4(*args, *(f"--{key}={value}" for key, value in chosen.items()), "--trainer.max_epochs=1",
              "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2", "--trainer.callbacks=[]",
              "--trainer.logger=CSVLogger", "--trainer.logger.save_dir=runs", "--trainer.enable_progress_bar=false",
              *(["--model.init_args.compile=false"] if "ntm" in sweep.name else []), cwd=tmp_path, data_root=mnist_root)
    assert out.returncode == 0, out.stderr[-2000:]
    (run,) = (tmp_path / "runs").glob("*/version_*")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    for key, value in chosen.items():
        node = saved
        for part in key.split("."):
            node = node[part]
        assert node == value, key
    logged = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert spec["metric"]["name"] in logged, (spec["metric"]["name"], logged)


def test_every_function_docs_equations_names_exists_where_it_says():
    """docs/equations.md maps equations to `file`: `function` pairs; each named function or class is defined in
    that file, so the map cannot go stale silently."""
    text = (REPO / "docs" / "equations.md").read_text()
    named = []
    for row in text.splitlines():
        if row.startswith("| ") and not row.startswith("| equation"):
            for path, names in re.findall(r"`([\w/]+\.py)`: ([^;|]+)", row.rstrip("|").split("|")[-1]):
                source = (REPO / path.replace("lm/", "lightning_models/")).read_text()
                for name in re.findall(r"`([\w.]+)`", names):
                    named.append(name)
                    assert re.search(rf"(def|class) {name.split('.')[-1]}\b", source), (path, name)
    assert len(named) > 50
