"""What can be checked of the Docker image and the W&B sweeps without a Docker engine or a W&B server."""

import re
import tomllib

import pytest
import yaml

from conftest import REPO
from test_cli import dl4

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
def test_sweep_parameters_are_accepted_by_the_cli(sweep, tmp_path):
    spec = yaml.safe_load(sweep.read_text())
    command = spec["command"]
    assert command[:2] == ["dl4", "fit"] and command[-1] == "${args}"
    overrides = []
    for key, values in spec["parameters"].items():
        value = values["values"][-1] if "values" in values else values["min"]
        overrides.append(f"--{key}={value}")
    out = dl4(*command[1:-1], *overrides, "--print_config", cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    printed = yaml.safe_load(out.stdout)
    for key, values in spec["parameters"].items():
        node = printed
        for part in key.split("."):
            node = node[part]
        expected = values["values"][-1] if "values" in values else values["min"]
        assert node == expected, key
    assert spec["metric"]["name"] in ("val/neg_elbo", "val/recon", "val/parzen_ll", "val/bits_per_seq", "val/error")
