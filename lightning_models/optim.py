"""How every dl4 model gets its optimiser, and the optimisers that ``torch.optim`` has no class for.

Every LightningModule takes its optimiser and schedule as arguments (jsonargparse's ``OptimizerCallable`` and
``LRSchedulerCallable``: a class path and init args in the config, called with the parameters), as
lightning-hydra-template's ``MNISTLitModule(net, optimizer, scheduler)`` does, and builds them in
``configure_optimizers``, after ``setup``, over the parameters it has then (the VSE builds its vocabulary-sized
layers in ``setup``). A config says it one way for every model:

    model:
      init_args:
        optimizer: {class_path: torch.optim.Adam, init_args: {lr: 1.0e-3}}
        lr_scheduler: {class_path: torch.optim.lr_scheduler.CosineAnnealingLR, init_args: {T_max: 40}}

(the GAN takes one pair per player: ``d_optimizer``/``d_lr_scheduler`` and ``g_optimizer``/``g_lr_scheduler``).
"""

from collections.abc import Callable, Iterable

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable, ReduceLROnPlateau

from dl4.errors import ConfigError


def fused_adam(lr: float = 1e-3, **kwargs) -> Callable[[Iterable[torch.nn.Parameter]], torch.optim.Adam]:
    """Adam at ``lr`` with the fused kernel where the parameters allow it (CPU, CUDA): one op for all parameters,
    not ~10 a tensor. A model's default optimiser when its config gives none."""

    def build(params) -> torch.optim.Adam:
        params = list(params)
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.Adam(params, lr=lr, fused=fused, **kwargs)

    return build


def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters an optimiser should see: those that take a gradient (a frozen network's stay out)."""
    return [p for p in module.parameters() if p.requires_grad]


def build_optimizer(optimizer: OptimizerCallable, params, key: str = "optimizer") -> torch.optim.Optimizer:
    """``optimizer(params)``, with torch's own check of its arguments (``lr=-1``) reported as the config's mistake
    in one line (``ConfigError``) instead of a traceback."""
    try:
        return optimizer(params)
    except ValueError as err:
        raise ConfigError(f"model.init_args.{key}: {err}") from None


def optimizer_with_schedule(params, optimizer: OptimizerCallable, lr_scheduler: LRSchedulerCallable | None = None):
    """``configure_optimizers``' answer for one optimiser over ``params`` and its schedule, if any: a
    ``ReduceLROnPlateau`` (Lightning's, which names its metric) is handed the value it follows after each validation;
    the others step after every epoch."""
    opt = build_optimizer(optimizer, params)
    if lr_scheduler is None:
        return opt
    scheduler = lr_scheduler(opt)
    if isinstance(scheduler, ReduceLROnPlateau):
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "monitor": scheduler.monitor}}
    return [opt], [scheduler]


class ClippedAdam(torch.optim.Adam):
    """Adam whose gradient is first clipped coordinate by coordinate to ``clip`` times that coordinate's running
    scale, sqrt(v_hat) + eps, with v_hat Adam's bias-corrected second moment:

        g_i <- clamp(g_i, -clip * (sqrt(v_hat_i) + eps), clip * (sqrt(v_hat_i) + eps))

    then the usual Adam step. Adam's step along a coordinate is lr * m_hat / (sqrt(v_hat) + eps): about lr while
    the gradient keeps its scale, but a lone gradient 1,000 times that scale still moves the coordinate by about
    25 lr over the next steps, as m forgets it ten times faster than v. Clipped, it moves it by about ``clip`` lr
    (tests/test_lightning_models/test_optim.py). A norm clip (AutoClip, the Trainer's clip) cannot do this: it
    scales every coordinate alike, and a spike concentrated in a few coordinates whose gradients had all but
    vanished keeps its full-size step there.
    Adafactor clips its update per tensor (Shazeer & Stern 2018, sec. 6) and StableAdamW scales the rate per
    tensor (Wortsman et al. 2023); neither is in torch.optim with Adam's momentum, hence this class. The first
    step, with no history, is Adam's.

    On the NTM's copy task it did not stop relapses (docs/results/ntm.md, issue 18: 2 of 5 seeds passed at
    ``clip: 3``, against 5 of 5 with Adam at eps 1e-4), so no config uses it; the experiment's command is there."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, clip: float = 5.0):
        if not clip > 0:
            raise ValueError(f"optimizer.init_args.clip must be > 0, got {clip}")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.defaults["clip"] = clip
        for group in self.param_groups:
            group.setdefault("clip", clip)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:  # Lightning computes the gradients in the closure
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for p in group["params"]:
                state = self.state[p]
                if p.grad is None or "exp_avg_sq" not in state:
                    continue
                v_hat = state["exp_avg_sq"] / (1 - beta2 ** state["step"])  # a tensor power: no host sync
                bound = group["clip"] * (v_hat.sqrt() + group["eps"])
                p.grad.clamp_(-bound, bound)
        super().step()
        return loss
