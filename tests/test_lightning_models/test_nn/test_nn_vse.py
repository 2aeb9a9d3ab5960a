"""The VSE blocks against the slides' equations and hand-made answers."""

import math

import pytest
import torch
import torch.nn.functional as F

from dl4.errors import ConfigError
from lightning_models.nn.vse import (CaptionDecoder, PeepholeLSTM, SentenceEncoder, SmallCNN, beam_search, decode,
                                     embedding_arithmetic, greedy_decode, pairwise_ranking_loss, recall_at,
                                     retrieval_ranks)


def test_ranking_loss_is_the_slides_double_sum():
    x, v = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    alpha = 0.3
    s = lambda a, b: float(a @ b)  # noqa: E731
    per_image = [sum(max(0.0, alpha - s(x[i], v[i]) + s(x[i], v[k])) for k in range(6) if k != i) for i in range(6)]
    per_caption = [sum(max(0.0, alpha - s(v[i], x[i]) + s(v[i], x[k])) for k in range(6) if k != i) for i in range(6)]
    expected = sum(per_image) / 6 + sum(per_caption) / 6
    assert pairwise_ranking_loss(x, v, alpha).item() == pytest.approx(expected, rel=1e-5)


def test_hardest_negative_takes_the_largest_violation():
    x, v = F.normalize(torch.randn(5, 4), dim=-1), F.normalize(torch.randn(5, 4), dim=-1)
    s = x @ v.T
    d = s.diagonal()
    worst_caption = [max(max(0.0, float(0.2 - d[i] + s[i, k])) for k in range(5) if k != i) for i in range(5)]
    worst_image = [max(max(0.0, float(0.2 - d[k] + s[i, k])) for i in range(5) if i != k) for k in range(5)]
    expected = sum(worst_caption) / 5 + sum(worst_image) / 5
    assert pairwise_ranking_loss(x, v, 0.2, hardest=True).item() == pytest.approx(expected, rel=1e-5)
    assert pairwise_ranking_loss(x, v, 0.2, hardest=True) <= pairwise_ranking_loss(x, v, 0.2)


def test_ranks_and_recall_on_a_hand_made_similarity_matrix():
    # 3 images, 2 captions each (caption c belongs to image c // 2)
    sims = torch.tensor([[0.9, 0.1, 0.8, 0.0, 0.2, 0.3],    # image 0: own caption 0 is first       -> rank 0
                         [0.5, 0.4, 0.1, 0.2, 0.6, 0.0],    # image 1: own best 0.2; 0.5, 0.4, 0.6 above -> rank 3
                         [0.1, 0.2, 0.3, 0.9, 0.5, 0.4]])   # image 2: own best 0.5; 0.9 above        -> rank 1
    owner = torch.tensor([0, 0, 1, 1, 2, 2])
    i2t, t2i = retrieval_ranks(sims, owner)
    assert i2t.tolist() == [0, 3, 1]
    # caption columns: c0 own 0.9 first -> 0; c1 own 0.1, 0.4 and 0.2 above -> 2; c2 own 0.1 -> 2; c3 own 0.2 -> 1
    # (0.9 above); c4 own 0.5, 0.6 above -> 1; c5 own 0.4, none above -> 0
    assert t2i.tolist() == [0, 2, 2, 1, 1, 0]
    r = recall_at(i2t, (1, 2, 5))
    assert r["r1"] == pytest.approx(100 / 3) and r["r2"] == pytest.approx(200 / 3) and r["r5"] == 100
    assert r["median_rank"] == 2.0


def test_ties_count_against_the_query_so_a_collapsed_model_finds_nothing():
    """Constant (or NaN) scores, as from an embedding that maps everything to one point: every other caption and
    image ties with the right one and ranks above it, so R@K is 0 (chance is K/1000 and about 5K/5000), not 100."""
    owner = torch.arange(1000).repeat_interleave(5)
    for sims in (torch.zeros(1000, 5000), torch.full((1000, 5000), float("nan"))):
        i2t, t2i = retrieval_ranks(sims, owner)
        assert i2t.tolist() == [4995] * 1000 and t2i.tolist() == [999] * 5000
        for ranks, chance in ((i2t, lambda k: 100 * (1 - math.comb(4995, k) / math.comb(5000, k))),
                              (t2i, lambda k: 100 * k / 1000)):
            r = recall_at(ranks)
            assert all(r[f"r{k}"] <= chance(k) for k in (1, 5, 10)) and r["r10"] == 0
    # twins: images 0 and 1 with the same content, a perfect model scores 1 for its content's captions
    owner = torch.tensor([0, 0, 1, 1, 2, 2])
    content = torch.tensor([0, 0, 1])
    perfect = (content[:, None] == content[owner][None, :]).float()
    i2t, t2i = retrieval_ranks(perfect, owner)
    assert i2t.tolist() == [2, 2, 0] and t2i.tolist() == [1, 1, 1, 1, 0, 0]


def test_peephole_lstm_follows_equations_1_to_5_step_by_step():
    torch.manual_seed(1)
    cell = PeepholeLSTM(3, 4)
    with torch.no_grad():
        for p in (cell.w_ci, cell.w_cf, cell.w_co):
            p.normal_()
    x = torch.randn(2, 5, 3)
    outputs, (h_T, c_T) = cell(x)
    W_x, b = cell.W_x.weight, cell.W_x.bias
    W_h = cell.W_h.weight
    Wxi, Wxf, Wxc, Wxo = W_x.chunk(4)
    Whi, Whf, Whc, Who = W_h.chunk(4)
    bi, bf, bc, bo = b.chunk(4)
    h, c = torch.zeros(2, 4), torch.zeros(2, 4)
    sig = torch.sigmoid
    for t in range(5):
        xt = x[:, t]
        i = sig(xt @ Wxi.T + h @ Whi.T + cell.w_ci * c + bi)            # (1)
        f = sig(xt @ Wxf.T + h @ Whf.T + cell.w_cf * c + bf)            # (2)
        c = f * c + i * torch.tanh(xt @ Wxc.T + h @ Whc.T + bc)        # (3)
        o = sig(xt @ Wxo.T + h @ Who.T + cell.w_co * c + bo)            # (4)
        h = o * torch.tanh(c)                                          # (5)
        torch.testing.assert_close(outputs[:, t], h)
    torch.testing.assert_close(h_T, h)
    torch.testing.assert_close(c_T, c)


@pytest.mark.parametrize("cell", ["lstm", "peephole", "linear"])
def test_v_does_not_change_with_padding(cell):
    enc = SentenceEncoder(6, 8, cell).eval()
    words = torch.randn(3, 4, 6)
    lengths = torch.tensor([4, 2, 3])
    v = enc(words, lengths)
    padded = torch.cat([words, torch.randn(3, 5, 6) * 100], dim=1)  # garbage after the end
    garbage = words.clone()
    garbage[1, 2:] = 1e3
    torch.testing.assert_close(enc(padded, lengths), v)
    torch.testing.assert_close(enc(garbage, lengths), v)
    torch.testing.assert_close(enc(words[1:2, :2], lengths[1:2]), v[1:2])  # the sentence alone, unpadded


def test_beam_search_of_width_1_is_greedy_and_a_wider_beam_finds_no_worse_caption():
    torch.manual_seed(0)
    V, B = 7, 4
    table = torch.randn(V, V) * 2  # a fixed bigram language model: log p(next | last)

    def step(tokens, state):
        return F.log_softmax(table[tokens] + state[0][0], dim=-1), state

    def score(ids):  # the log-probability of a decoded caption up to and including <end>
        total, last = 0.0, 1
        for i in ids:
            total += float(F.log_softmax(table[last] + bias[b], dim=-1)[i])
            if i == 2:
                break
            last = i
        return total

    bias = torch.randn(B, V)
    state = (bias[None],)
    greedy = greedy_decode(step, state, B, 1, 2, 6)
    beam1 = beam_search(step, state, B, 1, 2, 6, beam_width=1, reorder=lambda s, i: (s[0][:, i],))
    assert torch.equal(greedy, beam1)
    beam3 = beam_search(step, state, B, 1, 2, 6, beam_width=3, reorder=lambda s, i: (s[0][:, i],))
    for b in range(B):
        finished = lambda ids: 2 in ids.tolist()  # noqa: E731
        if finished(greedy[b]) and finished(beam3[b]):
            assert score(beam3[b].tolist()) >= score(greedy[b].tolist()) - 1e-5


def test_the_linear_encoder_is_a_linear_map_of_the_summed_word_vectors():
    enc = SentenceEncoder(3, 5, "linear")
    words = torch.randn(2, 4, 3)
    v = enc(words, torch.tensor([4, 2]))
    torch.testing.assert_close(v[0], enc.rnn.weight @ words[0].sum(0) + enc.rnn.bias)
    torch.testing.assert_close(v[1], enc.rnn.weight @ words[1, :2].sum(0) + enc.rnn.bias)


def test_decode_stops_at_end_and_drops_start_and_padding():
    words = ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "seven"]
    assert decode([1, 4, 5, 6, 2, 5, 0], words) == "a red seven"
    assert decode(torch.tensor([4, 3, 0, 0]), words) == "a <unk>"


def test_arithmetic_finds_the_nearest_to_query_minus_plus_and_skips_the_query():
    pool = torch.eye(4)
    query, minus, plus = pool[:1], torch.tensor([[1.0, 0, 0, 0]]), torch.tensor([[0, 0, 1.0, 0]])
    assert embedding_arithmetic(query, minus, plus, pool, k=1).tolist() == [[2]]
    assert embedding_arithmetic(pool[2:3], minus * 0, plus * 0, pool, k=1, exclude=torch.tensor([2])).item() != 2


def test_decoder_and_cnn_shapes_and_errors():
    dec = CaptionDecoder(5, 6, 7)
    hidden, _ = dec(torch.randn(2, 3, 5), torch.randn(2, 6))
    assert hidden.shape == (2, 3, 7)
    assert SmallCNN(32, [8, 16], 20)(torch.randn(2, 3, 32, 32)).shape == (2, 20)
    with pytest.raises(ConfigError, match="SmallCNN"):
        SmallCNN(8, [4, 4, 4, 4], 10)
    with pytest.raises(ConfigError, match="cell"):
        SentenceEncoder(4, 4, "gru")
