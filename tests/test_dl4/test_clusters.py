"""Launching the way clusters do: torchrun (Lightning reads its environment) and SLURM (Lightning's SLURM
environment: the requeue signal, a pre-emption's SIGTERM, and the requeued job resuming by itself)."""

import os
import signal
import subprocess
import time

import pytest
import torch

from conftest import CONFIGS, REPO, assert_ddp_validation_is_one_process
from dl4.wandb_records import history

WHOLE_ODD_SET = ["--data.init_args.val_size=1001", "--trainer.limit_val_batches=1.0"]


def _env(data_root, **more) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SLURM_"))}
    return {**env, "DL4_DATA_DIR": str(data_root), "PYTHONWARNINGS": "ignore", **more}


@pytest.mark.slow
def test_torchrun_starts_two_cpu_processes_that_train_as_one_ddp_run(tmp_path, mnist_root):
    """`torchrun --nproc_per_node 2 --no-python dl4 fit ...`: torchrun starts both processes and sets their ranks;
    Lightning's TorchElastic environment picks them up (it does not start processes of its own), and they train as
    one DDP run (gloo). This is also the autoencoders' DDP test: the DAE's pictures are drawn once (rank zero, 2
    epochs), and its last validation is one process's on the same examples."""
    out = subprocess.run(
        ["torchrun", "--nproc_per_node", "2", "--standalone", "--no-python", "dl4", "fit",
         "--config", str(CONFIGS / "dae_mnist.yaml"), "--trainer.accelerator=cpu", "--trainer.devices=2",
         "--trainer.strategy=ddp", "--trainer.max_epochs=2", "--trainer.limit_train_batches=4", *WHOLE_ODD_SET,
         "--trainer.logger=CSVLogger", "--trainer.logger.save_dir=runs", "--trainer.enable_progress_bar=false"],
        cwd=tmp_path, env=_env(mnist_root), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "MEMBER: 1/2" in text and "MEMBER: 2/2" in text, text[-2000:]
    (run,) = (tmp_path / "runs").glob("*/version_*")
    assert len(list((run / "media" / "media_reconstructions").glob("*.png"))) == 2  # 2 epochs, rank zero only
    # the whole validation set, 1,001 images: 501 on rank 0 and 500 on rank 1 (datamodules.tensors.eval_sampler);
    # with Lightning's own sampler rank 1 gets a copy of image 0, and the mean moves by 2.4e-4 (checked)
    assert "val/recon" in assert_ddp_validation_is_one_process(run, CONFIGS / "dae_mnist.yaml", *WHOLE_ODD_SET,
                                                                data_root=mnist_root, val_batches="1.0")


def _wait_for(predicate, process, timeout=120.0):
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None, f"dl4 ended early with status {process.returncode}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
def test_slurm_job_saves_on_the_requeue_signal_and_on_preemption_then_the_requeued_job_resumes(tmp_path, mnist_root):
    """A SLURM job as docs/cluster/dl4.sbatch runs it (srun's variables for 1 task, WANDB_RUN_ID from the job id,
    default_root_dir runs/slurm-<job id>), with `scontrol` replaced by a script that records its call. SIGUSR1 (the
    sbatch script's --signal): Lightning saves hpc_ckpt_1.ckpt and asks for the requeue; then SIGTERM (what the
    requeue, or a pre-emption, sends): dl4 saves hpc_ckpt_2.ckpt and exits with 143. The same command again
    (SLURM_RESTART_COUNT=1) resumes from hpc_ckpt_2.ckpt by itself, into the same W&B run, to the end."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.log\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = dict(SLURM_JOB_ID="4242", SLURM_JOB_NAME="dl4", SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1",
                 SLURM_NNODES="1", SLURM_NODELIST="localhost", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0",
                 WANDB_RUN_ID="slurm-4242", WANDB_RESUME="allow", WANDB_MODE="offline",
                 PATH=f"{bin_dir}:{os.environ['PATH']}")
    command = ["dl4", "fit", "--config", str(CONFIGS / "vae_mnist.yaml"), "--trainer.max_steps=1200",
               "--trainer.limit_val_batches=2", "--trainer.val_check_interval=300", "--trainer.enable_progress_bar=false",
               "--trainer.default_root_dir=runs/slurm-4242"]
    root = tmp_path / "runs" / "slurm-4242"
    with open(tmp_path / "first.log", "w") as log:
        job = subprocess.Popen(command, cwd=tmp_path, env=_env(mnist_root, **slurm), stdout=log, stderr=subprocess.STDOUT)
        # training is under way once the first validation (step 300) has written its best-epoch checkpoint: a fixed
        # sleep after start-up can end before the first step on a loaded machine
        _wait_for(lambda: any((tmp_path / "runs").rglob("best-*.ckpt")), job)
        job.send_signal(signal.SIGUSR1)
        _wait_for(lambda: (root / "hpc_ckpt_1.ckpt").is_file(), job)
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=120) == 143, (tmp_path / "first.log").read_text()[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    first, second = (torch.load(root / f"hpc_ckpt_{n}.ckpt", weights_only=False)["global_step"] for n in (1, 2))
    assert 0 < first <= second < 1200
    again = subprocess.run(command, cwd=tmp_path, env=_env(mnist_root, **slurm, SLURM_RESTART_COUNT="1"),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Restored all states from the checkpoint at runs/slurm-4242/hpc_ckpt_2.ckpt" in again.stderr
    assert "`Trainer.fit` stopped: `max_steps=1200` reached" in again.stderr
    runs = sorted((tmp_path / "runs" / "wandb").glob("offline-run-*-slurm-4242"))
    assert len(runs) == 2  # one W&B run in two parts, which `wandb sync` uploads as one
    steps = [row["trainer/global_step"] for row in history(runs[1]) if "trainer/global_step" in row]
    assert steps and min(steps) >= second  # the requeued job went on from the step it saved


def test_sbatch_script_is_valid_bash_and_sets_up_what_the_test_above_stands_in_for():
    script = (REPO / "docs" / "cluster" / "dl4.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(REPO / "docs" / "cluster" / "dl4.sbatch")]).returncode == 0
    options = [line.split(None, 1)[1] for line in script.splitlines() if line.startswith("#SBATCH")]
    assert {"--requeue", "--signal=SIGUSR1@120"} <= set(options)
    per_node = next(o for o in options if o.startswith("--ntasks-per-node="))
    gpus = next(o for o in options if o.startswith("--gpus-per-node="))
    assert per_node.split("=")[1] == gpus.split("=")[1]  # one task per GPU
    assert 'srun "${RUN[@]}" fit' in script and '--trainer.devices="$SLURM_NTASKS_PER_NODE"' in script
    assert "WANDB_RUN_ID=${WANDB_RUN_ID:-slurm-${SLURM_JOB_ID}} WANDB_RESUME=allow" in script
    assert '--trainer.default_root_dir="runs/slurm-${SLURM_JOB_ID}"' in script
