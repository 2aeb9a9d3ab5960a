"""The learning-rate schedules of lightning_models/schedules.py, against the closed forms the models used before."""

import pytest
import torch

from lightning_models.schedules import DecayOnceBelow, ExponentialLRFrom, HalvingLR


def rates(scheduler_class, epochs: int, **kwargs) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.005)
    scheduler = scheduler_class(opt, **kwargs)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return out


def test_halving_lr_is_constant_during_linear_start_then_halves_every_n_epochs():
    lr = rates(HalvingLR, 120, every=25, after_epoch=20)
    assert lr == [0.005 * 0.5 ** (max(0, e - 20 + 1) // 25) for e in range(120)]  # MemN2N's former factor
    assert lr[43] == 0.005 and lr[44] == 0.0025 and lr[69] == 0.00125


@pytest.mark.parametrize("start", [0, 60])
def test_exponential_lr_from_an_epoch(start):
    lr = rates(ExponentialLRFrom, 80, gamma=0.9, start_epoch=start)
    assert lr == [0.005 * 0.9 ** max(0, e - start) for e in range(80)]  # the NTM's former LambdaLR
    assert lr[start] == 0.005 and lr[start + 1] < 0.005


def test_decay_once_below_waits_for_the_threshold_then_decays_whatever_follows():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = DecayOnceBelow(opt, monitor="val/bits_per_seq", below=0.1, factor=0.5, min_lr=1e-4)
    lr = []
    for cost in [80, 20, 0.5, 0.09, 3.0, 0.05, 0.04, 0.03]:  # below at the 4th, a relapse at the 5th
        opt.step()
        scheduler.step(cost)
        lr.append(opt.param_groups[0]["lr"])
    assert lr == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 2.5e-4, 1.25e-4, 1e-4, 1e-4])
    assert scheduler.get_last_lr() == [1e-4]
    resumed = DecayOnceBelow(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3),
                             monitor="val/bits_per_seq", below=0.1)
    resumed.load_state_dict(scheduler.state_dict())  # a resumed run keeps decaying, even above the threshold
    assert resumed.reached and resumed.last_epoch == 8


def test_decay_once_below_reaches_lightning_with_its_monitor(tmp_path):
    """A model's configure_optimizers hands Lightning a ReduceLROnPlateau with its monitor
    (``lightning_models.optim.optimizer_with_schedule``): the config's scheduler steps on the validation cost."""
    from functools import partial

    from lightning_models.optim import optimizer_with_schedule

    answer = optimizer_with_schedule([torch.nn.Parameter(torch.zeros(1))], partial(torch.optim.SGD, lr=0.1),
                                     partial(DecayOnceBelow, monitor="val/x", below=1.0))
    assert answer["lr_scheduler"]["monitor"] == "val/x" and isinstance(answer["lr_scheduler"]["scheduler"],
                                                                      DecayOnceBelow)


def test_decay_once_below_shortens_adams_second_moment_memory_when_the_threshold_is_reached():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = DecayOnceBelow(opt, monitor="val/x", below=0.1, beta2=0.99)
    scheduler.step(5.0)
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)
    scheduler.step(0.05)
    assert opt.param_groups[0]["betas"] == (0.9, 0.99) and opt.param_groups[0]["lr"] == pytest.approx(8e-4)
    with pytest.raises(ValueError, match="beta2 is for Adam-like"):
        DecayOnceBelow(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), "val/x", 0.1, beta2=0.99)

