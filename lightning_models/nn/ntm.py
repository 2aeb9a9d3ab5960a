"""Neural Turing Machine (Graves et al. 2014): memory, addressing, heads and controller, in plain torch.

Shapes: batch B, memory rows N, row width W (the paper's M), heads H. The whole batch steps through time
together; all heads (reads and writes) are addressed in one batched pass per step.

    r_t = sum_i w_t(i) M_t(i)                                          (eq. 2, read)
    M~_t(i) = M_{t-1}(i) [1 - w_t(i) e_t]                              (eq. 3, erase)
    M_t(i) = M~_t(i) + w_t(i) a_t                                      (eq. 4, add)
    w^c_t(i) = softmax_i(beta_t K[k_t, M_t(i)]),  K = cosine           (eqs. 5-6, content addressing)
    w^g_t = g_t w^c_t + (1 - g_t) w_{t-1}                              (eq. 7, interpolation gate)
    w~_t(i) = sum_j w^g_t(j) s_t(i - j)   (indices mod N)              (eq. 8, circular shift)
    w_t(i) = w~_t(i)^gamma_t / sum_j w~_t(j)^gamma_t                   (eq. 9, sharpening)
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dl4.errors import ConfigError, check_positive

MemoryInit = Literal["constant", "learned", "random"]


# --- addressing (section 3.3) ---

def content_weighting(memory: torch.Tensor, k: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Eqs. 5-6: w^c(i) = softmax_i(beta * cosine(k, M(i))). memory (B, N, W), k (B, H, W), beta (B, H)
    -> (B, H, N)."""
    # K[k, M(i)] = k . M(i) / (|k| |M(i)|), for all heads and rows in one batched matrix product
    similarity = F.normalize(k, dim=-1, eps=1e-8) @ F.normalize(memory, dim=-1, eps=1e-8).transpose(1, 2)
    return torch.softmax(beta.unsqueeze(-1) * similarity, dim=-1)


def interpolate(w_c: torch.Tensor, w_prev: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Eq. 7: w^g = g w^c + (1 - g) w_{t-1}; g (B, H) in [0, 1]."""
    g = g.unsqueeze(-1)
    return g * w_c + (1 - g) * w_prev


def circular_shift(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Eq. 8: w~(i) = sum_j w(j) s(i - j), indices modulo N. s (B, H, 2K+1) weighs the shifts -K..K (a shift of
    +1 moves the focus from row i to row i+1)."""
    k = s.shape[-1] // 2
    out = s[..., k:k + 1] * w
    for shift in range(1, k + 1):  # torch.roll(w, shift)(i) = w(i - shift), wrapping around at both ends
        out = out + s[..., k + shift:k + shift + 1] * torch.roll(w, shift, -1) \
            + s[..., k - shift:k - shift + 1] * torch.roll(w, -shift, -1)
    return out


def sharpen(w: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Eq. 9: w(i) = w~(i)^gamma / sum_j w~(j)^gamma, gamma >= 1 (B, H)."""
    # as softmax(gamma log w~): the same ratio, but w~^gamma cannot underflow to 0 / 0 (1/128 ^ 21 is 5e-45)
    return torch.softmax(gamma.unsqueeze(-1) * w.clamp_min(1e-30).log(), dim=-1)


def address(memory, w_prev, k, beta, g, s, gamma) -> torch.Tensor:
    """Figure 2's pipeline: content weighting, gate, shift, sharpen -> w_t (B, H, N), each row summing to 1."""
    return sharpen(circular_shift(interpolate(content_weighting(memory, k, beta), w_prev, g), s), gamma)


# --- reading and writing (sections 3.1, 3.2) ---

def read(memory: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Eq. 2: r = sum_i w(i) M(i). memory (B, N, W), w (B, H, N) -> (B, H, W)."""
    return w @ memory


def write(memory: torch.Tensor, w: torch.Tensor, e: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Eqs. 3-4 for H write heads: every head's erase, then every head's add (both commute across heads).
    w (B, H, N), e and a (B, H, W)."""
    erase = 1 - w.unsqueeze(-1) * e.unsqueeze(-2)  # (B, H, N, W)
    keep = erase[:, 0] if erase.shape[1] == 1 else erase.prod(1)
    return memory * keep + w.transpose(1, 2) @ a


# --- the machine ---

@dataclass
class NTMState:
    memory: torch.Tensor  # M_t (B, N, W)
    weights: torch.Tensor  # w_t of every head (B, R + V, N): the R read heads first, then the V write heads
    reads: torch.Tensor  # r_t (B, R, W)
    controller: tuple[torch.Tensor, torch.Tensor] | None  # the LSTM's (h, c), None for a feed-forward controller


class NeuralTuringMachine(nn.Module):
    """A controller network with R read and V write heads over an N x W memory (Figure 1).

    At each step the controller sees the input x_t and the previous reads r_{t-1}. Its output sets every head's
    k, beta, g, s, gamma (and e, a for writes) through one linear layer, clipped to [-clip, clip] as Collier &
    Beel (2018) do for stability. All heads are addressed on M_{t-1}; the read heads read it (eq. 2), then the
    write heads erase and add (eqs. 3-4). The output y_t is a logit read off the controller state and the reads.

    Args:
        memory_init: ``constant`` (every cell 1e-6, the fastest to converge in Collier & Beel 2018), ``learned``
            (a trained bias) or ``random`` (fresh N(0, 0.5^2) memory for every sequence).
        shift_range: K, the allowed shifts -K..K of eq. 8.
    """

    def __init__(self, input_size: int, output_size: int, controller: Literal["lstm", "feedforward"] = "lstm",
                 controller_size: int = 100, memory_rows: int = 128, memory_width: int = 20, read_heads: int = 1,
                 write_heads: int = 1, shift_range: int = 1, memory_init: MemoryInit = "constant",
                 clip: float = 20.0):
        super().__init__()
        check_positive("model", controller_size=controller_size, memory_rows=memory_rows, memory_width=memory_width,
                       clip=clip)
        if read_heads < 1 or write_heads < 1:
            raise ConfigError(f"an NTM needs at least one read and one write head, got {read_heads} and {write_heads}")
        self.N, self.W, self.R, self.V = memory_rows, memory_width, read_heads, write_heads
        self.memory_init, self.clip = memory_init, clip
        controller_in = input_size + read_heads * memory_width
        if controller == "lstm":
            self.controller = nn.LSTMCell(controller_in, controller_size)
        elif controller == "feedforward":
            self.controller = nn.Sequential(nn.Linear(controller_in, controller_size), nn.ReLU())
        else:
            raise ConfigError(f"unknown controller {controller!r}; choose 'lstm' or 'feedforward'")
        self.is_lstm = controller == "lstm"
        # per head: k (W), beta, g, gamma (1 each), s (2K+1); per write head also e and a (W each)
        self.address_sizes = [memory_width, 1, 1, 2 * shift_range + 1, 1]
        self.heads = nn.Linear(controller_size, (read_heads + write_heads) * sum(self.address_sizes)
                               + write_heads * 2 * memory_width)
        self.output = nn.Linear(controller_size + read_heads * memory_width, output_size)
        # initial state: learned reads r_0; every head's w_0 focused on row 0 (where a tape head starts), which
        # breaks the rows' symmetry: a constant M_0 gives every row the same content weight, and a uniform w_0
        # would stay uniform through eqs. 7-9 forever; M_0 is learned when memory_init == "learned"
        self.r0 = nn.Parameter(torch.randn(read_heads, memory_width) * 0.01)
        self.register_buffer("w0", F.one_hot(torch.zeros(read_heads + write_heads, dtype=torch.long),
                                             memory_rows).float(), persistent=False)
        if memory_init == "learned":
            self.m0 = nn.Parameter(torch.randn(memory_rows, memory_width) / math.sqrt(memory_rows + memory_width))
        elif memory_init not in ("constant", "random"):
            raise ConfigError(f"unknown memory_init {memory_init!r}; choose 'constant', 'learned' or 'random'")
        self.controller_size = controller_size

    def initial_state(self, batch_size: int) -> NTMState:
        ref = self.r0
        if self.memory_init == "constant":
            memory = ref.new_full((batch_size, self.N, self.W), 1e-6)
        elif self.memory_init == "learned":
            memory = self.m0.expand(batch_size, -1, -1)
        else:
            memory = torch.randn(batch_size, self.N, self.W, device=ref.device) * 0.5
        weights = self.w0.expand(batch_size, -1, -1)
        reads = self.r0.expand(batch_size, -1, -1)
        controller = None
        if self.is_lstm:
            zeros = ref.new_zeros(batch_size, self.controller_size)
            controller = (zeros, zeros)
        return NTMState(memory, weights, reads, controller)

    def head_parameters(self, h: torch.Tensor):
        """Controller output h -> every head's (k, beta, g, s, gamma) and the write heads' (e, a)."""
        B, H = h.shape[0], self.R + self.V
        out = self.heads(h).clamp(-self.clip, self.clip)
        addressing, erase_add = out.split([H * sum(self.address_sizes), self.V * 2 * self.W], dim=-1)
        k, beta, g, s, gamma = addressing.view(B, H, -1).split(self.address_sizes, dim=-1)
        e, a = erase_add.view(B, self.V, 2 * self.W).chunk(2, dim=-1)
        return (k, F.softplus(beta.squeeze(-1)), torch.sigmoid(g.squeeze(-1)), torch.softmax(s, -1),
                1 + F.softplus(gamma.squeeze(-1)), torch.sigmoid(e), a)

    def step(self, x: torch.Tensor, state: NTMState) -> tuple[torch.Tensor, NTMState, dict]:
        controller_in = torch.cat([x, state.reads.flatten(1)], dim=-1)
        if self.is_lstm:
            h, c = self.controller(controller_in, state.controller)
            controller = (h, c)
        else:
            h, controller = self.controller(controller_in), None
        k, beta, g, s, gamma, e, a = self.head_parameters(h)
        w = address(state.memory, state.weights, k, beta, g, s, gamma)
        reads = read(state.memory, w[:, : self.R])
        memory = write(state.memory, w[:, self.R:], e, a)
        y = self.output(torch.cat([h, reads.flatten(1)], dim=-1))
        return y, NTMState(memory, w, reads, controller), {"add": a, "erase": e}

    def compile_step(self) -> None:
        """Train with the time step compiled by ``torch.compile``: the few dozen small operations of a step fuse
        into a handful of kernels (2.7x the sequences per second of eager mode on a 2-core CPU, at batch 32).
        Evaluation and traces (no gradient) run eagerly; the first training step of a new batch shape pays the
        compilation (about 30 s on that CPU)."""
        self._compiled_step = torch.compile(self.step, dynamic=False)

    def forward(self, x: torch.Tensor, record: bool = False):
        """x (T, B, input_size) -> logits (T, B, output_size); with ``record``, also the trace of every step:
        read and write weightings, read and add vectors, and the memory after each step."""
        state = self.initial_state(x.shape[1])
        outputs, trace = [], {"read_weights": [], "write_weights": [], "reads": [], "adds": [], "memory": []}
        step = self.step
        if getattr(self, "_compiled_step", None) is not None and self.training and torch.is_grad_enabled():
            step = self._compiled_step
        for x_t in x:
            y, state, extra = step(x_t, state)
            outputs.append(y)
            if record:
                trace["read_weights"].append(state.weights[:, : self.R])
                trace["write_weights"].append(state.weights[:, self.R:])
                trace["reads"].append(state.reads)
                trace["adds"].append(extra["add"])
                trace["memory"].append(state.memory)
        logits = torch.stack(outputs)
        if not record:
            return logits
        return logits, {key: torch.stack(value, dim=1) for key, value in trace.items()}  # (B, T, ...)


class StackedLSTM(nn.Module):
    """The paper's baseline: a stacked LSTM (3 x 256 for copy) reading x_t, with a linear output layer."""

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 256, num_layers: int = 3):
        super().__init__()
        check_positive("model", hidden_size=hidden_size, num_layers=num_layers)
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers)
        self.output = nn.Linear(hidden_size, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.lstm(x)[0])
