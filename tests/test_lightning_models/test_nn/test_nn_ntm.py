"""The NTM's addressing, reading and writing (Graves et al. 2014, eqs. 2-9) against values worked out by hand."""

import math

import pytest
import torch

from lightning_models.nn.ntm import (NeuralTuringMachine, address, circular_shift, content_weighting, interpolate,
                                     read, sharpen, write)


def t(*rows):
    """A float64 vector, or a matrix from several rows."""
    return torch.tensor(rows[0] if len(rows) == 1 else rows, dtype=torch.float64)


def test_content_weighting_is_a_softmax_of_beta_times_cosine():
    memory = t([1.0, 0.0], [0.0, 1.0], [1.0, 1.0]).unsqueeze(0)  # (B=1, N=3, W=2)
    k, beta = t([2.0, 0.0]).view(1, 1, 2), t([2.0]).view(1, 1)
    # cosine(k, M(i)) = 1, 0, 1/sqrt 2 (the key's length does not matter)
    scores = torch.tensor([2.0, 0.0, 2 / math.sqrt(2)], dtype=torch.float64)
    expected = scores.exp() / scores.exp().sum()
    torch.testing.assert_close(content_weighting(memory, k, beta)[0, 0], expected)
    # beta = 0 ignores the content: uniform
    torch.testing.assert_close(content_weighting(memory, k, beta * 0)[0, 0], torch.full((3,), 1 / 3,
                                                                                          dtype=torch.float64))


def test_interpolation_gate():
    w_c, w_prev = t([1.0, 0.0, 0.0]).view(1, 1, 3), t([0.0, 0.0, 1.0]).view(1, 1, 3)
    torch.testing.assert_close(interpolate(w_c, w_prev, t([0.25]).view(1, 1))[0, 0], t([0.25, 0.0, 0.75]))
    torch.testing.assert_close(interpolate(w_c, w_prev, t([1.0]).view(1, 1)), w_c)


@pytest.mark.parametrize("start, s, end", [
    (0, [0.0, 0.0, 1.0], 1),  # shift +1
    (4, [0.0, 0.0, 1.0], 0),  # +1 wraps around the end
    (0, [1.0, 0.0, 0.0], 4),  # -1 wraps around the start
    (2, [0.0, 1.0, 0.0], 2),  # no shift
])
def test_circular_shift_moves_a_sharp_focus_with_wrap_around(start, s, end):
    w = torch.nn.functional.one_hot(torch.tensor(start), 5).double().view(1, 1, 5)
    out = circular_shift(w, t(s).view(1, 1, 3))
    torch.testing.assert_close(out[0, 0], torch.nn.functional.one_hot(torch.tensor(end), 5).double())


def test_circular_shift_is_eq_8_on_a_blurred_weighting():
    w, s = t([0.5, 0.5, 0.0, 0.0, 0.0]).view(1, 1, 5), t([0.2, 0.3, 0.5]).view(1, 1, 3)  # s(-1), s(0), s(+1)
    # w~(i) = s(0) w(i) + s(+1) w(i-1) + s(-1) w(i+1), indices mod 5
    expected = t([0.3 * 0.5 + 0.2 * 0.5, 0.3 * 0.5 + 0.5 * 0.5, 0.5 * 0.5, 0.0, 0.2 * 0.5])
    torch.testing.assert_close(circular_shift(w, s)[0, 0], expected)
    # a wider shift range, against the sum written out with explicit modulo indices
    w, s = torch.softmax(torch.randn(2, 3, 7, dtype=torch.float64), -1), torch.softmax(torch.randn(2, 3, 5,
                                                                                              dtype=torch.float64), -1)
    slow = torch.zeros_like(w)
    for i in range(7):
        for j in range(7):
            shift = (i - j) % 7
            shift = shift - 7 if shift > 3 else shift
            if abs(shift) <= 2:
                slow[..., i] += w[..., j] * s[..., shift + 2]
    torch.testing.assert_close(circular_shift(w, s), slow)


def test_sharpening():
    w, gamma = t([0.5, 0.25, 0.25]).view(1, 1, 3), t([2.0]).view(1, 1)
    torch.testing.assert_close(sharpen(w, gamma)[0, 0], t([2 / 3, 1 / 6, 1 / 6]))
    torch.testing.assert_close(sharpen(w, gamma / 2), w)  # gamma = 1 leaves it as it is


def test_addressing_gives_weightings_that_sum_to_one():
    B, H, N, W = 4, 3, 16, 6
    memory, w_prev = torch.randn(B, N, W), torch.softmax(torch.randn(B, H, N), -1)
    w = address(memory, w_prev, torch.randn(B, H, W), torch.rand(B, H) * 5, torch.rand(B, H),
                torch.softmax(torch.randn(B, H, 3), -1), 1 + torch.rand(B, H) * 3)
    assert w.shape == (B, H, N) and (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(B, H))


def test_read_and_erase_add_write_on_a_tiny_memory():
    memory = t([1.0, 2.0], [3.0, 4.0]).unsqueeze(0)
    torch.testing.assert_close(read(memory, t([0.25, 0.75]).view(1, 1, 2))[0, 0], t([2.5, 3.5]))
    # a sharp write to row 0 that erases the first column and adds (5, 6): row 0 = (0, 2) + (5, 6)
    out = write(memory, t([1.0, 0.0]).view(1, 1, 2), t([1.0, 0.0]).view(1, 1, 2), t([5.0, 6.0]).view(1, 1, 2))
    torch.testing.assert_close(out[0], t([5.0, 8.0], [3.0, 4.0]))
    # a blurred full erase halves every cell; nothing is added
    out = write(memory, t([0.5, 0.5]).view(1, 1, 2), t([1.0, 1.0]).view(1, 1, 2), t([0.0, 0.0]).view(1, 1, 2))
    torch.testing.assert_close(out[0], memory[0] / 2)
    # two write heads: both erases multiply, both adds sum
    w, e, a = t([1.0, 0.0], [1.0, 0.0]).unsqueeze(0), t([0.5, 0.5], [0.5, 0.5]).unsqueeze(0), t([1.0, 0.0],
                                                                                              [0.0, 1.0]).unsqueeze(0)
    torch.testing.assert_close(write(memory, w, e, a)[0], t([1.0 / 4 + 1, 2.0 / 4 + 1], [3.0, 4.0]))


@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
@pytest.mark.parametrize("memory_init", ["constant", "learned", "random"])
def test_the_machine_steps_a_batch_through_time(controller, memory_init):
    ntm = NeuralTuringMachine(9, 8, controller, controller_size=32, memory_rows=16, memory_width=5, read_heads=2,
                              write_heads=2, memory_init=memory_init)
    x = torch.randn(7, 3, 9)
    logits, trace = ntm(x, record=True)
    assert logits.shape == (7, 3, 8)
    assert trace["read_weights"].shape == (3, 7, 2, 16) and trace["write_weights"].shape == (3, 7, 2, 16)
    assert trace["reads"].shape == (3, 7, 2, 5) and trace["adds"].shape == (3, 7, 2, 5)
    assert trace["memory"].shape == (3, 7, 16, 5)
    torch.testing.assert_close(trace["read_weights"].sum(-1), torch.ones(3, 7, 2))
    if memory_init != "random":  # a fresh random memory per call changes the outputs
        torch.testing.assert_close(ntm(x), logits)
    logits.sum().backward()
    assert all(p.grad is not None for p in ntm.parameters())


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="controller"):
        NeuralTuringMachine(9, 8, controller="gru")
    with pytest.raises(ValueError, match="memory_init"):
        NeuralTuringMachine(9, 8, memory_init="zeros")
    with pytest.raises(ValueError, match="read and one write head"):
        NeuralTuringMachine(9, 8, read_heads=0)
