"""What a visual-semantic embedding has learned, live (global rank zero, every N validation epochs):

- ``RetrievalExamples``: a table of fixed validation images, each with its top-5 captions retrieved from all the
  split's captions (a tick marks the image's own) and the caption the decoder generates (``media/vse_retrieval``);
- ``EmbeddingArithmetic``: the slides' Figure 4, image - v(word) + v(word) -> the nearest images
  (``media/vse_arithmetic``: each row the query, the words, and the 5 nearest images, green where they show what
  was asked for, when the datamodule can tell);
- ``EmbeddingMap``: the slides' Figure 5, a 2-D PCA of word and image embeddings in the joint space
  (``media/vse_map``).
"""

import torch

from callbacks.media import EveryNEpochs, figure_to_image, log_image, log_table, pyplot
from datamodules.coco_captions import IMAGENET_MEAN, IMAGENET_STD


def pixels(datamodule, images: torch.Tensor) -> torch.Tensor | None:
    """A batch's images back in [0, 1] for display (None for precomputed features)."""
    if images.ndim != 4:
        return None
    if getattr(datamodule, "normalize", False):
        mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
        images = images * std + mean
    return images.clamp(0, 1).float().cpu()


def caption_embeddings(pl_module, captions: dict, chunk: int = 2000) -> torch.Tensor:
    return torch.cat([pl_module.embed_captions(t.to(pl_module.device), n.to(pl_module.device))
                      for t, n in zip(captions["tokens"].split(chunk), captions["lengths"].split(chunk))])


class RetrievalExamples(EveryNEpochs):
    """``num_images`` fixed validation images with their ``top_k`` retrieved captions and the generated one."""

    def __init__(self, every_n_epochs: int = 1, num_images: int = 8, top_k: int = 5):
        super().__init__(every_n_epochs)
        self.num_images, self.top_k = num_images, top_k

    def draw(self, trainer, pl_module):
        dm = trainer.datamodule
        batch = dm.fixed_batch(self.num_images, device=pl_module.device)
        captions = dm.all_captions("val")
        x = pl_module.embed_images(batch["images"])
        top = (x @ caption_embeddings(pl_module, captions).T).topk(self.top_k, dim=1).indices.cpu()
        generated = pl_module.caption(batch["images"]) if pl_module.decoder is not None else [""] * len(x)
        shown = pixels(dm, batch["images"])
        rows = []
        for b, image_id in enumerate(batch["image_id"].tolist()):
            retrieved = [("✓ " if captions["image_id"][k] == image_id else "  ") + captions["text"][k]
                         for k in top[b].tolist()]
            rows.append({"image": shown[b] if shown is not None else image_id, "image_id": image_id,
                         f"top {self.top_k} captions": "\n".join(retrieved), "generated": generated[b]})
        log_table(trainer, "media/vse_retrieval", rows)


class EmbeddingArithmetic(EveryNEpochs):
    """Figure 4: for each query, image - v(minus) + v(plus) and its ``top_k`` nearest among the first ``pool_size``
    validation images. The queries are the datamodule's (``arithmetic_queries``: MNIST captions swaps a digit's
    colour) or given here as ``[{image_id, minus, plus}, ...]`` (words of the vocabulary)."""

    def __init__(self, every_n_epochs: int = 1, queries: list[dict] | None = None, num_queries: int = 6,
                 pool_size: int = 1000, top_k: int = 5):
        super().__init__(every_n_epochs)
        self.queries, self.num_queries, self.pool_size, self.top_k = queries, num_queries, pool_size, top_k

    def draw(self, trainer, pl_module):
        dm = trainer.datamodule
        queries = self.queries or (dm.arithmetic_queries("val", self.num_queries)
                                   if hasattr(dm, "arithmetic_queries") else [])
        if not queries:
            return  # nothing to ask without queries
        pool = dm.fixed_batch(self.pool_size, device=pl_module.device)
        pool_x = torch.cat([pl_module.embed_images(chunk) for chunk in pool["images"].split(500)])
        row = {int(i): r for r, i in enumerate(pool["image_id"].tolist())}
        queries = [q for q in queries if q["image_id"] in row][:self.num_queries]
        if not queries:
            return
        at = torch.tensor([row[q["image_id"]] for q in queries], device=pl_module.device)
        nearest = pl_module.arithmetic(pool["images"][at], [q["minus"] for q in queries],
                                       [q["plus"] for q in queries], pool_x, self.top_k, exclude=at).cpu()
        shown = pixels(dm, pool["images"])
        if shown is None:
            return
        plt = pyplot()
        fig, axes = plt.subplots(len(queries), self.top_k + 1, figsize=(1.4 * (self.top_k + 1), 1.5 * len(queries)),
                                 dpi=100, squeeze=False)
        for r, q in enumerate(queries):
            axes[r, 0].imshow(shown[at[r].item()].permute(1, 2, 0).numpy())
            axes[r, 0].set_title(f"- {q['minus']} + {q['plus']}", fontsize=8)
            for k, index in enumerate(nearest[r].tolist(), start=1):
                axes[r, k].imshow(shown[index].permute(1, 2, 0).numpy())
                if hasattr(dm, "arithmetic_hit") and "target" in q:
                    hit = dm.arithmetic_hit("val", q, int(pool["image_id"][index]))
                    for side in axes[r, k].spines.values():
                        side.set(color="green" if hit else "red", linewidth=3)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"epoch {trainer.current_epoch}: query image, then its nearest images", fontsize=9)
        fig.tight_layout()
        log_image(trainer, "media/vse_arithmetic", figure_to_image(fig),
                  caption=f"epoch {trainer.current_epoch}: image - v(word) + v(word) -> nearest images")


class EmbeddingMap(EveryNEpochs):
    """Figure 5: the first two principal components of the embeddings of ``words`` (default: the vocabulary's
    first ``num_words`` words, each read as a one-word sentence) and of ``num_images`` validation images."""

    def __init__(self, every_n_epochs: int = 1, words: list[str] | None = None, num_words: int = 60,
                 num_images: int = 40):
        super().__init__(every_n_epochs)
        self.words, self.num_words, self.num_images = words, num_words, num_images

    def draw(self, trainer, pl_module):
        from matplotlib.offsetbox import AnnotationBbox, OffsetImage

        dm = trainer.datamodule
        words = [w for w in (self.words or pl_module.vocabulary[4:4 + self.num_words]) if w in pl_module.vocabulary]
        batch = dm.fixed_batch(self.num_images, device=pl_module.device)
        x = pl_module.embed_images(batch["images"])
        points = torch.cat([pl_module.embed_words(words), x]).float().cpu()
        centred = points - points.mean(0)
        _, _, V = torch.linalg.svd(centred, full_matrices=False)
        xy = (centred @ V[:2].T).numpy()
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(8, 8), dpi=100)
        ax.scatter(xy[:, 0], xy[:, 1], s=0)
        for (px, py), word in zip(xy[:len(words)], words):
            ax.annotate(word, (px, py), fontsize=8, color="tab:blue", ha="center")
        shown = pixels(dm, batch["images"])
        for (px, py), image in zip(xy[len(words):], shown if shown is not None else []):
            ax.add_artist(AnnotationBbox(OffsetImage(image.permute(1, 2, 0).numpy(), zoom=0.4), (px, py),
                                         frameon=False))
        ax.set_title(f"epoch {trainer.current_epoch}: words (blue) and images in the joint space, PCA", fontsize=9)
        log_image(trainer, "media/vse_map", figure_to_image(fig), caption=f"epoch {trainer.current_epoch}")
