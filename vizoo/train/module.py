"""``ImageClassifier``: a LightningModule that trains any timm model (vizoo's or timm's) by name.

The recipe pieces follow timm's training script: AdamW through ``timm.optim.create_optimizer_v2`` (no weight
decay on norms, biases and the model's ``no_weight_decay()``), linear warmup then cosine decay per step, label
smoothing, timm's Mixup/CutMix, optional EMA of the weights (``timm.utils.ModelEmaV3``), drop path, gradient
checkpointing and channels_last. Top-1/top-5 are micro-averaged (the fraction of images), as papers report.
"""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import timm
import torch
from timm.data import Mixup, resolve_model_data_config
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

import vizoo  # noqa: F401  (registers vizoo's models before any create_model)
from vizoo.utils import unknown_name_error

HUB_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


def check_model_name(name: str) -> None:
    """Fail at once, listing close names, if ``name`` is neither a registered model nor a hub/local name."""
    if name.startswith(HUB_PREFIXES):
        return
    arch = name.split(".", 1)[0]
    if arch not in timm.list_models():
        raise unknown_name_error(
            "model", arch, timm.list_models(), hint="(vizoo's own models are listed by `vizoo models`.)"
        )


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup over ``warmup`` steps, then half-cycle cosine down to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def accuracy_metrics(num_classes: int, prefix: str) -> MetricCollection:
    metrics = {"acc": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
    if num_classes > 5:
        metrics["acc5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics, prefix=prefix)


def _split_aux(out):
    """``(logits, aux_logits)`` from a model that returns a pair in training mode, else ``(out, None)``."""
    return out if isinstance(out, tuple) else (out, None)


class ImageClassifier(L.LightningModule):
    """Image classification with a timm backbone built by name.

    Args:
        model_name: a timm/vizoo model name (``nat_tiny``, ``resnet50``), ``arch.tag``, ``hf-hub:org/repo`` or
            ``local-dir:/path``.
        num_classes: classifier outputs (linked from the data module by the CLI).
        pretrained: load the model's pretrained weights.
        model_kwargs: extra keyword arguments for ``timm.create_model`` (e.g. ``img_size``, ``depths``).
        drop_path_rate: stochastic depth rate, passed to the model.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_epochs: linear warmup length in epochs (may be fractional).
        min_lr: final learning rate of the cosine decay.
        label_smoothing: label smoothing of the cross-entropy (also used by Mixup's soft targets).
        mixup: Mixup alpha (0 disables).
        cutmix: CutMix alpha (0 disables).
        mixup_prob: probability of applying Mixup or CutMix to a batch.
        ema_decay: keep an EMA of the weights with this decay (validated as ``val_ema/*``); None disables.
        grad_checkpointing: trade compute for memory in the backbone.
        channels_last: use the channels_last memory format.
        class_names: names of the classes (linked from the data module; written into predictions).
        aux_loss_weight: weight of an auxiliary classifier's loss, added when the model returns
            ``(logits, aux_logits)`` in training mode (OverLoCK with ``aux_head=True``: 0.4, as officially).
    """

    def __init__(
        self,
        model_name: str = "resnet18",
        num_classes: int = 10,
        pretrained: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        drop_path_rate: float | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_epochs: float = 0.0,
        min_lr: float = 1e-6,
        label_smoothing: float = 0.1,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        mixup_prob: float = 1.0,
        ema_decay: float | None = None,
        grad_checkpointing: bool = False,
        channels_last: bool = False,
        class_names: list[str] | None = None,
        aux_loss_weight: float = 0.4,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_model_name(model_name)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names given for num_classes={num_classes}")
        kwargs = dict(model_kwargs or {})
        if drop_path_rate is not None:
            kwargs["drop_path_rate"] = drop_path_rate
        self.model = timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes, **kwargs)
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.ema = ModelEmaV3(self.model, decay=ema_decay) if ema_decay else None
        self.mixup = None
        if mixup > 0 or cutmix > 0:
            self.mixup = Mixup(
                mixup_alpha=mixup, cutmix_alpha=cutmix, prob=mixup_prob, label_smoothing=label_smoothing,
                num_classes=num_classes,
            )
        self.soft_loss = SoftTargetCrossEntropy()
        self.loss = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.train_metrics = accuracy_metrics(num_classes, "train/")
        self.val_metrics = accuracy_metrics(num_classes, "val/")
        self.val_ema_metrics = accuracy_metrics(num_classes, "val_ema/")
        self.test_metrics = accuracy_metrics(num_classes, "test/")

    @property
    def data_config(self) -> dict[str, Any]:
        """The backbone's data config (input size, mean/std, interpolation, crop) for the data module."""
        return resolve_model_data_config(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.mixup is not None and len(x) % 2 == 0:  # timm's Mixup flips the batch: it needs an even size
            x, soft = self.mixup(x, y)
            logits, aux = _split_aux(self(x))
            loss = self.soft_loss(logits, soft)
            if aux is not None:
                loss = loss + self.hparams.aux_loss_weight * self.soft_loss(aux, soft)
        else:
            logits, aux = _split_aux(self(x))
            loss = self.loss(logits, y)
            if aux is not None:
                loss = loss + self.hparams.aux_loss_weight * self.loss(aux, y)
            self.train_metrics.update(logits, y)
            self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(x))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def _evaluate(self, batch, metrics: MetricCollection, model=None, log_loss: str | None = None):
        x, y = batch
        logits = (model or self.model)(x)
        metrics.update(logits, y)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True)
        if log_loss:
            self.log(log_loss, self.loss(logits, y), on_epoch=True, sync_dist=True, batch_size=len(x))

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, self.val_metrics, log_loss="val/loss")
        if self.ema is not None:
            self._evaluate(batch, self.val_ema_metrics, model=self.ema.module)

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, self.test_metrics)

    def predict_step(self, batch, batch_idx):
        x, index = batch
        probs = self(x).softmax(-1)
        confidence, pred = probs.max(-1)
        return {"index": index, "pred": pred, "confidence": confidence}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the evaluation data config the run used (``vizoo hub export`` writes it as the pretrained cfg)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        config = getattr(datamodule, "data_config", None)
        if config:
            keys = ("input_size", "mean", "std", "interpolation", "crop_pct")
            checkpoint["data_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()
                                         if k in keys}

    def configure_optimizers(self):
        h = self.hparams
        optimizer = create_optimizer_v2(self.model, "adamw", lr=h.lr, weight_decay=h.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        batches = self.trainer.num_training_batches
        steps_per_epoch = math.ceil(batches / self.trainer.accumulate_grad_batches) if math.isfinite(batches) else total
        warmup = int(round(h.warmup_epochs * steps_per_epoch))
        min_ratio = h.min_lr / h.lr if h.lr > 0 else 0.0
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, total, warmup, min_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
