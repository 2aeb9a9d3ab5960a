"""The learning-rate schedules of lightning_models/schedules.py, against the closed forms the models used before."""

import pytest
import torch

from lightning_models.schedules import ExponentialLRFrom, HalvingLR


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
