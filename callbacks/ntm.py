"""Pictures of an NTM at work, the paper's Figures 4-6 and 9, live during training (global rank zero only).

``NTMMemoryTrace`` runs the model on one fixed sequence and draws the inputs, targets and outputs, the add vectors
and write weightings, the read vectors and read weightings over time, and the memory at the end of the input
phase; the raw arrays go with the run as ``.npz``. ``CopyGeneralisation`` draws outputs against targets at lengths
beyond training (Figure 4) and the curve of bit errors per sequence against length.
"""

from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only

from callbacks.media import EveryNEpochs, evaluating, figure_to_image, log_image, pyplot, run_file
from callbacks.pictures import trace_figure
from lightning_models.ntm import sequence_cost


def run_model(pl_module, inputs: torch.Tensor, record: bool):
    """The model's output logits on ``inputs`` (T, B, C) in eval mode, and its trace when it has one (on the CPU)."""
    with evaluating(pl_module):
        if record and hasattr(pl_module, "ntm"):
            logits, trace = pl_module(inputs, record=True)
            trace = {key: value.float().cpu() for key, value in trace.items()}
        else:
            logits, trace = pl_module(inputs), None
    return logits.cpu(), trace


def memory_figure(memory: torch.Tensor, step: int):
    """The memory M_t (N x W) as a heatmap, rows down, row width across."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3, 6), dpi=100)
    im = ax.imshow(memory.numpy(), aspect="auto", interpolation="nearest", cmap="RdBu_r")
    ax.set_title(f"memory after step {step}", fontsize=8)
    ax.set_xlabel("width W")
    ax.set_ylabel("row i")
    fig.colorbar(im, ax=ax)
    return figure_to_image(fig)


class NTMMemoryTrace(L.Callback):
    """Every ``every_n_steps`` training steps, run the model on one fixed sequence of ``length`` and log its
    trace figure, the memory heatmap at the end of the input phase, and the raw arrays (``.npz``) with the run.

    Works for any ``SequenceLearner``; models without memory (the LSTM) get the inputs/targets/outputs panel only.
    """

    def __init__(self, every_n_steps: int = 500, length: int = 10, seed: int = 0):
        self.every_n_steps, self.length, self.seed = every_n_steps, length, seed

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.global_step - 1) % self.every_n_steps == 0:  # steps 1, 1 + N, ...: the untrained state first
            self.draw(trainer, pl_module)

    def draw(self, trainer, pl_module):
        inputs, targets = trainer.datamodule.fixed_batch(1, self.seed, pl_module.device, self.length)
        logits, trace = run_model(pl_module, inputs, record=True)
        inputs, targets = inputs.cpu(), targets.cpu()
        outputs = torch.sigmoid(logits[:, 0])
        step = trainer.global_step
        log_image(trainer, "media/ntm_trace", trace_figure(inputs[:, 0], targets[:, 0], outputs,
                                                           None if trace is None else {k: v[0] for k, v in
                                                                                       trace.items()}),
                  f"step {step}: one fixed sequence of length {self.length}")
        arrays = {"inputs": inputs[:, 0].numpy(), "targets": targets[:, 0].numpy(), "outputs": outputs.numpy()}
        if trace is not None:
            input_phase = inputs.shape[0] - targets.shape[0]  # the output phase is the last targets.shape[0] steps
            memory = trace["memory"][0, input_phase - 1]
            log_image(trainer, "media/ntm_memory", memory_figure(memory, input_phase),
                      f"step {step}: memory at the end of the input phase")
            arrays.update({key: value[0].numpy() for key, value in trace.items()})
        np.savez_compressed(run_file(trainer, f"ntm_trace_step{step:07d}.npz"), **arrays)


class CopyGeneralisation(EveryNEpochs):
    """Every ``every_n_epochs`` validation epochs: outputs against targets at ``lengths`` (Figure 4, one sequence
    each) and the bit errors per sequence against length (``num_sequences`` fixed sequences each)."""

    def __init__(self, every_n_epochs: int = 10, lengths: Sequence[int] = (10, 20, 30, 50, 120),
                 num_sequences: int = 16, seed: int = 3):
        super().__init__(every_n_epochs)
        self.lengths, self.num_sequences, self.seed = lengths, num_sequences, seed

    def draw(self, trainer, pl_module):
        plt = pyplot()
        examples, errors = [], []
        for length in self.lengths:
            inputs, targets = trainer.datamodule.fixed_batch(self.num_sequences, self.seed + length, pl_module.device,
                                                             length)
            logits, _ = run_model(pl_module, inputs, record=False)
            targets = targets.cpu()
            errors.append(sequence_cost(logits, targets)[1].mean().item())
            examples.append((targets[:, 0], torch.sigmoid(logits[-targets.shape[0]:, 0])))
        widths = [max(1.0, len(t) / 10) for t, _ in examples]
        fig, axes = plt.subplots(2, len(examples), figsize=(sum(widths) + 1, 2.5), dpi=100, squeeze=False,
                                 gridspec_kw={"width_ratios": widths})
        for j, (length, (target, output)) in enumerate(zip(self.lengths, examples)):
            for i, (name, image) in enumerate((("targets", target), ("outputs", output))):
                axes[i, j].imshow(image.T.numpy(), aspect="auto", interpolation="nearest", cmap="gray", vmin=0, vmax=1)
                axes[i, j].set_xticks([])
                axes[i, j].set_yticks([])
                if j == 0:
                    axes[i, j].set_ylabel(name, fontsize=8)
            axes[0, j].set_title(f"length {length}", fontsize=8)
        fig.tight_layout()
        log_image(trainer, "media/copy_generalisation", figure_to_image(fig),
                  f"epoch {trainer.current_epoch}: targets above outputs")
        fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
        ax.plot(list(self.lengths), errors, "o-")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("bit errors per sequence")
        ax.grid(alpha=0.3)
        log_image(trainer, "media/bit_errors_vs_length", figure_to_image(fig), f"epoch {trainer.current_epoch}")
        for length, value in zip(self.lengths, errors):
            pl_module.log(f"val/gen_bit_errors_len{length}", value, rank_zero_only=True)
