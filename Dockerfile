# dl4 on a GPU cluster: CUDA PyTorch base image + the dl4 package; the entrypoint is the `dl4` console script.
#   docker build -t dl4 .
#   docker run --gpus all --shm-size 8g -v /path/to/data:/data -v $PWD/runs:/opt/dl4/runs \
#       -e WANDB_API_KEY dl4 fit --config configs/vae_mnist.yaml --trainer.accelerator=gpu
# The base image's torch/torchvision satisfy pyproject.toml, so pip keeps its CUDA build.
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DL4_DATA_DIR=/data

# a C++ compiler for torch.compile (the NTM compiles its time step; Inductor and Triton build kernels with it)
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/dl4
COPY pyproject.toml README.md ./
COPY dl4 ./dl4
COPY lightning_models ./lightning_models
COPY datamodules ./datamodules
COPY callbacks ./callbacks
RUN pip install . && dl4 --help > /dev/null
COPY configs ./configs
COPY sweeps ./sweeps

VOLUME ["/data", "/opt/dl4/runs"]
ENTRYPOINT ["dl4"]
CMD ["--help"]
