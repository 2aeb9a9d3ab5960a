"""Classifiers with a spatial transformer in front (Jaderberg et al. 2015, Table 1: CNN and ST-CNN).

The transformer and the classifier are networks given in the config (``lightning_models.nn.stn``); without a
transformer the model is the plain baseline. Errors are reported in %, as the paper's table does.
"""

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from dl4.predictions import Predictions
from lightning_models.checkpoints import ConfiguredNetworks
from dl4.errors import check_positive
from lightning_models.optim import optimizer_with_schedule, trainable
from lightning_models.nn.stn import SpatialTransformer, affine_scale_rotation
from lightning_models.train_logging import log_train_metrics


class STNClassifier(ConfiguredNetworks):
    """logits = classifier(V), V = transformer(U) (or U itself without a transformer); cross-entropy.

    Args:
        classifier: images -> class logits, e.g. ``lightning_models.nn.stn.CNN``.
        transformer: a ``SpatialTransformer`` in front of the classifier, or none (the baseline).
        num_classes: classes of the accuracy metrics.
        channels_last: convolution weights and inputs in NHWC order. The same numbers; on a CPU the small
            networks train up to 1.8x faster (``benchmarks/stn.py speed``), and GPUs prefer it under mixed precision.
        optimizer, lr_scheduler: default Adam at 1e-3, no schedule (``lightning_models/optim.py``).
    """

    def __init__(self, classifier: nn.Module, transformer: SpatialTransformer | None = None, num_classes: int = 10,
                 channels_last: bool = True, optimizer: OptimizerCallable | None = None,
                 lr_scheduler: LRSchedulerCallable | None = None):
        super().__init__()
        check_positive("model", num_classes=num_classes)
        self.save_hyperparameters()
        self.optimizer = optimizer or (lambda params: torch.optim.Adam(params, lr=1e-3))
        self.lr_scheduler = lr_scheduler
        self.transformer, self.classifier = transformer, classifier
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)  # moves 4-D weights only; later .to(device) keeps the order
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.val_scale = MeanMetric()  # the affine transformer's mean scale: below 1 when it zooms in

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits and the transformer's theta (None without a transformer)."""
        theta = None
        x = x.contiguous(memory_format=self.memory_format)
        if self.transformer is not None:
            x, theta = self.transformer(x)
        return self.classifier(x), theta

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits, _ = self(x)
        loss = F.cross_entropy(logits, y)
        log_train_metrics(self, {"train/loss": loss.detach()})
        return loss

    def _evaluate(self, batch, accuracy: MulticlassAccuracy, stage: str):
        x, y = batch
        logits, theta = self(x)
        accuracy.update(logits, y)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), batch_size=len(y), sync_dist=True)
        if theta is not None and self.transformer.transform == "affine" and stage == "val":
            self.val_scale.update(affine_scale_rotation(theta)[0])
            self.log("val/st_scale", self.val_scale)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, self.val_accuracy, "val")

    def on_validation_epoch_end(self):
        self.log("val/error", 100 * (1 - self.val_accuracy.compute()), prog_bar=True)
        self.val_accuracy.reset()

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, self.test_accuracy, "test")

    def on_test_epoch_end(self):
        self.log("test/error", 100 * (1 - self.test_accuracy.compute()))
        self.test_accuracy.reset()

    def predict_step(self, batch, batch_idx):
        """``dl4 predict``: per image the class, its probability and all ten, theta, the transformer's output V, and
        a picture of the region it sampled (the input with the grid's outline, then V)."""
        from callbacks.pictures import region_pictures  # (drawing helpers; imported here, the callbacks import models)

        U, labels = batch
        U = U.contiguous(memory_format=self.memory_format)
        V, theta = self.transformer(U) if self.transformer is not None else (U, None)
        probabilities = self.classifier(V).float().softmax(-1)
        p, c = probabilities.max(-1)
        records = [{"class": k, "probability": q, **({"label": y} if y >= 0 else {})}
                   for k, q, y in zip(c.tolist(), p.tolist(), labels.tolist())]
        arrays = {"probabilities": probabilities, "output": V.float()}
        if theta is None:
            return Predictions(records, arrays)
        st = self.transformer
        control = theta.view(len(U), -1, 2) if st.transform == "tps" else None
        pictures = region_pictures(U.float(), V.float(), st.grid(theta, U.shape[1]), control)
        return Predictions(records, {**arrays, "theta": theta.float()},
                           {"region": torch.cat([pictures[0::2], pictures[1::2]], dim=-1)})

    def configure_optimizers(self):
        return optimizer_with_schedule(trainable(self), self.optimizer, self.lr_scheduler)
