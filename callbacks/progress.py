"""The progress bar of every dl4 run: Lightning's tqdm bar, redrawn a few times a second at most."""

import time

from lightning.pytorch.callbacks import TQDMProgressBar


class TimedProgressBar(TQDMProgressBar):
    """Lightning's ``TQDMProgressBar``, whose training line is redrawn at most once every ``min_interval`` seconds,
    on top of its ``refresh_rate`` of one step in N (dl4 sets N = 10 through ``TQDM_MINITERS``); at an epoch's end
    Lightning redraws it with the epoch's full count. ``dl4`` adds one to every run with a progress bar, unless the
    config gives its own.

    Lightning redraws on every N-th step whatever the time, and tqdm's own ``mininterval`` does not hold back those
    forced redraws: for a 3 ms step that is some 30 terminal writes a second (each also a line of W&B's console
    log), with the metrics formatted each time, 0.1-0.2 ms a step on a CPU (docs/results/overhead.md). The counts
    shown are exact whenever the line is drawn; validation, test and predict bars are Lightning's.
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False,
                 min_interval: float = 0.2):
        super().__init__(refresh_rate, process_position, leave)
        self.min_interval = min_interval
        self._next_draw = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bar = self.train_progress_bar
        if time.monotonic() >= self._next_draw:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            if bar.n == batch_idx + 1:  # drawn (Lightning sets the count when it redraws)
                self._next_draw = time.monotonic() + self.min_interval
        elif batch_idx + 1 == bar.total:
            bar.n = bar.total  # drawn by Lightning's redraw at the epoch's end, with the epoch's metrics
