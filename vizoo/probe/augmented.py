"""The augmented probing protocol: frozen backbone re-run on freshly augmented images every step (Lightning).

This is the recipe of the MAE linear probe and of the efficient-probing code:
RandomResizedCrop (+ flip) on every step, the frozen backbone in eval mode producing tokens, and only the
heads trained. As in the cached trainer, many heads (head types x learning rates, and layers in layer-wise
mode) share one backbone pass per step; each (layer, head, lr) instance is its own param group of one
optimiser, all on the same warmup + cosine schedule. Every epoch each instance is scored on the validation
split (torchmetrics ``MulticlassAccuracy(average='micro')``, synced across DDP ranks), the best epoch's
weights are kept, the best (lr, epoch) per (layer, head type) is selected on validation and only that
instance is scored on the test split.

Runs under a Lightning ``Trainer`` (progress bar, any accelerator, DDP through ``devices``). Under DDP each
rank trains on its shard of the training split (a ``DistributedSampler`` seeded with ``TrainConfig.seed``,
``batch_size`` per rank, so the global batch is ``batch_size x world size`` and ``scale_lr`` scales by it), and
validation/test use an unrepeated sampler (no padding: every image is scored exactly once, the shards may
differ by one image) whose counts the metrics sum over ranks; the number of images scored is recorded in the
results (``val_count``, ``test_count``) and must equal the split sizes. The schedule's length comes from
``trainer.estimated_stepping_batches`` (steps per rank).
Differs from the official code: selection on a held-out validation split, not on the reported set; the
backbone stays in eval mode (the official script puts the whole model in train mode).
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from torchmetrics.aggregation import SumMetric
from torchmetrics.classification import MulticlassAccuracy

from vizoo.probe.features import extract_tokens
from vizoo.probe.optim import build_optimizer, warmup_cosine
from vizoo.probe.trainer import HeadSpec, TrainConfig, build_instances


class AugmentedProbe(L.LightningModule):
    """A frozen backbone and many probing heads trained together on augmented images.

    Args:
        backbone: the frozen timm model (eval mode, no gradients).
        heads: head types.
        layers: sorted absolute block indices (several = layer-wise mode).
        norm: apply the final norm to the tokens.
        num_classes: C.
        config: optimisation settings (lrs, epochs, optimiser, warmup, ...).
        token_shapes: per layer ``(N, D, P, grid)`` measured on one batch.
    """

    def __init__(
        self,
        backbone: nn.Module,
        heads: Sequence[HeadSpec],
        layers: Sequence[int],
        norm: bool,
        num_classes: int,
        config: TrainConfig,
        token_shapes: dict[int, tuple],
    ):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.layers, self.norm, self.config = list(layers), norm, config
        self.num_classes, self.token_shapes = num_classes, token_shapes
        self.index: list[tuple[int, int, float]] = []  # (layer, head type index, lr) per instance
        modules = []
        for layer in self.layers:
            _, d, p, _ = token_shapes[layer]
            for h_idx, lr, head in build_instances(heads, config.lrs, d, num_classes, p, config.seed):
                modules.append(head)
                self.index.append((layer, h_idx, lr))
        self.heads = nn.ModuleList(modules)
        self.specs = list(heads)
        k = min(5, num_classes)
        self.val_top1 = nn.ModuleList(
            MulticlassAccuracy(num_classes, top_k=1, average="micro") for _ in modules
        )
        self.val_count = SumMetric()  # images scored in the last validation epoch, over all ranks
        self.test_count = SumMetric()
        self.last_val_count = 0
        self.test_scores: list[tuple[float, float]] = []
        self.test_images = 0
        self.history: list[list[float]] = [[] for _ in modules]
        self.best: list[tuple[float, int, dict | None]] = [(-1.0, -1, None)] * len(modules)
        self.test_ids: list[int] = []
        self.test_top1 = nn.ModuleList()
        self.test_topk = nn.ModuleList()
        self.topk = k

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorm/Dropout of the backbone never switch to training
        return self

    def _tokens(self, images: torch.Tensor):
        with torch.no_grad():
            outs = extract_tokens(self.backbone, images, self.layers, self.norm)
        return {layer: out for layer, out in zip(self.layers, outs)}

    def _logits(self, i: int, outs) -> torch.Tensor:
        out = outs[self.index[i][0]]
        prefix = out.prefix.float() if out.prefix.shape[1] else None
        return self.heads[i](out.tokens.float(), prefix=prefix, grid=out.grid).float()

    def training_step(self, batch, batch_idx):
        images, labels = batch
        outs = self._tokens(images)
        losses = [F.cross_entropy(self._logits(i, outs), labels) for i in range(len(self.heads))]
        loss = torch.stack(losses).sum()
        self.log("train/loss_sum", loss, prog_bar=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        outs = self._tokens(images)
        for i in range(len(self.heads)):
            self.val_top1[i].update(self._logits(i, outs), labels)
        self.val_count.update(torch.tensor(float(len(labels)), device=labels.device))

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            for m in self.val_top1:
                m.reset()
            self.val_count.reset()
            return
        self.last_val_count = int(self.val_count.compute())
        self.val_count.reset()
        for i, metric in enumerate(self.val_top1):
            top1 = 100.0 * float(metric.compute())
            metric.reset()
            self.history[i].append(top1)
            if top1 > self.best[i][0]:
                state = {k: v.detach().to("cpu", copy=True) for k, v in self.heads[i].state_dict().items()}
                self.best[i] = (top1, self.current_epoch, state)

    def test_step(self, batch, batch_idx):
        images, labels = batch
        outs = self._tokens(images)
        for j, i in enumerate(self.test_ids):
            logits = self._logits(i, outs)
            self.test_top1[j].update(logits, labels)
            self.test_topk[j].update(logits, labels)
        self.test_count.update(torch.tensor(float(len(labels)), device=labels.device))

    def on_test_epoch_end(self):
        # compute() gathers the counts of every rank (all ranks call it, in the same order)
        self.test_scores = [
            (100.0 * float(a.compute()), 100.0 * float(b.compute()))
            for a, b in zip(self.test_top1, self.test_topk)
        ]
        self.test_images = int(self.test_count.compute())
        self.test_count.reset()

    def configure_optimizers(self):
        global_batch = self.config.batch_size * self.trainer.world_size
        scale = global_batch / 256 if self.config.scale_lr else 1.0
        groups = [
            dict(params=list(h.parameters()), lr=lr * scale) for h, (_, _, lr) in zip(self.heads, self.index)
        ]
        opt = build_optimizer(
            self.config.optimizer, groups, self.config.lrs[0] * scale, self.config.weight_decay
        )
        total = int(self.trainer.estimated_stepping_batches)  # per rank, all epochs
        warmup = int(round(self.config.warmup_epochs * total / self.config.epochs))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, total, warmup))
        return dict(optimizer=opt, lr_scheduler=dict(scheduler=sched, interval="step"))

    def choose(self) -> list[int]:
        """Per (layer, head type): the instance with the best validation top-1 (ties: smaller lr); loads its
        best-epoch weights and prepares test metrics for it."""
        chosen = []
        for layer in self.layers:
            for h_idx in range(len(self.specs)):
                members = [i for i, (lay, h, _) in enumerate(self.index) if lay == layer and h == h_idx]
                best = max(members, key=lambda i: (self.best[i][0], -self.index[i][2]))
                if self.best[best][2] is not None:
                    self.heads[best].load_state_dict(self.best[best][2])
                chosen.append(best)
        self.test_ids = chosen
        self.test_top1 = nn.ModuleList(
            MulticlassAccuracy(self.num_classes, top_k=1, average="micro") for _ in chosen
        ).to(self.device)
        self.test_topk = nn.ModuleList(
            MulticlassAccuracy(self.num_classes, top_k=self.topk, average="micro") for _ in chosen
        ).to(self.device)
        return chosen


def _trainer(job, config: TrainConfig) -> L.Trainer:
    import warnings

    from lightning.pytorch.callbacks import RichProgressBar

    # the frozen backbone is in eval mode on purpose
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")

    device = str(config.device)
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    devices: Any = [int(device.split(":")[1])] if ":" in device else job.devices
    distributed = not isinstance(devices, list) and devices > 1
    return L.Trainer(
        strategy="ddp" if distributed else "auto",
        max_epochs=config.epochs,
        accelerator=accelerator,
        devices=devices,
        logger=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        precision="bf16-mixed" if job.amp and accelerator == "gpu" else "32-true",
        callbacks=[RichProgressBar()] if job.progress else [],
        enable_progress_bar=job.progress,
    )


class _ProbeData(L.LightningDataModule):
    """The loaders, built once the Trainer knows the world size and rank.

    One process: a seeded shuffling loader for training, plain sequential loaders for val/test. Under DDP:
    ``DistributedSampler`` (shuffled, seeded, padded to equal shards so every rank takes the same number of
    steps) for training and ``UnrepeatedDistributedSampler`` (no padding) for val/test, so the synced metrics
    count every image exactly once. Lightning leaves samplers that already are distributed alone.
    """

    def __init__(self, train_set, val_set, test_set, config: TrainConfig, num_workers: int):
        super().__init__()
        self.sets = dict(train=train_set, val=val_set, test=test_set)
        self.config, self.num_workers = config, num_workers

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self):
        data, bs = self.sets["train"], self.config.batch_size
        world, rank = self._world()
        if world > 1:
            sampler = DistributedSampler(data, world, rank, shuffle=True, seed=self.config.seed)
            # a last batch of one image would break the heads' BatchNorm in training mode
            drop_last = len(sampler) > bs and len(sampler) % bs == 1
            return DataLoader(data, bs, sampler=sampler, drop_last=drop_last, num_workers=self.num_workers)
        drop_last = len(data) > bs and len(data) % bs == 1
        return DataLoader(
            data,
            bs,
            shuffle=True,
            drop_last=drop_last,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.config.seed),
        )

    def _eval_loader(self, name: str):
        data = self.sets[name]
        world, rank = self._world()
        sampler = UnrepeatedDistributedSampler(data, world, rank, shuffle=False) if world > 1 else None
        return DataLoader(
            data, self.config.eval_batch_size, shuffle=False, sampler=sampler, num_workers=self.num_workers
        )

    def val_dataloader(self):
        return self._eval_loader("val")

    def test_dataloader(self):
        return self._eval_loader("test")


def run_augmented(job, model: nn.Module, dm, layers: list[int], classes: list[str]):
    """Train and select under the augmented protocol; returns ``(results, split sizes)``."""
    config = job.train
    train_set, val_set = dm.split("train", training=True), dm.split("val")
    test_set = None
    try:
        test_set = dm.split("test")
        test_set = test_set if len(test_set) > 0 else None
    except (ValueError, FileNotFoundError):
        test_set = None
    has_test = test_set is not None
    images, _ = next(iter(DataLoader(val_set, batch_size=2)))
    outs = extract_tokens(model, images, layers, job.norm)
    shapes = {
        lay: (o.tokens.shape[1], o.tokens.shape[2], o.prefix.shape[1], o.grid) for lay, o in zip(layers, outs)
    }
    module = AugmentedProbe(model, job.heads, layers, job.norm, len(classes), config, shapes)
    data = _ProbeData(train_set, val_set, test_set, config, job.num_workers)
    trainer = _trainer(job, config)
    started = time.perf_counter()
    trainer.fit(module, datamodule=data)
    fit_seconds = time.perf_counter() - started
    chosen = module.choose()
    scores = [(None, None)] * len(chosen)
    if has_test:
        trainer.test(module, datamodule=data, verbose=False)
        scores = module.test_scores
    results = []
    for i, (top1, topk) in zip(chosen, scores):
        layer, h_idx, lr = module.index[i]
        spec, head = job.heads[h_idx], module.heads[i]
        n, _, p, _ = shapes[layer]
        members = [j for j, (lay, h, _) in enumerate(module.index) if lay == layer and h == h_idx]
        results.append(
            dict(
                label=spec.label,
                name=spec.name,
                kwargs=dict(spec.kwargs),
                layer=layer,
                lr=lr,
                best_epoch=module.best[i][1],
                val_top1=module.best[i][0],
                val_top1_last_epoch=module.history[i][-1] if module.history[i] else math.nan,
                test_top1=top1,
                test_top5=topk,
                top5_k=min(5, len(classes)),
                params=head.num_params(),
                macs=head.macs(n, p if head.uses_prefix != "never" else 0),
                train_time_s=fit_seconds,
                train_time_shared=True,
                sweep=[
                    dict(
                        lr=module.index[j][2],
                        best_epoch=module.best[j][1],
                        val_top1=module.best[j][0],
                        val_top1_per_epoch=[round(v, 4) for v in module.history[j]],
                    )
                    for j in members
                ],
                seed=None,
                k_shot=None,
                protocol="augmented",
                num_train=len(train_set),
                world_size=trainer.world_size,
                val_count=module.last_val_count,
                test_count=module.test_images if has_test else None,
            )
        )
    sizes = dict(train=len(train_set), val=len(val_set), **({"test": len(test_set)} if has_test else {}))
    return results, sizes
