"""dl4's progress bar: Lightning's, redrawn at most every ``min_interval`` seconds, always at an epoch's end, and
the one every `dl4` run with a bar gets."""

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader

from callbacks import TimedProgressBar
from tests.conftest import REPO, build_from_config


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Drawn(TimedProgressBar):
    """Notes the count the training line shows after each step (the test's observer)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.shown = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.shown.append(self.train_progress_bar.n)


def drawn_counts(min_interval: float, steps: int = 35, epochs: int = 2) -> list[int]:
    bar = Drawn(min_interval=min_interval)
    L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_model_summary=False,
              callbacks=[bar]).fit(Tiny(), DataLoader(torch.randn(steps, 4, 2), batch_size=None))
    return sorted(set(bar.shown) - {0}), bar.shown


def test_the_bar_is_redrawn_at_most_every_min_interval_and_at_each_epochs_end(monkeypatch, capsys):
    monkeypatch.setenv("TQDM_MINITERS", "10")
    drawn, shown = drawn_counts(min_interval=0.0)
    assert drawn == [10, 20, 30, 35]  # no time limit: Lightning's every-10-steps redraw, and the last batch
    capsys.readouterr()
    drawn, shown = drawn_counts(min_interval=1e9)
    assert drawn == [10, 35]  # the first redraw, then none until the epoch's end shows its full count
    assert shown[34] == shown[-1] == 35
    lines = capsys.readouterr().out
    assert "Epoch 0: 100%" in lines and "35/35" in lines and "20/35" not in lines


def test_every_run_gets_the_timed_bar_unless_it_has_none_or_its_own():
    config = REPO / "configs" / "ae_mnist.yaml"
    bars = lambda *o: [type(c) for c in build_from_config(config, *o).trainer.callbacks  # noqa: E731
                       if isinstance(c, TQDMProgressBar)]
    assert bars() == [TimedProgressBar]
    assert bars("--trainer.enable_progress_bar=false") == []
    assert bars("--trainer.callbacks+=TQDMProgressBar") == [TQDMProgressBar]
