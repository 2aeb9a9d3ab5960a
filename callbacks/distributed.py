"""What every dl4 run gets under DDP, beyond Lightning's own handling (added by ``dl4/cli.py``)."""

import lightning as L
import torch


class BroadcastBuffers(L.Callback):
    """Every process evaluates rank zero's model: its buffers (batch norm's running statistics) are broadcast to
    the other processes before each validation and test.

    DDP broadcasts the buffers at the start of every training forward, but batch norm then updates them from the
    process's own shard of the batch, so after the last step each process holds its own running statistics, and
    a validation under DDP would mix the predictions of slightly different models. (``sync_batchnorm`` keeps them
    equal on GPUs; torch's SyncBatchNorm runs on GPUs only.) Rank zero's buffers are the ones its checkpoint saves,
    so the numbers are those of the checkpoint, as one process computes them."""

    def _broadcast(self, trainer, pl_module):
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            for buffer in pl_module.buffers():
                torch.distributed.broadcast(buffer.data, src=0)

    def on_validation_start(self, trainer, pl_module):
        self._broadcast(trainer, pl_module)

    def on_test_start(self, trainer, pl_module):
        self._broadcast(trainer, pl_module)
