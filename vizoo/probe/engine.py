"""The probing engine: every (stream, head type, learning rate) instance trained together from one token source.

DINOv2's linear evaluation (``dinov2/eval/linear.py``) trains a grid of linear heads on one stream of features:
one forward of the backbone, one optimizer with a parameter group per head, one backward over the summed loss.
:class:`HeadBank` does the same for any mix of probing heads, fed by a token source (``vizoo.probe.sources``):
a feature cache (in memory or streamed from disk), or a frozen backbone run every step on augmented images.

* **Instances**: one head per (stream, head type, lr), where a stream is a probed layer or one of DINOv2's
  concatenated multi-block inputs. All instances of one head type start from the same initial weights
  (seeded per head type), whatever their stream's width allows.
* **Optimisation**: one timm optimizer (``timm.optim.create_optimizer_v2``) whose parameter groups carry each
  instance's lr; one warmup + cosine schedule per step (``vizoo.train.module.warmup_cosine``, the one
  training uses); one backward over the sum of the instances' cross-entropies (instances share no parameters,
  so each gets exactly its own gradient). No step reads a value back from the device.
* **Selection** (one rule for lr and epoch): after every epoch each instance is scored on the validation
  split (a split held out from training, never the test split); an instance keeps the weights of its best
  epoch, and per (stream, head type) the instance with the best validation top-1 is chosen; ties go to the
  lower validation loss, then to the smaller lr (and, between epochs, to the earlier one). Only the chosen
  instances are scored on the test split, once.
* **Metrics**: torchmetrics ``MulticlassAccuracy(average='micro')`` for top-1 and top-k (k = min(5, C)) and
  ``MeanMetric`` for the loss, synced over DDP ranks.

Runs under a Lightning ``Trainer`` (progress bar, any accelerator, DDP through ``devices``, bf16 autocast with
``amp``). The cached source feeds the heads the fp16 tokens the cache stores; the backbone source rounds its
tokens to fp16 as well, so that with augmentation off both sources give the same results.

Differs from the official efficient-probing and MAE code: selection on a held-out validation split, not on
the reported set; the backbone stays in eval mode (the official scripts put the whole model in train mode).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

OPTIMIZERS = ("adamw", "lars", "sgd")


@dataclass
class HeadSpec:
    """One head type: a registry name (``vizoo.heads.list_heads()``), its options, and the label shown in tables."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        from vizoo.heads import get_head_class

        get_head_class(self.name)  # an unknown name fails here, listing close matches
        if not self.label:
            opts = ",".join(f"{k}={v}" for k, v in sorted(self.kwargs.items()))
            self.label = f"{self.name}({opts})" if opts else self.name

    @classmethod
    def parse(cls, item: "HeadSpec | str | dict") -> "HeadSpec":
        """A head from ``"ep"``, ``"ep:num_queries=8,d_out=2"`` (values read as YAML), a mapping with ``name``
        (and ``kwargs``, ``label``), or a HeadSpec."""
        if isinstance(item, HeadSpec):
            return item
        if isinstance(item, dict) and "name" in item:
            return cls(item["name"], dict(item.get("kwargs") or {}), item.get("label", ""))
        if not isinstance(item, str):
            raise ValueError(f"a head must be a name, 'name:key=value,...' or a mapping; got {item!r}")
        import yaml

        name, _, opts = item.partition(":")
        kwargs = {}
        for pair in filter(None, opts.split(",")):
            key, eq, value = pair.partition("=")
            if not eq:
                raise ValueError(f"head option {pair!r} in {item!r} must look like key=value")
            kwargs[key.strip()] = yaml.safe_load(value)
        return cls(name.strip(), kwargs)

    @classmethod
    def parse_all(cls, items: "Sequence[HeadSpec | str | dict]") -> "list[HeadSpec]":
        """:meth:`parse` for each item; ``"all"`` stands for every registered head with default options."""
        from vizoo.heads import list_heads

        specs = []
        for item in items:
            specs += [cls(n) for n in list_heads()] if item == "all" else [cls.parse(item)]
        return specs


@dataclass
class TrainConfig:
    """Optimisation settings shared by every head.

    Args:
        epochs: passes over the training split.
        batch_size: training batch size (per process under DDP).
        lrs: learning rates to sweep (each head type is trained once per lr).
        optimizer: ``adamw`` (betas 0.9/0.999), ``lars`` (momentum 0.9, trust coefficient 0.001, as in the MAE
            linear probe: weight decay and the trust ratio only for tensors of more than one dimension) or
            ``sgd`` (momentum 0.9, no Nesterov, as DINOv2's linear evaluation); all from ``timm.optim``.
        weight_decay: weight decay (0 in the MAE/EP recipes).
        warmup_epochs: linear warmup length in epochs (may be fractional), then half-cycle cosine to 0.
        scale_lr: treat ``lrs`` as base lrs and multiply them by ``global batch / 256`` (MAE convention).
        seed: seeds the heads' initialisation (identical across lrs of one head type) and the sample order.
        device: where the heads train (``cpu``, ``cuda``, ``cuda:N``; None: ``cuda`` when a GPU is available).
        eval_batch_size: batch size for validation/test scoring.
        cpu_threads: intra-op threads while training on the CPU (None: leave torch's setting). The default 1
            is deliberate: head steps are tiny, and on 2 cores a second thread made every op ~10-70x slower
            (thread hand-off dominates; measured on the project's 2-core machine under load).
    """

    epochs: int = 30
    batch_size: int = 128
    lrs: Sequence[float] | float = (1e-3,)
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0
    scale_lr: bool = False
    seed: int = 0
    device: str | None = None
    eval_batch_size: int = 1024
    cpu_threads: int | None = 1

    def __post_init__(self) -> None:
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.lrs = [float(lr) for lr in (self.lrs if isinstance(self.lrs, Sequence) else [self.lrs])]

    def check(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.lrs or any(not (lr >= 0 and math.isfinite(lr)) for lr in self.lrs):
            raise ValueError(f"lrs must be a non-empty list of finite numbers >= 0, got {list(self.lrs)}")
        for name in ("warmup_epochs", "weight_decay"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.optimizer not in OPTIMIZERS:
            from vizoo.utils import unknown_name_error

            raise unknown_name_error("optimizer", self.optimizer, OPTIMIZERS)


@dataclass
class Stream:
    """One token stream the heads read: a probed layer, or one of DINOv2's concatenated inputs.

    Attributes:
        key: the stream's name in batches (``"11"`` for layer 11, ``"cls4+avg"`` for an input).
        layer: the block it comes from (the last block for a concatenated input).
        num_tokens, dim, num_prefix: token shapes ``[N, D]`` and ``P``.
        grid: the token grid ``(H, W)`` or None.
        input: the concatenated input's label, None for a layer.
    """

    key: str
    layer: int
    num_tokens: int
    dim: int
    num_prefix: int
    grid: tuple[int, int] | None
    input: str | None = None


@dataclass
class HeadResult:
    """The chosen instance of one head type on one stream, and the whole lr sweep behind the choice."""

    label: str
    name: str
    kwargs: dict[str, Any]
    layer: int
    input: str | None
    in_dim: int
    lr: float
    best_epoch: int
    val_top1: float
    val_loss: float
    val_top1_last_epoch: float
    test_top1: float | None
    test_top5: float | None
    top5_k: int
    params: int
    macs: int
    train_time_s: float
    train_time_shared: bool
    val_count: int
    test_count: int | None
    world_size: int
    sweep: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_optimizer(name: str, groups: list[dict[str, Any]], weight_decay: float) -> torch.optim.Optimizer:
    """A timm optimizer over ``groups`` (each with its own ``params`` and ``lr``); see :class:`TrainConfig`.

    For ``lars`` each group is split in two: tensors of more than one dimension get weight decay and the trust
    ratio (``always_adapt``), vectors (biases) get neither, as the MAE linear probe's LARS does.
    """
    from timm.optim import create_optimizer_v2

    if name == "lars":
        split = []
        for g in groups:
            matrices = [p for p in g["params"] if p.ndim > 1]
            vectors = [p for p in g["params"] if p.ndim <= 1]
            split.append(dict(g, params=matrices, weight_decay=weight_decay, always_adapt=True))
            if vectors:
                split.append(dict(g, params=vectors, weight_decay=0.0, always_adapt=False))
        groups = split
    opt = {"adamw": "adamw", "lars": "lars", "sgd": "momentum"}[name]
    extra = {} if name == "adamw" else dict(momentum=0.9)
    return create_optimizer_v2(groups, opt=opt, lr=groups[0]["lr"], weight_decay=weight_decay, **extra)


def build_instances(
    heads: Sequence[HeadSpec], lrs: Sequence[float], streams: Sequence[Stream], num_classes: int, seed: int
) -> tuple[list[tuple[str, int, float]], list[nn.Module]]:
    """One head per (stream, head type, lr) as ``(index, modules)``, ``index[i] = (stream key, head type, lr)``.

    Raises:
        ValueError: a head needs prefix tokens (a class token) and the stream has none.
    """
    from vizoo.heads import create_head

    index, modules = [], []
    for stream in streams:
        for h_idx, spec in enumerate(heads):
            for lr in lrs:
                torch.manual_seed(seed + h_idx)
                head = create_head(spec.name, stream.dim, num_classes, **spec.kwargs)
                if head.uses_prefix == "required" and stream.num_prefix == 0:
                    raise ValueError(
                        f"head {spec.label!r} needs prefix tokens (a class token), but this backbone returns "
                        f"none (only patch tokens). Pick an option that does not need them (e.g. linear "
                        f"pool='avg' or 'auto', ep use_prefix=false) or a backbone with a class token."
                    )
                index.append((stream.key, h_idx, float(lr)))
                modules.append(head)
    return index, modules


class HeadBank(L.LightningModule):
    """Many probing heads trained together on one token source (see the module docstring).

    Args:
        heads: head types.
        streams: the token streams (layers or concatenated inputs) the heads are trained on.
        num_classes: C.
        config: optimisation settings.
        backbone: a frozen model run every step on image batches (the backbone source), or None when batches
            already hold tokens (the cached source).
        norm: apply the final norm to the backbone's tokens (backbone source only).
    """

    def __init__(
        self,
        heads: Sequence[HeadSpec],
        streams: Sequence[Stream],
        num_classes: int,
        config: TrainConfig,
        backbone: nn.Module | None = None,
        norm: bool = False,
    ):
        super().__init__()
        self.specs, self.streams = list(heads), {s.key: s for s in streams}
        self.num_classes, self.config, self.norm = num_classes, config, norm
        self.backbone = backbone.eval().requires_grad_(False) if backbone is not None else None
        self.index, modules = build_instances(heads, config.lrs, streams, num_classes, config.seed)
        self.heads = nn.ModuleList(modules)
        self.topk = min(5, num_classes)
        self.val_top1 = nn.ModuleList(MulticlassAccuracy(num_classes, top_k=1, average="micro") for _ in modules)
        self.val_loss = nn.ModuleList(MeanMetric() for _ in modules)
        self.val_count, self.test_count = SumMetric(), SumMetric()
        self.train_loss = MeanMetric()
        self.history: list[list[tuple[float, float]]] = [[] for _ in modules]  # (top1, loss) per epoch
        self.best: list[tuple[float, float, int, dict | None]] = [(-1.0, math.inf, -1, None)] * len(modules)
        self.last_val_count = 0
        self.chosen: list[int] = []
        self.test_scores: list[tuple[float, float]] = []
        self.test_images = 0
        self.test_top1 = nn.ModuleList()
        self.test_topk = nn.ModuleList()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()  # frozen: its BatchNorm/Dropout never switch to training
        return self

    # ---- tokens and logits -----------------------------------------------------------------------------
    def tokens(self, batch) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor | None]], torch.Tensor]:
        """``({stream key: (tokens fp32, prefix fp32 or None)}, labels)`` of one batch of either source."""
        if self.backbone is None:
            tokens, prefix, labels = batch
        else:
            from vizoo.probe.features import extract_tokens

            images, labels = batch
            layers = [s.layer for s in self.streams.values()]
            with torch.no_grad():
                outs = extract_tokens(self.backbone, images, layers, self.norm)
            # the cache's precision, so that both sources feed the heads the same numbers
            tokens = {k: o.tokens.half() for k, o in zip(self.streams, outs)}
            prefix = {k: o.prefix.half() for k, o in zip(self.streams, outs)}
        outs = {}
        for key in self.streams:
            p = prefix[key]
            outs[key] = (tokens[key].float(), p.float() if p.shape[1] else None)
        return outs, labels

    def logits(self, i: int, outs) -> torch.Tensor:
        key = self.index[i][0]
        tokens, prefix = outs[key]
        return self.heads[i](tokens, prefix=prefix, grid=self.streams[key].grid).float()

    # ---- training ----------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        outs, labels = self.tokens(batch)
        loss = sum(F.cross_entropy(self.logits(i, outs), labels) for i in range(len(self.heads)))
        self.train_loss.update(loss.detach() / len(self.heads))
        return loss

    def on_train_epoch_end(self):
        self.log("train/loss", self.train_loss.compute(), prog_bar=True, sync_dist=False)
        self.train_loss.reset()

    def configure_optimizers(self):
        config = self.config
        scale = config.batch_size * self.trainer.world_size / 256 if config.scale_lr else 1.0
        groups = [dict(params=list(h.parameters()), lr=lr * scale) for h, (_, _, lr) in zip(self.heads, self.index)]
        opt = build_optimizer(config.optimizer, groups, config.weight_decay)
        from vizoo.train.module import warmup_cosine

        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(round(config.warmup_epochs * total / config.epochs))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, total, warmup, 0.0))
        return dict(optimizer=opt, lr_scheduler=dict(scheduler=sched, interval="step"))

    # ---- validation and selection ------------------------------------------------------------------------
    def validation_step(self, batch, batch_idx):
        outs, labels = self.tokens(batch)
        for i in range(len(self.heads)):
            logits = self.logits(i, outs)
            self.val_top1[i].update(logits, labels)
            self.val_loss[i].update(F.cross_entropy(logits, labels, reduction="none"))
        self.val_count.update(torch.tensor(float(len(labels)), device=labels.device))

    def on_validation_epoch_end(self):
        # compute() syncs over DDP ranks: every rank calls it, in the same order
        self.last_val_count = int(self.val_count.compute())
        self.val_count.reset()
        for i in range(len(self.heads)):
            top1 = 100.0 * float(self.val_top1[i].compute())
            loss = float(self.val_loss[i].compute())
            self.val_top1[i].reset()
            self.val_loss[i].reset()
            self.history[i].append((top1, loss))
            if (top1, -loss) > (self.best[i][0], -self.best[i][1]):
                state = {k: v.detach().to("cpu", copy=True) for k, v in self.heads[i].state_dict().items()}
                self.best[i] = (top1, loss, self.current_epoch, state)

    def choose(self) -> list[int]:
        """Per (stream, head type) the instance the selection rule picks; loads its best epoch's weights and
        prepares the test metrics for the chosen instances."""
        chosen = []
        for key in self.streams:
            for h_idx in range(len(self.specs)):
                members = [i for i, (k, h, _) in enumerate(self.index) if k == key and h == h_idx]
                best = max(members, key=lambda i: (self.best[i][0], -self.best[i][1], -self.index[i][2]))
                if self.best[best][3] is not None:
                    self.heads[best].load_state_dict(self.best[best][3])
                chosen.append(best)
        self.chosen = chosen
        make = lambda k: nn.ModuleList(  # noqa: E731
            MulticlassAccuracy(self.num_classes, top_k=k, average="micro") for _ in chosen
        ).to(self.device)
        self.test_top1, self.test_topk = make(1), make(self.topk)
        return chosen

    def test_step(self, batch, batch_idx):
        outs, labels = self.tokens(batch)
        for j, i in enumerate(self.chosen):
            logits = self.logits(i, outs)
            self.test_top1[j].update(logits, labels)
            self.test_topk[j].update(logits, labels)
        self.test_count.update(torch.tensor(float(len(labels)), device=labels.device))

    def on_test_epoch_end(self):
        self.test_scores = [
            (100.0 * float(a.compute()), 100.0 * float(b.compute())) for a, b in zip(self.test_top1, self.test_topk)
        ]
        self.test_images = int(self.test_count.compute())
        self.test_count.reset()


class ProbeData(L.LightningDataModule):
    """The loaders of one probing run, built once the Trainer knows the world size and rank.

    Args:
        make_loader: ``make_loader(split, training, world, rank)`` returns the batches of ``split`` (see
            ``vizoo.probe.sources``).
        has_test: whether a test split exists.
    """

    def __init__(self, make_loader: Callable[[str, bool, int, int], Any], has_test: bool):
        super().__init__()
        self.make_loader, self.has_test = make_loader, has_test

    def _loader(self, split: str, training: bool):
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return self.make_loader(split, training, world, rank)

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)


def make_trainer(config: TrainConfig, devices: int = 1, amp: bool = False, progress: bool = True,
                 callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    """The Lightning Trainer of a probing run: no logger or checkpoints, bf16 autocast with ``amp`` on CUDA,
    DDP when ``devices > 1`` (GPUs, or CPU processes with ``device='cpu'``)."""
    import logging
    import warnings

    # the frozen backbone is in eval mode on purpose; the loaders are built per rank on purpose
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # Lightning 2.6 against newer torch: a deprecation inside Lightning, nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    device = str(config.device)
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    chosen: Any = [int(device.split(":")[1])] if ":" in device else devices
    distributed = not isinstance(chosen, list) and chosen > 1
    return L.Trainer(
        strategy="ddp" if distributed else "auto",
        max_epochs=config.epochs,
        accelerator=accelerator,
        devices=chosen,
        logger=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        use_distributed_sampler=False,
        precision="bf16-mixed" if amp and accelerator == "gpu" else "32-true",
        enable_progress_bar=progress,
        callbacks=list(callbacks),
    )


def fit_heads(
    bank: HeadBank,
    data: ProbeData,
    devices: int = 1,
    amp: bool = False,
    progress: bool = True,
    callbacks: Sequence[L.Callback] = (),
) -> list[HeadResult]:
    """Train every instance of ``bank``, select on validation, score the chosen ones on test.

    Returns:
        One :class:`HeadResult` per (stream, head type), streams in order, head types in order.
    """
    config = bank.config
    trainer = make_trainer(config, devices, amp, progress, callbacks)
    threads = torch.get_num_threads()
    if config.cpu_threads and not str(config.device).startswith("cuda"):
        torch.set_num_threads(config.cpu_threads)
    try:
        started = time.perf_counter()
        trainer.fit(bank, datamodule=data)
        seconds = time.perf_counter() - started
        chosen = bank.choose()
        scores = [(None, None)] * len(chosen)
        if data.has_test:
            trainer.test(bank, datamodule=data, verbose=False)
            scores = bank.test_scores
    finally:
        torch.set_num_threads(threads)
    results = []
    for i, (top1, topk) in zip(chosen, scores):
        key, h_idx, lr = bank.index[i]
        spec, head, stream = bank.specs[h_idx], bank.heads[i], bank.streams[key]
        members = [j for j, (k, h, _) in enumerate(bank.index) if k == key and h == h_idx]
        results.append(
            HeadResult(
                label=spec.label,
                name=spec.name,
                kwargs=dict(spec.kwargs),
                layer=stream.layer,
                input=stream.input,
                in_dim=stream.dim,
                lr=lr,
                best_epoch=bank.best[i][2],
                val_top1=bank.best[i][0],
                val_loss=bank.best[i][1],
                val_top1_last_epoch=bank.history[i][-1][0] if bank.history[i] else math.nan,
                test_top1=top1,
                test_top5=topk,
                top5_k=bank.topk,
                params=head.num_params(),
                macs=head.macs(stream.num_tokens, stream.num_prefix if head.uses_prefix != "never" else 0),
                train_time_s=seconds,
                train_time_shared=True,
                val_count=bank.last_val_count,
                test_count=bank.test_images if data.has_test else None,
                world_size=trainer.world_size,
                sweep=[
                    dict(
                        lr=bank.index[j][2],
                        best_epoch=bank.best[j][2],
                        val_top1=bank.best[j][0],
                        val_loss=bank.best[j][1],
                        val_top1_per_epoch=[round(t, 4) for t, _ in bank.history[j]],
                    )
                    for j in members
                ],
            )
        )
    return results
