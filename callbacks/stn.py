"""What a spatial transformer attends to: the slides' "input -> spatial transformer -> region of interest", live.

Every N validation epochs (global rank zero only), ``TransformerPictures`` takes a fixed validation batch and logs
- ``media/st_regions``: each input with the transformed sampling grid drawn on it (the outline of T_theta(G), the
  region the transformer reads: a box for affine, a quadrilateral for projective, a curved outline with the warped
  control points for TPS), next to the transformer's output V;
- ``media/st_theta``: the distribution of theta over ``num_theta`` validation digits: the scale and rotation of the
  affine part (affine, projective), or how far the TPS control points moved. An affine transformer that undoes RTS
  spreads its rotations over the distortion's range and zooms in (scale < 1).
"""

import torch
from callbacks.media import EveryNEpochs, figure_to_image, image_grid, log_image, pyplot
from callbacks.pictures import region_pictures
from lightning_models.nn.stn import affine_scale_rotation, identity_theta


def theta_figure(theta: torch.Tensor, transform: str, tps_grid=(4, 4)):
    """Histograms of theta over a batch: scale and rotation of the affine part, or the TPS points' displacement."""
    plt = pyplot()
    theta = theta.float().cpu()
    if transform == "tps":
        moved = (theta - identity_theta("tps", tps_grid)).view(len(theta), -1, 2).norm(dim=-1).mean(1)
        fig, ax = plt.subplots(1, 1, figsize=(4, 3), dpi=100)
        ax.hist(moved.numpy(), bins=30)
        ax.set_xlabel("mean control point displacement (normalised units)")
    else:
        scale, rotation = affine_scale_rotation(theta[:, :6])
        fig, axes = plt.subplots(1, 2, figsize=(8, 3), dpi=100)
        axes[0].hist(scale.numpy(), bins=30)
        axes[0].set_xlabel("scale sqrt|det A| (< 1: zoomed in)")
        axes[1].hist(rotation.numpy(), bins=30)
        axes[1].set_xlabel("rotation of A (degrees)")
    fig.suptitle(f"theta of the {transform} transformer over {len(theta)} validation digits", fontsize=9)
    fig.tight_layout()
    return fig


class TransformerPictures(EveryNEpochs):
    """Every ``every_n_epochs`` validation epochs: the regions the transformer reads for ``num_images`` fixed
    validation digits, and the distribution of theta over the first ``num_theta`` of them."""

    def __init__(self, every_n_epochs: int = 1, num_images: int = 16, num_theta: int = 1000):
        super().__init__(every_n_epochs)
        self.num_images, self.num_theta = num_images, num_theta

    def draw(self, trainer, pl_module):
        st = pl_module.transformer
        if st is None:
            return  # a classifier without a transformer has no region to draw
        x, _ = trainer.datamodule.fixed_batch(max(self.num_images, self.num_theta), device=pl_module.device)
        U = x[:self.num_images]
        V, theta = st(U)
        grid = st.grid(theta, U.shape[1])
        control = theta.view(len(U), -1, 2) if st.transform == "tps" else None
        pictures = region_pictures(U, V, grid, control)
        log_image(trainer, "media/st_regions", image_grid(pictures.float() / 255, nrow=8),
                  caption=f"epoch {trainer.current_epoch}: input with the sampled region (red), then the output")
        all_theta = torch.cat([st.theta(chunk).float() for chunk in x.split(500)])
        log_image(trainer, "media/st_theta", figure_to_image(theta_figure(all_theta, st.transform, st.tps_grid)),
                  caption=f"epoch {trainer.current_epoch}")
