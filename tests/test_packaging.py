"""What can be checked of the Docker image without a Docker engine: the Dockerfile, read by Docker's own parser
(BuildKit's, in the `dockerfile` package); the build context, built by docker-py as `docker build` sends it; and the
commands the image runs after its base image, run here in a virtual environment."""

import os
import re
import shutil
import subprocess
import sys
import tomllib

import dockerfile
import pytest
from docker.utils.build import PatternMatcher, tar
from packaging.specifiers import SpecifierSet

from conftest import REPO

STEPS = dockerfile.parse_file(str(REPO / "Dockerfile"))
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
IGNORED = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
           if line.strip() and not line.startswith("#")]


def steps(kind: str) -> list:
    return [s for s in STEPS if s.cmd == kind]


def test_base_image_is_an_official_cuda_pytorch_pinned_by_tag_whose_torch_satisfies_the_requirement():
    (arg,) = [s for s in steps("ARG") if s.value[0].startswith("BASE_IMAGE=")]
    image = arg.value[0].split("=", 1)[1]
    (base,) = steps("FROM")
    assert base.value == ("${BASE_IMAGE}",) and STEPS[:2] == (arg, base)
    tag = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn\d+-(runtime|devel)", image)
    assert tag, f"{image}: the base must be an official pytorch/pytorch CUDA image, pinned by its full tag"
    torch_req = next(d for d in PYPROJECT["project"]["dependencies"] if re.match(r"torch\W", d))
    assert SpecifierSet(torch_req[len("torch"):]).contains(tag.group(1)), (torch_req, tag.group(1))


def test_dependencies_install_before_the_code_is_copied_and_keep_the_images_torch():
    """Layer order: the first COPY is pyproject.toml alone, the dependencies install from it, pinned to the image's
    torch and torchvision (a constraints file: pip fails rather than replace the CUDA build), and only then is the
    code copied and installed without dependencies: a code change reuses the dependency layer."""
    order = [(s.cmd, s.value) for s in STEPS if s.cmd in ("COPY", "RUN")]
    first_copy = next(i for i, (cmd, _) in enumerate(order) if cmd == "COPY")
    assert order[first_copy][1] == ("pyproject.toml", "./")
    install = next(i for i, (cmd, v) in enumerate(order) if cmd == "RUN" and "pip install -r" in v[0])
    assert install == first_copy + 1
    assert "-c /tmp/constraints.txt" in order[install][1][0] and "torch==" in order[install][1][0]
    code = next(i for i, (cmd, v) in enumerate(order) if cmd == "COPY" and v[0] == "dl4")
    assert code > install
    assert any(cmd == "RUN" and "pip install --no-deps ." in v[0] for cmd, v in order[code:])


def test_image_copies_what_exists_and_the_packages_runs_as_a_user_and_has_dl4_as_entrypoint():
    copied = {source for s in steps("COPY") for source in s.value[:-1]}
    for source in copied:
        assert (REPO / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"
    for package in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert package.rstrip("*") in copied, f"package {package} is not copied into the image"
    (user,) = steps("USER")
    assert user.value[0] not in ("root", "0") and STEPS.index(user) > max(STEPS.index(s) for s in steps("RUN"))
    assert [(s.json, s.value) for s in steps("ENTRYPOINT")] == [(True, ("dl4",))]
    assert {"/data", "/opt/dl4/runs"} <= set(steps("VOLUME")[0].value)
    env = dict(zip(*[iter(steps("ENV")[0].value)] * 2))
    assert env["DL4_DATA_DIR"] == "/data" and not {"WANDB_API_KEY", "WANDB_MODE"} & set(env)  # given at docker run


def test_build_context_is_small_and_holds_what_the_image_copies():
    """The context docker-py builds from .dockerignore (what `docker build` would send): every file the image
    copies, no runs, data, checkpoints, environments or git history, under 2 MB (measured: 0.6 MB)."""
    context = tar(str(REPO), exclude=IGNORED)
    size = context.seek(0, os.SEEK_END)
    assert size < 2_000_000, f"the build context is {size / 1e6:.1f} MB"
    matcher = PatternMatcher(IGNORED)
    for source in {source for s in steps("COPY") for source in s.value[:-1]}:
        assert not matcher.matches(source), f"{source} is copied by the image but left out of the context"
    for stray in ("runs/dl4/abc/checkpoints/last.ckpt", "data/MNIST/raw/train-images-idx3-ubyte", ".git/HEAD",
                  ".venv/bin/python", "wandb/offline-run-x/run-x.wandb", "dl4/__pycache__/cli.cpython-311.pyc",
                  "benchmarks/results/gan.json", "tests/conftest.py", "lightning_models/model.ckpt"):
        assert matcher.matches(stray), f"{stray} would be sent to the Docker daemon"


@pytest.mark.slow
def test_the_images_commands_after_its_base_run_in_a_fresh_virtual_environment(tmp_path):
    """The Dockerfile's RUN steps, in order, in a new virtual environment standing in for the base image's Python,
    with its COPY steps done into a WORKDIR: the dependency step finds every requirement satisfied within the
    constraints, and the package installs and `dl4 --help` runs. The apt-get and useradd steps need root on the
    image's OS and are not run here.

    The stand-in sees the packages of the Python running this test (torch, torchvision and the rest, as the image
    sees its own) through a .pth file listing that Python's site-packages folders: the same wherever dl4 was
    installed (a virtual environment, conda, the system Python). ``venv --system-site-packages`` would not do: from
    inside a virtual environment it shows the *base* interpreter's packages, not the environment's."""
    import site

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    (purelib,) = (venv / "lib").glob("python3*/site-packages")
    outer = [p for p in dict.fromkeys([*site.getsitepackages(), site.getusersitepackages()]) if os.path.isdir(p)]
    (purelib / "_outer_environment.pth").write_text("\n".join(outer) + "\n")
    import torch  # the stand-in's torch is this Python's, not its base interpreter's (which may have none)

    seen = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch; print(torch.__file__)"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert seen == torch.__file__, (seen, torch.__file__)
    workdir = tmp_path / "opt" / "dl4"
    workdir.mkdir(parents=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv),
           "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    ran = 0
    for step in STEPS:
        if step.cmd == "COPY":
            *sources, target = step.value
            for source in sources:
                destination = workdir / target / (source if target.endswith("/") else "")
                (shutil.copytree if (REPO / source).is_dir() else shutil.copy)(REPO / source, destination)
        elif step.cmd == "RUN" and not step.value[0].startswith(("apt-get", "useradd")):
            command = step.value[0].replace("/tmp/", f"{tmp_path}/")
            out = subprocess.run(["/bin/sh", "-c", command], cwd=workdir, env=env, capture_output=True, text=True)
            assert out.returncode == 0, f"{step.original}\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
            assert "Installing collected packages: torch" not in out.stdout
            ran += 1
    assert ran == 2
    constraints = (tmp_path / "constraints.txt").read_text().split()
    assert [c.split("==")[0] for c in constraints] == ["torch", "torchvision"]
    assert (venv / "bin" / "dl4").is_file()


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
