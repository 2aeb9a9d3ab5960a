"""Visual-semantic embeddings (Kiros, Salakhutdinov & Zemel 2014, "Unifying visual-semantic embeddings with
multimodal neural language models"; VSE++, Faghri et al. 2018): the blocks, in pure PyTorch.

- Image encoder: a CNN code q (``SmallCNN``, a torchvision backbone, or precomputed features); the model maps it
  into the joint space, x = W_I q.
- Sentence encoder: word vectors (rows of W_T) read by an LSTM; v = the hidden state at the last word.
  ``PeepholeLSTM`` is the slides' LSTM, equations (1)-(5), with the peephole weights W_ci, W_cf, W_co.
- ``pairwise_ranking_loss``: the slides' sum over contrastive captions and images, or VSE++'s hardest negative.
- ``retrieval_ranks`` / ``recall_at``: COCO's image annotation and image search protocol.
- ``CaptionDecoder`` with ``greedy_decode`` and ``beam_search``: an LSTM language model conditioned on the image
  embedding (Figure 2, right).
- ``embedding_arithmetic``: image - v(word) + v(word) -> nearest images (Figure 4).
"""

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from dl4.errors import ConfigError, check_positive
from dl4.text import decode  # noqa: F401  (caption ids to text, with the decoders here)


# image encoders: images -> q (B, out_features)
class SmallCNN(nn.Module):
    """A CNN trained from scratch: ``len(channels)`` blocks of 3x3 conv, batch norm, ReLU and 2x2 max pooling, a max
    over each of ``grid`` x ``grid`` regions of the last map (so where things are stays in q, coarsely, while a few
    pixels' shift does not change it), then a linear layer with a ReLU."""

    def __init__(self, image_size: int = 64, channels: list[int] = (32, 64, 128), out_features: int = 512,
                 grid: int | None = None):
        super().__init__()
        check_positive("SmallCNN", image_size=image_size, channels=list(channels), out_features=out_features,
                       grid=grid)
        layers, c_in = [], 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        side = image_size // 2 ** len(channels)
        if side < 1:
            raise ConfigError(f"SmallCNN: {len(channels)} poolings leave nothing of a {image_size}-pixel image")
        if grid is not None:
            layers.append(nn.AdaptiveMaxPool2d(grid))
            side = grid
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(c_in * side * side, out_features), nn.ReLU())
        self.out_features = out_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images))


class TorchvisionEncoder(nn.Module):
    """A torchvision classification backbone without its last layer (ResNet: the pooled 2048-d code of
    ResNet-152; VGG: the 4096-d fc7), as Kiros et al. (VGG) and VSE++ (ResNet-152) use.

    Args:
        name: a ``torchvision.models`` builder (``resnet18``, ``resnet152``, ``vgg19``, ...).
        weights: a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V2``; downloaded once into TORCH_HOME), a
            path to a saved ``state_dict`` (machines without internet), or none (random, trained from scratch).
        trainable: fine-tune the backbone; false freezes it (and keeps its batch norm statistics).
    """

    def __init__(self, name: str = "resnet18", weights: str | None = None, trainable: bool = True):
        super().__init__()
        import torchvision

        file = weights is not None and Path(weights).suffix in (".pth", ".pt")
        try:
            self.net = torchvision.models.get_model(name, weights=None if file or weights is None else weights)
        except (ValueError, KeyError) as err:
            raise ConfigError(f"TorchvisionEncoder: {err} (name {name!r}, weights {weights!r})") from None
        if file:
            if not Path(weights).is_file():
                raise ConfigError(f"TorchvisionEncoder weights: {weights} does not exist")
            self.net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        if hasattr(self.net, "fc"):  # ResNets
            self.out_features = self.net.fc.in_features
            self.net.fc = nn.Identity()
        elif hasattr(self.net, "classifier"):  # VGG, AlexNet, ...: drop the last linear layer
            last = [m for m in self.net.classifier if isinstance(m, nn.Linear)][-1]
            self.out_features = last.in_features
            self.net.classifier = nn.Sequential(*list(self.net.classifier)[:-1])
        else:
            raise ConfigError(f"TorchvisionEncoder: {name} has neither .fc nor .classifier to remove")
        self.trainable = trainable
        self.net.requires_grad_(trainable)

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trainable:
            self.net.eval()  # a frozen backbone keeps its batch norm statistics
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class PrecomputedFeatures(nn.Module):
    """q = the batch's precomputed features (``CocoCaptionsDataModule(features=...)``), optionally with dropout."""

    def __init__(self, features: int = 2048, dropout: float = 0.0):
        super().__init__()
        check_positive("PrecomputedFeatures", features=features)
        self.out_features = features
        self.dropout = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        if q.ndim != 2 or q.shape[1] != self.out_features:
            raise ConfigError(f"PrecomputedFeatures expects (B, {self.out_features}) features, got {tuple(q.shape)}: "
                              f"set its features to the .npy rows' width, and data.init_args.features")
        return self.dropout(q)


# sentence encoder: word vectors -> v
class PeepholeLSTM(nn.Module):
    """The slides' LSTM (Graves 2013), with peephole connections from the cell to the gates:

        i_t = sigmoid(W_xi x_t + W_hi h_{t-1} + W_ci c_{t-1} + b_i)        (1)
        f_t = sigmoid(W_xf x_t + W_hf h_{t-1} + W_cf c_{t-1} + b_f)        (2)
        c_t = f_t c_{t-1} + i_t tanh(W_xc x_t + W_hc h_{t-1} + b_c)        (3)
        o_t = sigmoid(W_xo x_t + W_ho h_{t-1} + W_co c_t + b_o)            (4)
        h_t = o_t tanh(c_t)                                                (5)

    The peephole weights W_ci, W_cf, W_co are diagonal (vectors), as in Graves. Written by hand because
    ``nn.LSTM`` has no peepholes; the input products of all steps are one matrix product.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.W_x = nn.Linear(input_size, 4 * hidden_size)  # [W_xi; W_xf; W_xc; W_xo] and the biases
        self.W_h = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        self.w_ci = nn.Parameter(torch.zeros(hidden_size))
        self.w_cf = nn.Parameter(torch.zeros(hidden_size))
        self.w_co = nn.Parameter(torch.zeros(hidden_size))
        with torch.no_grad():
            self.W_x.bias[hidden_size:2 * hidden_size].fill_(1.0)  # forget gates start open

    def forward(self, x: torch.Tensor, state=None):
        """x (B, T, input_size) -> (h_1..h_T (B, T, H), (h_T, c_T))."""
        B, T, _ = x.shape
        h, c = state if state is not None else (x.new_zeros(B, self.hidden_size), x.new_zeros(B, self.hidden_size))
        xs = self.W_x(x).chunk(4, dim=-1)  # all time steps at once
        outputs = []
        for t in range(T):
            hi, hf, hc, ho = self.W_h(h).chunk(4, dim=-1)
            i = torch.sigmoid(xs[0][:, t] + hi + self.w_ci * c)            # (1)
            f = torch.sigmoid(xs[1][:, t] + hf + self.w_cf * c)            # (2)
            c = f * c + i * torch.tanh(xs[2][:, t] + hc)                   # (3)
            o = torch.sigmoid(xs[3][:, t] + ho + self.w_co * c)            # (4)
            h = o * torch.tanh(c)                                          # (5)
            outputs.append(h)
        return torch.stack(outputs, dim=1), (h, c)


class SentenceEncoder(nn.Module):
    """v from a sentence's word vectors (B, T, input_size) and lengths: the LSTM's hidden state at the last token,
    or, with ``cell: linear``, a linear map of the sum of the word vectors (Kiros et al.'s linear encoder, a bag of
    words: the one whose space shows the vector arithmetic "image of a blue car - blue + red", as their abstract
    says; it cannot tell "a red 7 left of a blue 2" from "a blue 7 left of a red 2").

    ``cell: lstm`` is ``nn.LSTM`` over packed sequences (padding is never read); ``cell: peephole`` is
    ``PeepholeLSTM``, whose state at the last token is taken before any padding is read, the same guarantee.
    """

    def __init__(self, input_size: int = 300, hidden_size: int = 1024, cell: str = "lstm"):
        super().__init__()
        check_positive("SentenceEncoder", input_size=input_size, hidden_size=hidden_size)
        if cell not in ("lstm", "peephole", "linear"):
            raise ConfigError(f"SentenceEncoder cell must be lstm, peephole or linear, got {cell!r}")
        self.input_size, self.out_features, self.cell = input_size, hidden_size, cell
        self.rnn = {"lstm": lambda: nn.LSTM(input_size, hidden_size, batch_first=True),
                    "peephole": lambda: PeepholeLSTM(input_size, hidden_size),
                    "linear": lambda: nn.Linear(input_size, hidden_size)}[cell]()

    def forward(self, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.cell == "linear":
            inside = torch.arange(words.shape[1], device=words.device)[None, :] < lengths[:, None]
            return self.rnn((words * inside[..., None]).sum(1))         # v = W sum_t w_t
        if self.cell == "lstm":
            packed = pack_padded_sequence(words, lengths.cpu(), batch_first=True, enforce_sorted=False)
            _, (h, _) = self.rnn(packed)
            return h[-1]
        outputs, _ = self.rnn(words[:, :int(lengths.max())])
        return outputs[torch.arange(len(words), device=words.device), lengths - 1]


# the loss and the retrieval metrics
def pairwise_ranking_loss(x: torch.Tensor, v: torch.Tensor, margin: float = 0.2,
                          hardest: bool = False) -> torch.Tensor:
    """The slides' pairwise ranking loss for matching rows of unit-normalised image and sentence embeddings:

        sum_k max(0, alpha - s(x, v) + s(x, v_k)) + sum_k max(0, alpha - s(v, x) + s(v, x_k)),  s(x, v) = x . v,

    over the batch's contrastive captions v_k of each image and contrastive images x_k of each caption; the mean
    over the batch's pairs. ``hardest`` (VSE++): the max over the contrastive terms instead of the sum."""
    s = x @ v.T                                          # s[i, k] = x_i . v_k
    positive = s.diagonal()
    off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    cost_captions = (margin - positive[:, None] + s).clamp_min(0) * off   # image i against caption k
    cost_images = (margin - positive[None, :] + s).clamp_min(0) * off     # caption k against image i
    if hardest:
        return cost_captions.amax(1).mean() + cost_images.amax(0).mean()
    return cost_captions.sum(1).mean() + cost_images.sum(0).mean()


def retrieval_ranks(similarity: torch.Tensor, caption_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based ranks under the COCO protocol, from similarity (images, captions) and the image of each caption:
    image annotation, the rank of the best-ranked of an image's captions; image search, the rank of a caption's
    image among all images.

    A tie counts against the query: a caption (image) of another image scoring *as high as* the right one ranks
    above it. A model that scores everything alike therefore ranks last, not first (R@K = 0, at most chance), and
    twin images (two images with the same captions) cannot both be found first: with a perfect model, each twin
    of a pair ranks 1 in image search and 5 in image annotation (its twin's five captions tie with its own)."""
    similarity = similarity.nan_to_num(nan=float("-inf"))  # a NaN score is the lowest: it finds nothing
    n_images = similarity.shape[0]
    own = caption_image[None, :] == torch.arange(n_images, device=similarity.device)[:, None]  # (images, captions)
    best_own = similarity.masked_fill(~own, float("-inf")).amax(1, keepdim=True)
    image_to_text = ((similarity >= best_own) & ~own).sum(1)  # other images' captions ranked with or above it
    true = similarity.gather(0, caption_image[None, :])  # (1, captions)
    text_to_image = (similarity >= true).sum(0) - 1  # other images ranked with or above the caption's own
    return image_to_text, text_to_image


def recall_at(ranks: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """R@K in % (the query's answer among the top K) and the median rank (1-based)."""
    out = {f"r{k}": 100.0 * (ranks < k).float().mean().item() for k in ks}
    out["median_rank"] = (ranks.float() + 1).median().item()
    return out


def embedding_arithmetic(query: torch.Tensor, minus: torch.Tensor, plus: torch.Tensor, pool: torch.Tensor,
                         k: int = 5, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Figure 4: the ``k`` nearest rows of ``pool`` (unit-normalised image embeddings) to
    normalise(query - minus + plus), each (Q, D) unit-normalised; ``exclude`` (Q,) is a pool row left out per
    query (the query image itself). Returns (Q, k) indices into the pool."""
    target = F.normalize(query - minus + plus, dim=-1)
    s = target @ pool.T
    if exclude is not None:
        s[torch.arange(len(s)), exclude] = float("-inf")
    return s.topk(k, dim=1).indices


# the caption generator
class CaptionDecoder(nn.Module):
    """An LSTM language model conditioned on the image embedding x: its first state is (tanh(W_h x), 0) and x is
    fed next to the word vector at every step, so the image is never forgotten (Kiros et al.'s decoder also
    conditions every word on the image). With ``gate``, the output h_t is multiplied by sigmoid(W_g x) before the
    vocabulary layer: the image gates the next-word prediction, as in Kiros et al.'s factored multimodal
    log-bilinear model (MLBL-F), where the image modulates the word representations multiplicatively. A sum of the
    word and the image cannot say "the digit that is yellow" as easily as a product: on MNIST captions (the
    generator's first version), after 400 steps of the decoder's loss alone, 18.1% of the digits are predicted
    right with the gate and 15.4% without."""

    def __init__(self, input_size: int = 300, image_size: int = 1024, hidden_size: int = 512, gate: bool = True):
        super().__init__()
        check_positive("CaptionDecoder", input_size=input_size, image_size=image_size, hidden_size=hidden_size)
        self.input_size, self.image_size, self.out_features = input_size, image_size, hidden_size
        self.init_h = nn.Linear(image_size, hidden_size)
        self.lstm = nn.LSTM(input_size + image_size, hidden_size, batch_first=True)
        self.W_g = nn.Linear(image_size, hidden_size) if gate else None

    def start(self, x: torch.Tensor):
        return torch.tanh(self.init_h(x)).unsqueeze(0), x.new_zeros(1, len(x), self.out_features)

    def forward(self, words: torch.Tensor, x: torch.Tensor, state=None):
        """Word vectors (B, T, input_size) and image embeddings (B, image_size) -> outputs (B, T, H) for the
        vocabulary layer, and the LSTM's state."""
        state = self.start(x) if state is None else state
        inputs = torch.cat([words, x[:, None].expand(-1, words.shape[1], -1)], dim=-1)
        h, state = self.lstm(inputs, state)
        if self.W_g is not None:
            h = h * torch.sigmoid(self.W_g(x))[:, None]
        return h, state

    @staticmethod
    def reorder(state, index: torch.Tensor):
        return tuple(s[:, index] for s in state)


Step = Callable[[torch.Tensor, object], tuple[torch.Tensor, object]]  # (tokens (N,), state) -> (log p (N, V), state)


def greedy_decode(step: Step, state, batch_size: int, start: int, end: int, max_length: int,
                  device=None) -> torch.Tensor:
    """The most likely next word at every step; (B, max_length) ids, ``<end>`` then 0 after a caption ends."""
    tokens = torch.full((batch_size,), start, dtype=torch.long, device=device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    out = []
    for _ in range(max_length):
        log_p, state = step(tokens, state)
        tokens = log_p.argmax(-1).masked_fill(done, 0)
        out.append(tokens)
        done |= tokens == end
        if done.all():
            break
    out = torch.stack(out, 1)
    return F.pad(out, (0, max_length - out.shape[1]))


def beam_search(step: Step, state, batch_size: int, start: int, end: int, max_length: int, beam_width: int = 3,
                reorder: Callable = CaptionDecoder.reorder, device=None) -> torch.Tensor:
    """The caption of highest total log-probability among ``beam_width`` kept at every step, for every image at
    once (the batch and its beams are one batch of B K). A finished beam keeps its score. (B, max_length) ids."""
    K = beam_width
    state = reorder(state, torch.arange(batch_size, device=device).repeat_interleave(K))  # (B K) copies
    tokens = torch.full((batch_size * K,), start, dtype=torch.long, device=device)
    score = torch.full((batch_size, K), float("-inf"), device=device)
    score[:, 0] = 0.0  # all beams start as the same empty caption: keep one of them
    done = torch.zeros(batch_size * K, dtype=torch.bool, device=device)
    history = torch.zeros(batch_size * K, 0, dtype=torch.long, device=device)
    for _ in range(max_length):
        log_p, state = step(tokens, state)                     # (B K, V)
        V = log_p.shape[-1]
        finished = torch.full_like(log_p, float("-inf"))
        finished[:, 0] = 0.0                                   # a finished beam only extends with <pad>, for free
        log_p = torch.where(done[:, None], finished, log_p)
        total = (score.view(-1, 1) + log_p).view(batch_size, K * V)
        score, best = total.topk(K, dim=1)                     # (B, K)
        parent = (best // V + torch.arange(batch_size, device=device)[:, None] * K).view(-1)
        tokens = (best % V).view(-1)
        state = reorder(state, parent)
        history = torch.cat([history[parent], tokens[:, None]], dim=1)
        done = done[parent] | (tokens == end)
        if done.all():
            break
    best = score.argmax(1) + torch.arange(batch_size, device=device) * K
    out = history[best]
    return F.pad(out, (0, max_length - out.shape[1]))
