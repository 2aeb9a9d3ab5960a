"""Learning-rate schedules the papers use that ``torch.optim.lr_scheduler`` has no class for. Each of the epoch
schedules is a ``LambdaLR`` (the rate is the base rate times a closed-form factor of the epoch, so a resumed run
continues it exactly); ``DecayOnceBelow`` follows a validation metric, as ``ReduceLROnPlateau`` does.
Give them in a config as ``lr_scheduler: {class_path: lightning_models.schedules.<Name>, init_args: ...}``."""

from lightning.pytorch.cli import ReduceLROnPlateau
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from dl4.internals import set_last_lr


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


class DecayOnceBelow(ReduceLROnPlateau):
    """A learning-rate decay that starts once the model has learned the task: after the first validation at which
    ``monitor`` falls below ``below``, every validation multiplies the rate by ``factor`` (never below ``min_lr``),
    whatever the value does next. With ``beta2``, Adam's second-moment decay is set to it at that moment.

    On the NTM's copy task (docs/results/ntm.md, issue 18) it kept converged runs from relapsing but froze the
    runs that had stalled or relapsed at the threshold, with or without ``beta2=0.99``; what made every seed
    of the compiled path converge was Adam's ``eps`` (1e-4). The experiments there use it, with the commands that rerun them.
    On fresh seed 107 (issue 35) it did not prevent a relapse after converging, and the run did not recover at the
    small rate.
    A ``ReduceLROnPlateau``, so that Lightning hands it the monitored value after each validation; give it as
    ``lr_scheduler: {class_path: lightning_models.schedules.DecayOnceBelow, init_args: {monitor: val/..., below: 0.1}}``."""

    def __init__(self, optimizer: Optimizer, monitor: str, below: float, factor: float = 0.8, min_lr: float = 1e-5,
                 beta2: float | None = None):
        super().__init__(optimizer, monitor, mode="min", factor=factor, min_lr=min_lr)
        if beta2 is not None and any("betas" not in group for group in optimizer.param_groups):
            raise ValueError(f"lr_scheduler.init_args.beta2 is for Adam-like optimisers (with betas); "
                             f"{type(optimizer).__name__} has none")
        self.below, self.beta2, self.reached = below, beta2, False

    def step(self, metrics, epoch=None):
        self.last_epoch += 1
        if not self.reached and float(metrics) < self.below:
            self.reached = True
            for group in self.optimizer.param_groups if self.beta2 is not None else ():
                group["betas"] = (group["betas"][0], self.beta2)
        if self.reached:
            for group, floor in zip(self.optimizer.param_groups, self.min_lrs):
                group["lr"] = max(group["lr"] * self.factor, floor)
        set_last_lr(self)  # where get_last_lr() reads the rates
