"""Pictures of one input that both the training callbacks and ``dl4 predict`` draw: the region a spatial transformer
samples (``region_pictures``) and the NTM's Figure 6 (``trace_figure``). They import nothing of the models, so a
model's ``predict_step`` can draw them too."""

import torch
from torchvision.utils import draw_keypoints

from callbacks.media import figure_to_image, pyplot


def to_pixels(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Normalised (x, y) in [-1, 1] (align_corners=False) -> pixel coordinates (x right, y down)."""
    return torch.stack([(points[..., 0] + 1) * width / 2 - 0.5, (points[..., 1] + 1) * height / 2 - 0.5], -1)


def grid_outline(grid: torch.Tensor, per_side: int = 16) -> torch.Tensor:
    """The border of sampling grids (B, H', W', 2), clockwise from the top left, ``per_side`` points a side,
    closed: (B, 4 * per_side + 1, 2)."""
    H, W = grid.shape[1:3]
    rows = torch.linspace(0, H - 1, per_side).round().long()
    cols = torch.linspace(0, W - 1, per_side).round().long()
    top, right = grid[:, 0, cols], grid[:, rows, -1]
    bottom, left = grid[:, -1, cols.flip(0)], grid[:, rows.flip(0), 0]
    return torch.cat([top, right, bottom, left, top[:, :1]], dim=1)


def region_pictures(U: torch.Tensor, V: torch.Tensor, grid: torch.Tensor, control: torch.Tensor | None = None,
                    zoom: int = 4) -> torch.Tensor:
    """For every image: the input U (grey, ``zoom`` times larger) with the grid's outline in red (and the TPS control
    points' source positions in yellow), then the output V at the same zoom; (2B, 3, h, w) uint8, input then
    output, for ``image_grid``."""
    B, _, h, w = U.shape
    up = torch.nn.functional.interpolate(U[:, :1].float().clamp(0, 1), scale_factor=zoom, mode="nearest")
    pictures = (up * 255).round().to(torch.uint8).expand(B, 3, h * zoom, w * zoom)
    outline = (to_pixels(grid_outline(grid.float().cpu()), h, w) + 0.5) * zoom - 0.5
    # draw_keypoints draws its connecting lines in white only: the outline is drawn as dense red dots instead
    dense = torch.nn.functional.interpolate(outline.transpose(1, 2), size=8 * zoom * (h + w), mode="linear",
                                            align_corners=True).transpose(1, 2)
    out = []
    for b in range(B):
        picture = draw_keypoints(pictures[b].cpu(), dense[b:b + 1], colors="red", radius=1)
        if control is not None:
            points = (to_pixels(control[b:b + 1].float().cpu(), h, w) + 0.5) * zoom - 0.5
            picture = draw_keypoints(picture, points, colors="yellow", radius=2)
        output = torch.nn.functional.interpolate(V[b:b + 1, :1].float().clamp(0, 1), size=(h * zoom, w * zoom),
                                                 mode="nearest")
        out += [picture, (output[0] * 255).round().to(torch.uint8).expand(3, -1, -1).cpu()]
    return torch.stack(out)


def trace_figure(inputs, targets, outputs, trace):
    """Figure 6 of the paper for one sequence: inputs, targets and outputs over time (top), the add vectors and
    write weightings, the read vectors and read weightings (below), time running left to right."""
    plt = pyplot()
    T, out_steps = inputs.shape[0], targets.shape[0]
    padded_targets = torch.zeros(T, targets.shape[-1])
    padded_targets[T - out_steps:] = targets
    panels = [("inputs", inputs.T), ("targets", padded_targets.T), ("outputs", outputs.T)]
    if trace is not None:
        panels += [("adds a_t", trace["adds"][:, 0].T), ("write weightings w_t", trace["write_weights"][:, 0].T),
                   ("reads r_t", trace["reads"][:, 0].T), ("read weightings w_t", trace["read_weights"][:, 0].T)]
    heights = [min(5.0, max(2.0, p[1].shape[0] / 8)) for p in panels]  # 128 memory rows get 5 units, not 16
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(4.0, T / 6), sum(heights) * 0.6), dpi=100,
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (title, image) in zip(axes[:, 0], panels):
        ax.imshow(image.numpy(), aspect="auto", interpolation="nearest", cmap="gray" if "put" in title
                  or "targets" in title else "viridis")
        ax.set_title(title, fontsize=8, loc="left")
        ax.set_yticks([])
    axes[-1, 0].set_xlabel("time")
    fig.tight_layout()
    return figure_to_image(fig)
