"""Learning-rate schedules the papers use that ``torch.optim.lr_scheduler`` has no class for; each is a ``LambdaLR``
(the rate is the base rate times a closed-form factor of the epoch, so a resumed run continues it exactly).
Give them in a config as ``lr_scheduler: {class_path: lightning_models.schedules.<Name>, init_args: ...}``."""

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class ExponentialLRFrom(LambdaLR):
    """lr = base_lr * gamma ** max(0, epoch - start_epoch): constant while a task is first learned, then decaying
    (``ExponentialLR`` when ``start_epoch`` is 0, up to rounding: that one multiplies the rate by gamma a step)."""

    def __init__(self, optimizer: Optimizer, gamma: float, start_epoch: int = 0):
        self.gamma, self.start_epoch = gamma, start_epoch
        super().__init__(optimizer, self.factor)

    def factor(self, epoch: int) -> float:
        return self.gamma ** max(0, epoch - self.start_epoch)


class HalvingLR(LambdaLR):
    """lr = base_lr * 0.5 ** (max(0, epoch - after_epoch + 1) // every): constant until ``after_epoch`` (MemN2N's
    linear start), then halved at the end of every ``every`` epochs (Sukhbaatar et al. 2015, sec. 4.2)."""

    def __init__(self, optimizer: Optimizer, every: int = 25, after_epoch: int = 0):
        self.every, self.after_epoch = every, after_epoch
        super().__init__(optimizer, self.factor)

    def factor(self, epoch: int) -> float:
        return 0.5 ** (max(0, epoch - self.after_epoch + 1) // self.every)
