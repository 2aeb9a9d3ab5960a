"""End-to-End Memory Network (Sukhbaatar et al. 2015), in plain torch.

Shapes: batch B, memory slots M, words per sentence J, embedding d, vocabulary V, hops K. Slot i of a memory is
the statement i + 1 steps back in time (slot 0 the newest), so the temporal index of section 4.1 is the slot.

    m_i = sum_j l_j . A x_ij + T_A(i),   c_i = sum_j l_j . C x_ij + T_C(i)       (sec. 4.1, PE and TE)
    u = sum_j l_j . B q_j                                                        (the question)
    p_i = softmax(u^T m_i)                                                       (eq. 1)
    o = sum_i p_i c_i                                                            (eq. 2)
    u^{k+1} = u^k + o^k        (H u^k + o^k with layer-wise tying)               (eq. 4)
    a^ = softmax(W u^{K+1})                                                      (eq. 3)
    l_kj = (1 - j/J) - (k/d)(1 - 2j/J)                                           (sec. 4.1, position encoding)

With ``time_as_word`` (the default), T_A(i) is weighted like a word: the time word is word J + 1 of every
sentence, as in the slides' v_3 time word and the authors' code, so m_i = sum_j l_j . A x_ij + l_{J+1} . T_A(i)
with l computed for J + 1 words.

Adjacent tying (sec. 2.2): K + 1 embeddings E_0..E_K with A^k = E_{k-1}, C^k = E_k, B = A^1 and W^T = C^K.
Layer-wise tying: one A, one C for all hops, a separate B and W, and a linear map H between hops.
"""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dl4.errors import check_positive


def position_encoding(sentence_length: int, embedding_dim: int) -> torch.Tensor:
    """l_kj = (1 - j/J) - (k/d)(1 - 2j/J) for words j = 1..J and dimensions k = 1..d, as a (J, d) tensor."""
    j = torch.arange(1, sentence_length + 1, dtype=torch.float32).unsqueeze(1) / sentence_length
    k = torch.arange(1, embedding_dim + 1, dtype=torch.float32).unsqueeze(0) / embedding_dim
    return (1 - j) - k * (1 - 2 * j)


def random_time_gaps(n_memories: torch.Tensor, slots: int, fraction: float = 0.1,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Random noise (RN, sec. 4.1): temporal indices with ``fraction`` empty memories spread among the real ones.

    As the authors' code does it: for n statements, draw n_blank ~ U{0..ceil(fraction n)}, take a random n of the
    n + n_blank time steps in order, clip them to the table's last row. (B,) counts -> (B, slots) indices, slot 0
    (the newest) getting the smallest.
    """
    B, device = n_memories.shape[0], n_memories.device
    blank = (torch.rand(B, generator=generator, device=device) * (torch.ceil(fraction * n_memories) + 1)).long()
    span = n_memories + blank  # n + n_blank time steps, of which n hold a statement
    width = slots + math.ceil(fraction * slots) + 1
    keys = torch.rand(B, width, generator=generator, device=device)
    keys = keys.masked_fill(torch.arange(width, device=device) >= span.unsqueeze(1), 2.0)
    steps = keys.argsort(dim=1)[:, :slots]  # a random ordering of 0..span-1 first: its first n are the chosen
    steps = steps.masked_fill(torch.arange(slots, device=device) >= n_memories.unsqueeze(1), width)
    return steps.sort(dim=1).values.clamp_max(slots - 1)


class EndToEndMemoryNetwork(nn.Module):
    """K hops of attention over a memory of sentences, then a softmax over the vocabulary (Figure 1 (b)).

    The embedding matrices are stored side by side, ``E`` (V, n, d) and the time tables ``T`` (M, n, d), so one
    lookup embeds every word in all of them (n = K + 1 tables E_0..E_K when adjacent, A and C when layer-wise):
    on a CPU the lookups' backward passes, not the arithmetic, are most of a step's time.

    Args:
        vocab_size, sentence_length, memory_size: V, J and the rows M of the temporal tables.
        encoding: ``position`` (PE) or ``bow`` (a plain bag of words).
        temporal: add the learned time embeddings T_A, T_C (TE).
        tying: ``adjacent`` or ``layerwise`` (sec. 2.2).
        time_as_word: TE as one more word at the end of every sentence, weighted by PE like the others (the
            authors' code); False adds T(i) unweighted.
    Word id 0 is the padding word: it contributes nothing to a sentence.
    """

    def __init__(self, vocab_size: int, sentence_length: int, memory_size: int = 50, embedding_dim: int = 20,
                 hops: int = 3, encoding: Literal["position", "bow"] = "position", temporal: bool = True,
                 tying: Literal["adjacent", "layerwise"] = "adjacent", time_as_word: bool = True):
        super().__init__()
        check_positive("model", memory_size=memory_size, embedding_dim=embedding_dim, hops=hops)
        self.hops, self.tying, self.temporal = hops, tying, temporal
        n = hops + 1 if tying == "adjacent" else 2  # adjacent: E_0..E_K; layer-wise: A, C
        self.E = nn.Parameter(torch.empty(vocab_size, n, embedding_dim))
        self.T = nn.Parameter(torch.empty(memory_size, n, embedding_dim))
        if tying == "layerwise":
            self.B = nn.Parameter(torch.empty(vocab_size, 1, embedding_dim))  # the question's embedding
            self.W = nn.Parameter(torch.empty(vocab_size, embedding_dim))  # the answer layer
            self.H = nn.Linear(embedding_dim, embedding_dim, bias=False)
        # PE at twice the paper's l_kj, whose weights average 1/2: the authors' code uses
        # 1 + 4 (k - (d+1)/2)(j - (J+1)/2) / (d J), about 2 l_kj, averaging 1 like a bag of words. Unscaled, every
        # sentence vector is halved, attention scores quartered, and task 6 stays at chance (docs/results/memn2n.md).
        words = sentence_length + 1 if temporal and time_as_word else sentence_length  # + the time word
        weights = 2 * position_encoding(words, embedding_dim)
        if encoding == "bow":
            weights = torch.ones_like(weights)
        self.register_buffer("l", weights[:sentence_length].clone())
        self.register_buffer("l_time", weights[sentence_length].clone() if words > sentence_length else torch.ones(
            embedding_dim))  # l_{J+1}, the time word's weights
        for p in self.parameters():
            nn.init.normal_(p, 0.0, 0.1)  # "a Gaussian with zero mean and sigma = 0.1" (sec. 4.2)

    def encode(self, words: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
        """sum_j l_j . E x_j for every table of E (V, n, d): words (..., J) -> (..., n, d). Padding words (id 0)
        count as zero vectors."""
        e = F.embedding(words, E.flatten(1)).unflatten(-1, E.shape[1:])  # (..., J, n, d)
        l = self.l.unsqueeze(1) * (words != 0)[..., None, None]  # (..., J, 1, d)
        return (l * e).sum(-3)

    def forward(self, stories: torch.Tensor, queries: torch.Tensor, n_memories: torch.Tensor,
                softmax: bool = True, time: torch.Tensor | None = None):
        """stories (B, M, J), queries (B, J), n_memories (B,) -> answer logits (B, V) and the attention p of every
        hop (B, K, M). ``softmax=False`` is linear start (LS): p_i = u^T m_i. ``time`` (B, M) overrides the
        temporal indices (random noise). Slots past ``n_memories`` are empty: zero vectors (no words, no time
        embedding) with a score of 0, as in the authors' code, where attention can rest on "nothing"."""
        B, M, _ = stories.shape
        real = torch.arange(M, device=stories.device) < n_memories.unsqueeze(1)  # (B, M)
        if time is None:
            time = torch.arange(M, device=stories.device).expand(B, M)
        adjacent = self.tying == "adjacent"
        if adjacent:  # the question and the memory in one lookup; u = B q with B = A^1 = E_0
            both = self.encode(torch.cat([queries.unsqueeze(1), stories], dim=1), self.E)
            u, memory = both[:, 0, 0], both[:, 1:]
        else:
            u, memory = self.encode(queries, self.B)[:, 0], self.encode(stories, self.E)
        if self.temporal:  # (B, M, n, d): + l_{J+1} . T_k(i) on the real slots; an empty slot stays a zero vector
            memory = memory + (self.l_time * self.T)[time] * real[..., None, None]  # weighs the table, not the batch
        attention = []
        for k in range(self.hops):
            m, c = (memory[:, :, k], memory[:, :, k + 1]) if adjacent else (memory[:, :, 0], memory[:, :, 1])
            scores = (m @ u.unsqueeze(-1)).squeeze(-1)  # u^T m_i
            p = torch.softmax(scores, dim=-1) if softmax else scores  # eq. 1 (or LS)
            o = (p.unsqueeze(1) @ c).squeeze(1)  # eq. 2
            u = u + o if adjacent else self.H(u) + o  # eq. 4
            attention.append(p)
        W = self.E[:, -1] if adjacent else self.W  # W^T = C^K
        return u @ W.T, torch.stack(attention, dim=1)  # eq. 3 (the softmax is in the loss)

    def clip_grad_norm_per_matrix_(self, max_norm: float) -> None:
        """Scales every weight matrix's gradient to an l2 norm of at most ``max_norm``, each matrix on its own, as
        the authors' code clips (sec. 4.2 gives the norm, 40). There an embedding E_k and its time rows T_k are one
        lookup table, so they share a norm; B, W and H (layer-wise tying) are matrices of their own."""
        tables = [p.grad for p in (self.E, self.T) if p.grad is not None]  # (V or M, n, d): table k is [:, k]
        if tables:
            norms = sum(g.pow(2).sum((0, 2)) for g in tables).sqrt()  # (n,): the norm of E_k and T_k together
            for g in tables:
                g.mul_((max_norm / norms).clamp(max=1.0)[:, None])
        for name, p in self.named_parameters():  # B, W and H with layer-wise tying: whole matrices, torch's clip
            if name not in ("E", "T"):
                torch.nn.utils.clip_grad_norm_(p, max_norm)
