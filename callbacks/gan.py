"""Pictures of a GAN: samples from a fixed noise batch, noise interpolations, and for 1-D data the paper's
Figure 1 (data density, generator density, D(x) and the mapping z -> x) as a series over training.

Each callback draws every ``every_n_epochs`` validation epochs on global rank zero.
"""

import lightning as L
import torch

from callbacks.media import EveryNEpochs, FixedNoiseSamples, figure_to_image, image_grid, log_image, pyplot


class MomentumRamp(L.Callback):
    """The paper's momentum schedule (pylearn2's ``MomentumAdjustor``): every optimiser's momentum rises linearly
    from ``start`` at the first epoch to ``final`` at epoch ``saturate`` and stays there (0.5 to 0.7 by epoch 250
    in the paper's code). Not a learning-rate schedule, so not a ``torch.optim.lr_scheduler``; set at the start of
    every epoch from the epoch alone, so a resumed run continues it."""

    def __init__(self, start: float = 0.5, final: float = 0.7, saturate: int = 250):
        self.start, self.final, self.saturate = start, final, saturate

    def on_train_epoch_start(self, trainer, pl_module):
        progress = min(1.0, trainer.current_epoch / max(1, self.saturate - 1))
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["momentum"] = self.start + progress * (self.final - self.start)


class GANSamples(FixedNoiseSamples):
    """G(z) for the same noise batch every time, so the grids of successive epochs compare."""

    key, caption = "media/gan_samples", "G(z), the same z every epoch"


class NoiseInterpolation(EveryNEpochs):
    """G((1 - t) z_a + t z_b) for fixed pairs of noise vectors, t from 0 to 1: one row per pair."""

    def __init__(self, every_n_epochs: int = 1, num_pairs: int = 8, steps: int = 10, seed: int = 1):
        super().__init__(every_n_epochs)
        self.num_pairs, self.steps, self.seed = num_pairs, steps, seed

    def draw(self, trainer, pl_module):
        z = pl_module.noise(2 * self.num_pairs, generator=torch.Generator().manual_seed(self.seed))
        t = torch.linspace(0, 1, self.steps, device=z.device).view(1, -1, 1)
        path = (1 - t) * z[0::2].unsqueeze(1) + t * z[1::2].unsqueeze(1)  # (pairs, steps, noise_dim)
        log_image(trainer, "media/gan_interpolation", image_grid(pl_module.sample(z=path.flatten(0, 1)), nrow=self.steps),
                  "each row: G((1 - t) z_a + t z_b), t = 0..1")


class GANTrainingFigure(EveryNEpochs):
    """Goodfellow et al. 2014, Figure 1, for a GAN on 1-D data: along x, the data density (black, dotted; from the
    datamodule's ``density``), the generator's density (green, a histogram of G(z)) and D(x) (blue, dashed);
    below, the lines z -> x = G(z) from evenly spaced z. At the equilibrium the densities agree and D(x) = 1/2."""

    def __init__(self, every_n_epochs: int = 1, num_samples: int = 20000, num_lines: int = 25):
        super().__init__(every_n_epochs)
        self.num_samples, self.num_lines = num_samples, num_lines

    def draw(self, trainer, pl_module):
        x = trainer.datamodule.fixed_batch(self.num_samples, device=pl_module.device)[0]  # real examples: the x range
        image = figure_1(pl_module, getattr(trainer.datamodule, "density", None), x, self.num_samples, self.num_lines)
        log_image(trainer, "media/gan_figure_1", image,
                  f"epoch {trainer.current_epoch}: p_data (black), p_g (green), D(x) (blue), z -> x = G(z)")


@torch.no_grad()
def figure_1(pl_module, density, real: torch.Tensor, num_samples: int = 20000, num_lines: int = 25) -> torch.Tensor:
    """Draw Figure 1 for the module's current G and D; returns the picture as a (3, H, W) tensor in [0, 1]."""
    plt = pyplot()
    fake = pl_module.sample(num_samples).flatten().cpu()
    lo = min(fake.quantile(0.001).item(), real.min().item()) - 0.5
    hi = max(fake.quantile(0.999).item(), real.max().item()) + 0.5
    grid = torch.linspace(lo, hi, 400)
    d_of_x = torch.sigmoid(pl_module.discriminator(grid.view(-1, 1).to(pl_module.device))).cpu()
    bound = 3 ** 0.5 if pl_module.hparams.prior == "uniform" else 2.5
    z_line = torch.linspace(-bound, bound, num_lines).view(-1, 1)
    x_of_z = pl_module.generator(z_line.to(pl_module.device)).flatten().cpu()

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if density is not None:
        ax.plot(grid, density(grid), "k:", lw=2, label="p_data")
    ax.hist(fake.clamp(lo, hi), bins=80, range=(lo, hi), density=True, histtype="step", color="g", lw=1.5, label="p_g")
    ax.plot(grid, d_of_x, "b--", lw=2, label="D(x)")
    ax.axhline(0.5, color="0.7", lw=0.5)
    # the mapping: z on the lower line (stretched over the x range), x = G(z) on the upper one
    y_z, y_x = -0.35, -0.1
    z_at = lo + (z_line.flatten() + bound) / (2 * bound) * (hi - lo)
    ax.hlines([y_z, y_x], lo, hi, color="k", lw=0.8)
    for a, b in zip(z_at.tolist(), x_of_z.tolist()):
        ax.annotate("", xy=(b, y_x), xytext=(a, y_z), arrowprops={"arrowstyle": "->", "lw": 0.6, "color": "0.3"})
    ax.text(lo, y_z - 0.08, "z", fontsize=9)
    ax.text(lo, y_x + 0.02, "x", fontsize=9)
    ax.set_xlim(lo, hi)
    ax.set_ylim(-0.5, max(1.05, float(d_of_x.max()) + 0.05))
    ax.legend(loc="upper right", fontsize=8)
    return figure_to_image(fig)
