"""ClippedAdam (lightning_models/optim.py): Adam itself while every gradient keeps its scale, and a bounded step
for a lone gradient far above it."""

import pytest
import torch

from lightning_models.optim import ClippedAdam


def trajectory(optimizer_class, gradients, **kwargs) -> torch.Tensor:
    p = torch.nn.Parameter(torch.zeros(gradients.shape[1]))
    opt = optimizer_class([p], lr=1e-3, eps=1e-8, **kwargs)
    out = []
    for g in gradients:
        p.grad = g.clone()
        opt.step()
        out.append(p.detach().clone())
    return torch.stack(out)


def steady_gradients(steps=2100, width=4) -> torch.Tensor:  # random signs, one scale: g^2 = v_hat exactly
    return 1e-3 * (torch.randint(0, 2, (steps, width), generator=torch.Generator().manual_seed(0)) * 2 - 1.0)


def test_equals_adam_while_gradients_keep_their_scale():
    g = steady_gradients()
    torch.testing.assert_close(trajectory(ClippedAdam, g, clip=5.0), trajectory(torch.optim.Adam, g),
                               rtol=0, atol=0)


@pytest.mark.parametrize("clip", [3.0, 5.0])
def test_a_lone_spike_moves_a_coordinate_by_about_clip_steps_not_thirty(clip):
    g = steady_gradients()
    spiked = g.clone()
    spiked[2000, 0] = 1.0  # 1,000 times the coordinate's scale, once, late (v_hat's bias correction ~1)
    extra = {}
    for name, cls, kwargs in [("adam", torch.optim.Adam, {}), ("clipped", ClippedAdam, {"clip": clip})]:
        moved = trajectory(cls, spiked, **kwargs) - trajectory(cls, g, **kwargs)
        extra[name] = moved[:, 0].abs().max().item() / 1e-3  # in units of lr
        assert moved[:, 1:].abs().max() == 0  # the other coordinates never notice
    assert extra["adam"] > 20  # Adam (25 lr): m forgets the spike ten times faster than v, so it keeps stepping
    assert extra["clipped"] < clip + 1  # clip lr, and the ordinary step it replaced: 3.96 at clip 3, 5.85 at 5
    assert extra["clipped"] > 1  # still a step in the spike's direction, not dropped


def test_steps_through_a_closure_and_keeps_clip_in_its_state():
    p = torch.nn.Parameter(torch.ones(3))
    opt = ClippedAdam([p], lr=0.1, clip=2.0)

    def closure():
        opt.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 3.0  # the first step: the closure's loss, Adam's step of lr
    torch.testing.assert_close(p.detach(), torch.full((3,), 0.9))
    opt.step(closure)
    again = ClippedAdam([torch.nn.Parameter(p.detach().clone())], clip=7.0)
    again.load_state_dict(opt.state_dict())
    assert again.param_groups[0]["clip"] == 2.0
    with pytest.raises(ValueError, match="optimizer.init_args.clip"):
        ClippedAdam([p], clip=0)
