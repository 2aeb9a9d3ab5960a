# dl4 on a GPU cluster: the official CUDA PyTorch image + the dl4 package; the entrypoint is the `dl4` console script.
#   docker build -t dl4 .
#   docker run --gpus all --shm-size 8g -v /path/to/data:/data -v $PWD/runs:/opt/dl4/runs \
#       -e WANDB_API_KEY -e WANDB_MODE dl4 fit --config configs/vae_mnist.yaml --trainer.devices=-1
# More (a sweep agent, SLURM with Apptainer): README.md, "GPU clusters".
# The base image's torch and torchvision satisfy pyproject.toml and are pinned while the dependencies install, so pip
# keeps the image's CUDA build. CUDA 12.6 runs on NVIDIA drivers >= 560; pass another tag with --build-arg.
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DL4_DATA_DIR=/data

# a C++ compiler for torch.compile (the NTM compiles its time step; Inductor builds its CPU kernels with it)
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/dl4
# The dependencies first, from pyproject.toml alone: a change to the code does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && python -c "from importlib.metadata import version as v; print(f'torch=={v(\"torch\")}\ntorchvision=={v(\"torchvision\")}')" > /tmp/constraints.txt \
    && pip install -r /tmp/requirements.txt -c /tmp/constraints.txt

COPY README.md ./
COPY dl4 ./dl4
COPY lightning_models ./lightning_models
COPY datamodules ./datamodules
COPY callbacks ./callbacks
RUN pip install --no-deps . && dl4 --help > /dev/null
COPY configs ./configs
COPY sweeps ./sweeps

# a non-root user owns the data and runs folders (mount volumes over them)
RUN useradd --create-home --uid 1000 dl4 && mkdir -p /data /opt/dl4/runs && chown dl4:dl4 /data /opt/dl4/runs
USER dl4
VOLUME ["/data", "/opt/dl4/runs"]
ENTRYPOINT ["dl4"]
CMD ["--help"]
