"""Optimisers that ``torch.optim`` has no class for. Give them in a config as
``optimizer: {class_path: lightning_models.optim.<Name>, init_args: ...}``."""

import torch


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
