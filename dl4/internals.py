"""Everything dl4 needs from Lightning, torch and W&B that they offer no public way to do: the one module that
touches their private names (``tests/test_internals.py`` checks that no other project file does, and that each use
below still works).

Checked on lightning 2.6.6, torch 2.14.1 and wandb 0.31.0; ``pyproject.toml`` bounds the three to these minor
versions. To try a newer one: ``pip install "lightning==2.7.*"`` (say), then ``python -m pytest
tests/test_internals.py`` and the full suite (a deprecation raised by dl4's own calls fails it); if both pass, raise
the bound in ``pyproject.toml`` in the same commit. Each use names the test that fails if the library changes it.

Lightning
- ``CheckpointHparamsHook``: LightningCLI reads a ``--ckpt_path``'s hyperparameters in ``_parse_ckpt_path``, which
  has no public hook, and its version lets the checkpoint override the ``--model.*`` flags the user typed and cannot
  resolve ``--ckpt_path last``. dl4's ``DL4CLI.checkpoint_settings`` replaces it (``test_ckpt_path_hook``).
- ``logger_writes_this_step``: whether Lightning sends this step's logged values to the logger
  (``trainer._logger_connector.should_update_logs``); a model skips ``self.log`` (0.5 ms of Python) on the other
  steps. The count it is based on (batches that stepped) has no public counter: ``trainer.global_step`` counts
  optimizer steps, two a batch for the GAN (``test_logger_writes_this_step``).
- ``hpc_checkpoint_path``: the ``hpc_ckpt_N.ckpt`` file that a requeued SLURM job resumes from by itself
  (``trainer._checkpoint_connector.hpc_save_path``), where a pre-empted run saves (``test_hpc_checkpoint_path``).
- ``find_unused_parameters``: the GAN's players each leave the other's parameters without a gradient, so DDP must
  look for unused parameters; the strategy's DDP arguments are ``strategy._ddp_kwargs`` until ``setup`` wraps the
  model (``test_find_unused_parameters``).
- ``drop_loader_position``: a checkpoint written at an epoch's end must not restore the train loader's position
  (the next epoch starts a fresh order); it is ``checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]``
  (``test_drop_loader_position``; the resume tests in ``tests/test_faults.py`` depend on it).

torch
- ``BackendCompilerFailed``: the error ``torch.compile`` raises when it cannot build a kernel (no C++ compiler),
  in ``torch._dynamo.exc``; the NTM turns it into a one-line hint (``test_backend_compiler_failed``).
- ``set_last_lr``: a scheduler that sets the rates itself (``DecayOnceBelow``) records them where
  ``get_last_lr()`` reads them, ``scheduler._last_lr`` (``test_set_last_lr``).

W&B
- ``wandb_record``: wandb 0.31 has no Python reader of an offline run's ``.wandb`` log (``wandb sync`` reads it in
  its Go core); ``dl4/wandb_records.py`` parses the file's records with W&B's protobuf class
  ``wandb.proto.wandb_internal_pb2.Record`` (``test_wandb_record``).
- ``sweep_parameter_to_distribution``, ``search_space_from_sweep_config``, ``sweep_directions``: W&B's own
  translation of a sweep file into Optuna's distributions (``wandb.sdk.sweeps.scheduler.optuna``), and
  ``create_sweep_command``/``create_sweep_command_args``: the command line W&B's agent gives a trial
  (``wandb.sdk.launch.sweeps.utils``); ``generate_id``: W&B's run ids (``wandb.sdk.lib.runid``). ``dl4 sweep``
  runs a W&B sweep without W&B's server with them (``test_sweep_helpers``).
- ``wandb_agent_trial``: a test starts a sweep's command through W&B's own agent (``Agent._command_run``, the
  method its server's "run" message calls), to check that a dl4 run is the agent's run
  (``tests/test_dl4/test_sweep.py::test_wandb_agent_runs_the_command_into_its_run``).
"""

from lightning.pytorch.cli import LightningCLI


class CheckpointHparamsHook(LightningCLI):
    """LightningCLI with its ``--ckpt_path`` hyperparameter step handed to ``checkpoint_settings``."""

    def _parse_ckpt_path(self) -> None:
        self.checkpoint_settings()

    def checkpoint_settings(self) -> None:
        """Override: fold a ``--ckpt_path``'s settings into ``self.config`` (after parsing, before building)."""


def logger_writes_this_step(trainer) -> bool:
    return trainer is not None and trainer._logger_connector.should_update_logs


def hpc_checkpoint_path(trainer) -> str:
    return trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)


def find_unused_parameters(strategy) -> dict | None:
    """Makes a DDP strategy look for unused parameters unless the config chose (no effect on other strategies);
    returns the strategy's DDP arguments (None for a strategy without them)."""
    ddp_kwargs = getattr(strategy, "_ddp_kwargs", None)
    if isinstance(ddp_kwargs, dict):
        ddp_kwargs.setdefault("find_unused_parameters", True)
        return ddp_kwargs
    return None


def drop_loader_position(checkpoint: dict) -> None:
    checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).pop("combined_loader", None)


def backend_compiler_failed() -> type[Exception]:
    import torch._dynamo.exc

    return torch._dynamo.exc.BackendCompilerFailed


def set_last_lr(scheduler) -> None:
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def wandb_record():
    """An empty W&B ``Record`` protobuf, to parse one record of an offline run's log into."""
    from wandb.proto import wandb_internal_pb2

    return wandb_internal_pb2.Record()


def sweep_parameter_to_distribution(parameter: dict):
    from wandb.sdk.sweeps.scheduler.optuna import sweep_parameter_to_distribution as translate

    return translate(parameter)


def search_space_from_sweep_config(parameters: dict) -> dict:
    from wandb.sdk.sweeps.scheduler.optuna import search_space_from_sweep_config as translate

    return translate(parameters)


def sweep_directions(spec: dict) -> list:
    from wandb.sdk.sweeps.scheduler.optuna import sweep_directions as directions

    return directions(spec)


def create_sweep_command(command: list) -> list:
    from wandb.sdk.launch.sweeps.utils import create_sweep_command as create

    return create(command)


def create_sweep_command_args(params: dict) -> dict:
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args as create

    return create(params)


def generate_id() -> str:
    from wandb.sdk.lib.runid import generate_id as new_id

    return new_id()


def wandb_agent_trial(sweep_command: list, sweep_id: str, run_id: str, params: dict):
    """Starts ``sweep_command`` as W&B's agent starts a trial (the server's "run" message with these parameters);
    returns the trial's process."""
    from wandb.wandb_agent import Agent

    agent = Agent(api=None, queue=None, sweep_id=sweep_id)
    agent._sweep_command = list(sweep_command)
    agent._command_run({"type": "run", "run_id": run_id, "program": "dl4",
                        "args": {k: {"value": v} for k, v in params.items()}})
    return agent._run_processes[run_id]
