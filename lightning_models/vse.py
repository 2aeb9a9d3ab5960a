"""Visual-semantic embedding with a caption decoder (Kiros, Salakhutdinov & Zemel 2014; VSE++'s hardest negative).

An image and a sentence meet in one joint space: x = W_I q (q: the image encoder's code), v = the sentence
encoder's state at the last word of W_T-word vectors, both unit-normalised; the pairwise ranking loss pulls
matching pairs together. A decoder (optional) learns to caption from x with teacher forcing, next to the ranking
loss or alone (``ranking_weight: 0``). The networks come from the config; the optimiser from its ``optimizer:``.

Evaluation follows COCO's retrieval protocol on the whole split: every image once, all its captions, R@1/5/10 and
the median rank both ways (under DDP the embeddings of all processes are gathered, and the images the sampler
repeats to even out the shards are dropped, before ranking). Captions are scored with BLEU-1..4 (torchmetrics) and
CIDEr-D (pycocoevalcap), and, where the datamodule knows what each image shows (MNIST captions), their accuracy.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from dl4.predictions import Predictions
from lightning_models.checkpoints import ConfiguredNetworks
from dl4.errors import ConfigError, check_positive
from lightning_models.optim import optimizer_with_schedule, trainable
from lightning_models.nn.vse import (beam_search, decode, embedding_arithmetic, greedy_decode, pairwise_ranking_loss,
                                     recall_at, retrieval_ranks)
from lightning_models.train_logging import log_train_metrics


class VSE(ConfiguredNetworks):
    """Args:
        image_encoder: images (or precomputed features) -> q (B, out_features): ``lightning_models.nn.vse.SmallCNN``,
            ``TorchvisionEncoder`` or ``PrecomputedFeatures``.
        sentence_encoder: word vectors and lengths -> v; its ``input_size`` is the word vectors' and its
            ``out_features`` the joint space's dimension (``SentenceEncoder``, cell ``lstm`` or ``peephole``).
        decoder: a ``CaptionDecoder`` (input_size: the word vectors', image_size: the joint space's), or none.
        margin: alpha of the ranking loss; hardest_negative: VSE++'s max over the contrastive terms, after
            ``sum_warmup_epochs`` epochs of the sum (from a random start the max alone collapses: every embedding
            the same, R@1 at chance after an epoch on MNIST captions).
        ranking_weight, caption_weight: the two losses' weights (0 switches one off).
        vocabulary: the words, ``<pad> <start> <end> <unk>`` first; taken from the datamodule when training
            starts, then kept in the checkpoint (so ``dl4 test`` and generation use the same ids).
        word_vectors: a word2vec/GloVe text file (relative to the data root) whose vectors initialise W_T;
            freeze_word_vectors: keep them fixed (the slides: "precomputed using e.g. word2vec, we don't learn it").
        beam_width: 1 is greedy decoding; max_caption_length: words generated at most.
        optimizer, lr_scheduler: default Adam at 2e-4, no schedule; the optimiser gets every parameter that
            trains, the vocabulary-sized ones built in ``setup`` included (``lightning_models/optim.py``).
        embedding_from: a trained VSE checkpoint whose embedding (image encoder, W_I, W_T, sentence encoder) this
            model takes when training starts; the networks in the config must be the checkpoint's. Saved
            checkpoints record none: the weights are in their state.
        freeze_embedding: keep the embedding as it is (in eval mode), so that the decoder learns on its own on a
            finished joint space (with ``ranking_weight: 0``). On MNIST captions, a fresh decoder trained so for 10
            epochs names everything right for 87.9% of the validation images (beam 3), the decoder trained for 40
            epochs next to the ranking loss for 86.3% (greedy).
    """

    def __init__(self, image_encoder: nn.Module, sentence_encoder: nn.Module, decoder: nn.Module | None = None,
                 margin: float = 0.2, hardest_negative: bool = False, sum_warmup_epochs: int = 0,
                 ranking_weight: float = 1.0,
                 caption_weight: float = 1.0, vocabulary: list[str] | None = None, word_vectors: str | None = None,
                 freeze_word_vectors: bool = True, beam_width: int = 1, max_caption_length: int = 20,
                 embedding_from: str | None = None, freeze_embedding: bool = False,
                 optimizer: OptimizerCallable | None = None, lr_scheduler: LRSchedulerCallable | None = None):
        super().__init__()
        check_positive("model", margin=margin, beam_width=beam_width, max_caption_length=max_caption_length)
        if min(ranking_weight, caption_weight) < 0 or ranking_weight + caption_weight == 0:
            raise ConfigError("model.ranking_weight and model.caption_weight must be >= 0, and one of them > 0")
        if caption_weight > 0 and decoder is None:
            raise ConfigError("model.caption_weight > 0 needs a model.decoder (or set caption_weight: 0)")
        if freeze_embedding and (ranking_weight > 0 or decoder is None):
            raise ConfigError("model.freeze_embedding trains the decoder alone: it needs a model.decoder and "
                              "model.ranking_weight: 0")
        if embedding_from is not None and not Path(embedding_from).is_file():
            raise ConfigError(f"model.embedding_from: {embedding_from} does not exist: give the last.ckpt of a "
                              f"trained VSE (dl4 fit prints where it saved it)")
        self.word_dim, self.joint_dim = sentence_encoder.input_size, sentence_encoder.out_features
        if decoder is not None and (decoder.input_size, decoder.image_size) != (self.word_dim, self.joint_dim):
            raise ConfigError(f"model.decoder needs input_size {self.word_dim} (the word vectors') and image_size "
                              f"{self.joint_dim} (the joint space's), got {decoder.input_size}, {decoder.image_size}")
        self.save_hyperparameters()
        self.optimizer = optimizer or (lambda params: torch.optim.Adam(params, lr=2e-4))
        self.lr_scheduler = lr_scheduler
        self.image_encoder, self.sentence_encoder, self.decoder = image_encoder, sentence_encoder, decoder
        self.W_I = nn.Linear(image_encoder.out_features, self.joint_dim)  # x = W_I q
        self.frozen = freeze_embedding
        if self.frozen:
            for net in (image_encoder, self.W_I, sentence_encoder):
                net.requires_grad_(False)
        self.W_T = self.out = None
        self.vocabulary: list[str] | None = None
        self._eval: dict[str, list] = {}
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)

    # the vocabulary-sized layers
    def set_vocabulary(self, words: list[str]) -> None:
        """Builds W_T (and the decoder's output layer) for ``words``; called once, before training."""
        if self.vocabulary is not None:
            if list(words) != self.vocabulary:
                raise ConfigError("the model's vocabulary differs from the one given: a model keeps the one it "
                                  "was trained with")
            return
        self.vocabulary, self.hparams["vocabulary"] = list(words), list(words)
        self.W_T = nn.Embedding(len(words), self.word_dim, padding_idx=0)
        if self.decoder is not None:
            self.out = nn.Linear(self.decoder.out_features, len(words))
        if self.hparams.word_vectors:
            self._load_word_vectors(self.hparams.word_vectors)
        if self.frozen:
            self.W_T.weight.requires_grad_(False)

    def _load_word_vectors(self, path: str) -> None:
        from dl4.data_root import default_data_dir

        file = Path(path) if Path(path).is_absolute() else Path(default_data_dir()) / path
        if not file.is_file():
            raise ConfigError(f"model.word_vectors: {file} does not exist (a word2vec or GloVe text file: a word "
                              f"and {self.word_dim} numbers a line)")
        index, found = {w: i for i, w in enumerate(self.vocabulary)}, 0
        weight = self.W_T.weight.data
        with open(file, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                fields = line.rstrip().split(" ")
                if len(fields) == 2 and n == 1:
                    continue  # word2vec's header: count and dimension
                if len(fields) != self.word_dim + 1:
                    raise ConfigError(f"model.word_vectors: {file} line {n} has {len(fields) - 1} numbers; the "
                                      f"sentence encoder's input_size is {self.word_dim}")
                if fields[0] in index:
                    weight[index[fields[0]]] = torch.tensor([float(v) for v in fields[1:]])
                    found += 1
        print(f"word vectors: {found} of {len(self.vocabulary)} words found in {file}", flush=True)
        if self.hparams.freeze_word_vectors:
            self.W_T.weight.requires_grad_(False)

    def setup(self, stage: str):
        if stage == "fit" and self.hparams.embedding_from and not self.trainer.ckpt_path:  # (a resumed run has it)
            self._take_embedding(self.hparams.embedding_from)
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "set_vocabulary"):
            return
        if self.vocabulary is not None:
            dm.set_vocabulary(self.vocabulary)  # the checkpoint's ids, not the ones the data would give
        elif dm.vocabulary is not None:
            self.set_vocabulary(dm.vocabulary.words)

    EMBEDDING = ("image_encoder.", "W_I.", "W_T.", "sentence_encoder.")

    def _take_embedding(self, path: str) -> None:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        words = (checkpoint.get("hyper_parameters") or {}).get("vocabulary")
        if not words:
            raise ConfigError(f"model.embedding_from: {path} is not a VSE checkpoint with a vocabulary")
        self.set_vocabulary(words)
        weights = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(self.EMBEDDING)}
        try:
            missing = self.load_state_dict(weights, strict=False).missing_keys
        except RuntimeError as err:
            raise ConfigError(f"model.embedding_from: {path} holds other networks than the config's "
                              f"({str(err).splitlines()[1].strip()}): give the image_encoder and sentence_encoder "
                              f"it was trained with") from None
        lacking = [k for k in missing if k.startswith(self.EMBEDDING)]
        if lacking:
            raise ConfigError(f"model.embedding_from: {path} lacks {lacking[0]}: give the networks it was trained "
                              f"with")
        print(f"embedding from {path}{' (frozen)' if self.frozen else ''}", flush=True)

    def on_train_epoch_start(self):
        if self.frozen:  # a frozen embedding keeps its batch norm statistics and gives the codes evaluation gives
            self.image_encoder.eval()
            self.sentence_encoder.eval()

    def on_save_checkpoint(self, checkpoint):
        # its weights are in this state (the file may be gone where the checkpoint is loaded)
        checkpoint["hyper_parameters"] = {**checkpoint["hyper_parameters"], "embedding_from": None}

    # the two embeddings and the decoder
    def image_codes(self, images: torch.Tensor) -> torch.Tensor:
        return self.W_I(self.image_encoder(images))                         # x = W_I q

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """x on the unit sphere, where s(x, v) = x . v is scored."""
        return F.normalize(self.image_codes(images), dim=-1)

    def embed_captions(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """v for ``<start> words <end>`` token rows: the encoder reads the words and ``<end>``."""
        return F.normalize(self.sentence_encoder(self.W_T(tokens[:, 1:]), lengths - 1), dim=-1)

    def embed_words(self, words: list[str]) -> torch.Tensor:
        """v of each word read as a one-word sentence (for the arithmetic and the word map)."""
        ids = [self.vocabulary.index(w) for w in words]
        tokens = torch.tensor([[1, i, 2] for i in ids], device=self.device)  # <start> word <end>
        return self.embed_captions(tokens, torch.full((len(ids),), 3, device=self.device))

    def caption_loss(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: predict words and ``<end>`` from ``<start>`` and the words before, given the image
        embedding x = W_I q before it is normalised (on the unit sphere its 256 or 1024 entries are ~0.03-0.06
        each, faint beside word vectors of unit scale)."""
        hidden, _ = self.decoder(self.W_T(tokens[:, :-1]), x)
        return F.cross_entropy(self.out(hidden).flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=0)

    @torch.no_grad()
    def generate(self, x: torch.Tensor, beam_width: int | None = None) -> torch.Tensor:
        """Caption ids (B, max_caption_length) for image embeddings x = W_I q (``image_codes``), by beam search
        (width 1: greedy)."""
        h, c = self.decoder.start(x)
        state = (h, c, x[None])  # x rides along with the LSTM state, reordered with it

        def step(tokens, state):
            h, c, x = state
            hidden, (h, c) = self.decoder(self.W_T(tokens)[:, None], x[0], (h, c))
            return F.log_softmax(self.out(hidden[:, 0]), dim=-1), (h, c, x)

        K = beam_width or self.hparams.beam_width
        args = (step, state, len(x), 1, 2, self.hparams.max_caption_length)
        if K == 1:
            return greedy_decode(*args, device=x.device)
        return beam_search(*args, beam_width=K, device=x.device)

    def caption(self, images: torch.Tensor, beam_width: int | None = None) -> list[str]:
        """Generated captions (text) for images."""
        return [decode(row, self.vocabulary) for row in self.generate(self.image_codes(images), beam_width)]

    def arithmetic(self, images: torch.Tensor, minus: list[str], plus: list[str], pool: torch.Tensor, k: int = 5,
                   exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Figure 4: image - v(minus) + v(plus) -> the indices of the ``k`` nearest pool embeddings."""
        return embedding_arithmetic(self.embed_images(images), self.embed_words(minus), self.embed_words(plus),
                                    pool, k, exclude)

    # training
    def training_step(self, batch, batch_idx):
        codes = self.image_codes(batch["images"])
        x = F.normalize(codes, dim=-1)
        losses = {}
        if self.hparams.ranking_weight > 0:
            v = self.embed_captions(batch["tokens"], batch["lengths"])
            hardest = self.hparams.hardest_negative and self.current_epoch >= self.hparams.sum_warmup_epochs
            losses["ranking"] = pairwise_ranking_loss(x[batch["owner"]], v, self.hparams.margin, hardest)
        if self.hparams.caption_weight > 0:
            losses["caption"] = self.caption_loss(codes[batch["owner"]], batch["tokens"])
        loss = sum(getattr(self.hparams, f"{k}_weight") * v for k, v in losses.items())
        log_train_metrics(self, {"train/loss": loss.detach(), **{f"train/{k}": v.detach() for k, v in losses.items()}})
        return loss

    # evaluation over the whole split
    def _evaluate_step(self, batch, stage: str):
        codes = self.image_codes(batch["images"])
        x = F.normalize(codes, dim=-1)
        v = self.embed_captions(batch["tokens"], batch["lengths"])
        store = self._eval.setdefault(stage, [])
        generated = self.generate(codes) if self.decoder is not None else None
        store.append((batch["image_id"], x, batch["caption_id"], batch["image_id"][batch["owner"]], v, generated))
        if self.decoder is not None:
            self.log(f"{stage}/caption_loss", self.caption_loss(codes[batch["owner"]], batch["tokens"]),
                     batch_size=len(batch["tokens"]), sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._evaluate_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate_step(batch, "test")

    def on_validation_epoch_end(self):
        self._evaluate_epoch("val")

    def on_test_epoch_end(self):
        self._evaluate_epoch("test")

    def gathered(self, stage: str) -> dict:
        """The split's embeddings from every process, each image and caption once, in id order."""
        rows = self._eval.pop(stage, [])
        parts = [[torch.cat([r[k] for r in rows]).cpu() if rows and rows[0][k] is not None else None
                  for k in range(6)]]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            everyone = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(everyone, parts[0])
            parts = everyone
        parts = [p for p in parts if p[0] is not None]
        image_id, x, caption_id, caption_image, v, generated = (
            torch.cat([p[k] for p in parts]) if parts[0][k] is not None else None for k in range(6))
        images = _first_of_each(image_id)       # DistributedSampler repeats a few to even out the shards
        captions = _first_of_each(caption_id)
        image_id = image_id[images]
        row_of = {int(i): r for r, i in enumerate(image_id)}
        return {"image_id": image_id, "x": x[images], "v": v[captions], "caption_id": caption_id[captions],
                "caption_image": torch.tensor([row_of[int(i)] for i in caption_image[captions]]),
                "generated": generated[images] if generated is not None else None}

    def _evaluate_epoch(self, stage: str):
        if self.trainer.sanity_checking:
            self._eval.pop(stage, None)
            return
        data = self.gathered(stage)
        ranks = retrieval_ranks(data["x"] @ data["v"].T, data["caption_image"])
        metrics = {}
        for direction, r in zip(("i2t", "t2i"), ranks):
            metrics.update({f"{stage}/{direction}_{k}": value for k, value in recall_at(r).items()})
        metrics[f"{stage}/rsum"] = sum(v for k, v in metrics.items() if k.split("_")[-1] in ("r1", "r5", "r10"))
        if data["generated"] is not None:
            metrics.update(self._caption_metrics(stage, data["image_id"].tolist(), data["generated"]))
        for key, value in metrics.items():  # the same numbers on every process: nothing left to reduce
            self.log(key, float(value), prog_bar=key.endswith(("i2t_r1", "t2i_r1")), sync_dist=False)

    def _caption_metrics(self, stage: str, image_ids: list[int], generated: torch.Tensor) -> dict:
        from pycocoevalcap.cider.cider import Cider
        from torchmetrics.functional.text import bleu_score

        dm = self.trainer.datamodule
        captions = [decode(row, self.vocabulary) for row in generated]
        references = dm.references(stage)  # tokenised as the vocabulary's words were
        refs = [references[i] for i in image_ids]
        out = {f"{stage}/bleu{n}": 100 * float(bleu_score(captions, refs, n_gram=n)) for n in (1, 2, 3, 4)}
        # CIDEr-D on our tokenisation (pycocoevalcap's PTB tokenizer needs Java)
        cider, _ = Cider().compute_score(dict(enumerate(refs)), {k: [c] for k, c in enumerate(captions)})
        out[f"{stage}/cider"] = 100 * float(cider)
        if hasattr(dm, "caption_accuracy"):
            out[f"{stage}/caption_accuracy"] = 100 * dm.caption_accuracy(stage, image_ids, captions)
        return out

    # dl4 predict
    @torch.no_grad()
    def on_predict_start(self):
        """The pools the answers come from (``data.predict_pool``): the folder's images and the distinct training
        captions, embedded once."""
        pool = self.trainer.datamodule.predict_pool(self.device)
        v = torch.cat([self.embed_captions(t.to(self.device), n.to(self.device))
                       for t, n in zip(pool["tokens"].split(1000), pool["lengths"].split(1000))])
        x = None if pool["images"] is None else torch.cat([self.embed_images(b) for b in pool["images"].split(256)])
        self._pool = {"x": x, "images": pool["images"], "v": v, "texts": pool["texts"],
                      "names": self.trainer.datamodule.predict_names}

    def predict_step(self, batch, batch_idx):
        """``dl4 predict``, one input a batch: an image gets its generated caption and its nearest training
        captions; a sentence its nearest images of the folder; a query ``image - word + word`` (Figure 4) too."""
        pool, k = self._pool, self.trainer.datamodule.predict_top_k
        kind, record = batch["kind"], {"kind": batch["kind"]}

        def nearest(scores, names):
            top = scores.topk(min(k, len(names)))
            return [[names[i], round(s, 4)] for s, i in zip(top.values.tolist(), top.indices.tolist())]

        if kind == "image":
            image = pool["images"][batch["image"]][None]
            if self.decoder is not None:
                record["caption"] = self.caption(image)[0]
            record["top_captions"] = nearest(pool["v"] @ pool["x"][batch["image"]], pool["texts"])
            return Predictions([record], pictures={"image": [self.trainer.datamodule.predict_images[batch["image"]]]})
        elif kind == "sentence":
            v = self.embed_captions(batch["tokens"][None], torch.tensor([len(batch["tokens"])], device=self.device))
            record["top_images"] = nearest(pool["x"] @ v[0], pool["names"])
        elif kind == "query" and all(w in self.vocabulary for w in batch["minus"] + batch["plus"]):
            image = pool["images"][batch["image"]][None]
            target = F.normalize(self.embed_images(image) - self.embed_words(batch["minus"]).sum(0) +
                                 self.embed_words(batch["plus"]).sum(0), dim=-1)
            scores = pool["x"] @ target[0]
            scores[batch["image"]] = float("-inf")  # the query image itself is not an answer
            record["top_images"] = nearest(scores, pool["names"])
        return Predictions([record])

    def configure_optimizers(self):  # after setup: the vocabulary-sized W_T and output layer are in it
        return optimizer_with_schedule(trainable(self), self.optimizer, self.lr_scheduler)


def _first_of_each(ids: torch.Tensor) -> torch.Tensor:
    """Indices of the first occurrence of each id, in increasing id order."""
    order = torch.argsort(ids, stable=True)
    keep = torch.ones(len(ids), dtype=torch.bool)
    keep[1:] = ids[order][1:] != ids[order][:-1]
    return order[keep]
