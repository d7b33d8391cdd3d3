"""The cached multi-head probe trainer: many heads x learning rates trained on one pass over cached features.

DINOv2's linear evaluation (``dinov2/eval/linear.py``) trains a grid of linear heads (13 learning rates x
token choices) on one stream of features and keeps the best on validation. vizoo does the same for any mix of
probing heads: every step reads one batch of cached tokens, and every (head type, lr) instance computes its
loss on it and takes its own optimiser step. After each epoch every instance is scored on the validation split
(a split held out from training, never the test split); per head type the (lr, epoch) with the best
validation top-1 is chosen (ties: lower validation loss), its weights at that epoch are restored, and only
then is it scored once on the test split.

Why a plain loop and not Lightning here: features sit in memory and one epoch of the embedded data is a
few milliseconds of head compute, so per-step framework overhead (hooks, logging, loop objects) would
dominate, and the per-instance bookkeeping (best epoch per instance, per-instance optimiser and timing) is
simpler written out than spread over callbacks. The augmented protocol, which runs the backbone every step
and needs DDP, is a LightningModule (``vizoo.probe.augmented``). A tqdm bar shows progress.

Differs from the efficient-probing code: it selects the best epoch on the reported set (ImageNet val);
vizoo selects on a separate validation split and reports test accuracy of the selected head.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from vizoo.probe.cache import CachedSplit
from vizoo.probe.multiblock import make_head
from vizoo.probe.optim import build_optimizer, warmup_cosine


@dataclass
class HeadSpec:
    """One head type: a registry name, its options, and the label shown in tables."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            opts = ",".join(f"{k}={v}" for k, v in sorted(self.kwargs.items()))
            self.label = f"{self.name}({opts})" if opts else self.name


@dataclass
class TrainConfig:
    """Optimisation settings shared by every head.

    Args:
        epochs: passes over the training features.
        batch_size: training batch size.
        lrs: learning rates to sweep (each head type is trained once per lr).
        optimizer: ``adamw``, ``lars`` or ``sgd``.
        weight_decay: weight decay (0 in the MAE/EP recipes).
        warmup_epochs: linear warmup length (may be fractional), then half-cycle cosine to 0.
        scale_lr: treat ``lrs`` as base lrs and multiply by ``batch_size / 256`` (MAE convention).
        seed: seeds the heads' initialisation (identical across lrs of one head type) and the shuffling.
        device: where the heads train.
        eval_batch_size: batch size for validation/test scoring.
        time_heads: measure each instance's own step time (synchronises on CUDA).
        cpu_threads: intra-op threads while training on the CPU (None: leave torch's setting). The default 1
            is deliberate: head steps are tiny, and on 2 cores a second thread made every op ~10-70x slower
            (thread hand-off dominates; measured on the project's 2-core machine under load).
    """

    epochs: int = 30
    batch_size: int = 128
    lrs: Sequence[float] = (1e-3,)
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0
    scale_lr: bool = False
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int = 1024
    time_heads: bool = True
    cpu_threads: int | None = 1

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError(
                f"epochs, batch_size and eval_batch_size must be >= 1; got {self.epochs}, "
                f"{self.batch_size}, {self.eval_batch_size}"
            )
        if not self.lrs or any(not (lr >= 0 and math.isfinite(lr)) for lr in self.lrs):
            raise ValueError(f"lrs must be a non-empty list of finite numbers >= 0, got {list(self.lrs)}")
        for name in ("warmup_epochs", "weight_decay"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")


@dataclass
class HeadResult:
    """The selected instance of one head type (and the whole lr sweep behind the choice)."""

    label: str
    name: str
    kwargs: dict[str, Any]
    layer: int
    lr: float
    best_epoch: int
    val_top1: float
    val_top1_last_epoch: float
    test_top1: float | None
    test_top5: float | None
    top5_k: int
    params: int
    macs: int
    train_time_s: float
    sweep: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[int, int]:
    top = logits.topk(k, dim=1).indices
    hit = top == labels[:, None]
    return int(hit[:, 0].sum()), int(hit.any(dim=1).sum())


def _check_inputs(train: CachedSplit, val: CachedSplit, layer: int, num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"probing needs at least 2 classes, the dataset has {num_classes}")
    for name, split in (("train", train), ("val", val)):
        if len(split) == 0:
            raise ValueError(f"the {name} split is empty")
        if layer not in split.tokens:
            raise ValueError(f"layer {layer} is not in the {name} features (cached layers: {split.layers})")
        if int(split.labels.min()) < 0 or int(split.labels.max()) >= num_classes:
            raise ValueError(f"{name} labels must lie in [0, {num_classes - 1}]")
    present = torch.unique(train.labels).numel()
    if present < 2:
        raise ValueError(f"the training split holds only {present} class; probing needs at least 2")


def build_instances(
    heads: Sequence[HeadSpec], lrs: Sequence[float], dim: int, num_classes: int, num_prefix: int, seed: int
) -> list[tuple[int, float, torch.nn.Module]]:
    """One head per (head spec, learning rate), seeded per spec, as ``(spec index, lr, head)``; shared by the
    cached and the augmented protocol. A head that needs prefix tokens on a backbone without them is an error."""
    instances = []
    for h_idx, spec in enumerate(heads):
        for lr in lrs:
            torch.manual_seed(seed + h_idx)
            head = make_head(spec.name, dim, num_classes, **spec.kwargs)
            if head.uses_prefix == "required" and num_prefix == 0:
                raise ValueError(
                    f"head {spec.label!r} needs prefix tokens (a class token), but this backbone returns "
                    f"none (only patch tokens). Pick an option that does not need them (e.g. linear "
                    f"pool='avg' or 'auto', ep use_prefix=false) or a backbone with a class token."
                )
            instances.append((h_idx, float(lr), head))
    return instances


@torch.no_grad()
def evaluate(
    heads: Sequence[torch.nn.Module],
    split: CachedSplit,
    layer: int,
    device: str,
    batch_size: int,
    num_classes: int,
) -> list[dict[str, float]]:
    """Top-1 and top-k (k = min(5, C)) accuracy in % (micro average, exact counts), mean loss, per head."""
    k = min(5, num_classes)
    for h in heads:
        h.eval()
    grid = split.grids[layer]
    n = len(split)
    stats = [[0, 0, 0.0] for _ in heads]
    for start in range(0, n, batch_size):
        tokens = split.tokens[layer][start : start + batch_size].to(device, torch.float32)
        prefix = split.prefix[layer][start : start + batch_size].to(device, torch.float32)
        labels = split.labels[start : start + batch_size].to(device)
        prefix_arg = prefix if prefix.shape[1] else None
        for s, h in zip(stats, heads):
            logits = h(tokens, prefix=prefix_arg, grid=grid).float()
            c1, ck = _topk_correct(logits, labels, k)
            s[0] += c1
            s[1] += ck
            s[2] += float(F.cross_entropy(logits, labels, reduction="sum"))
    return [dict(top1=100.0 * a / n, topk=100.0 * b / n, loss=c / n) for a, b, c in stats]


def train_probes(
    train: CachedSplit,
    val: CachedSplit,
    test: CachedSplit | None,
    layer: int,
    heads: Sequence[HeadSpec],
    num_classes: int,
    config: TrainConfig,
    progress: bool = True,
) -> list[HeadResult]:
    """Train every head type at every lr on cached tokens of ``layer``; select on ``val``; score on ``test``.

    Args:
        train: training features (possibly a low-shot subset).
        val: validation features (selection only).
        test: test features, scored once with the selected instance per head type (None to skip).
        layer: the block index to probe (a key of ``train.tokens``).
        heads: the head types.
        num_classes: C.
        config: optimisation settings.
        progress: show a progress bar.

    Returns:
        One :class:`HeadResult` per head type, in the order of ``heads``.
    """
    config.check()
    if not heads:
        raise ValueError("no heads to train; give at least one head name")
    _check_inputs(train, val, layer, num_classes)
    threads = torch.get_num_threads()
    if config.cpu_threads and not str(config.device).startswith("cuda"):
        torch.set_num_threads(config.cpu_threads)
    try:
        return _train(train, val, test, layer, heads, num_classes, config, progress)
    finally:
        torch.set_num_threads(threads)


def _train(train, val, test, layer, heads, num_classes, config, progress) -> list[HeadResult]:
    device = config.device
    dim = train.tokens[layer].shape[2]
    num_tokens, num_prefix = train.tokens[layer].shape[1], train.prefix[layer].shape[1]
    grid = train.grids[layer]
    instances = build_instances(heads, config.lrs, dim, num_classes, num_prefix, config.seed)
    modules = [h.to(device) for _, _, h in instances]
    scale = config.batch_size / 256 if config.scale_lr else 1.0
    optimizers = [
        build_optimizer(config.optimizer, h.parameters(), lr * scale, config.weight_decay)
        for (_, lr, h) in instances
    ]
    n = len(train)
    steps_per_epoch = max(1, n // config.batch_size + (1 if n % config.batch_size >= 2 else 0))
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    generator = torch.Generator().manual_seed(config.seed)
    history: list[list[dict[str, float]]] = [[] for _ in instances]
    best = [(-1.0, math.inf, -1, None)] * len(instances)  # (val top1, val loss, epoch, state)
    seconds = [0.0] * len(instances)
    cuda = str(device).startswith("cuda")
    bar = _bar(config.epochs * steps_per_epoch, progress, f"probe layer {layer}: {len(instances)} heads")
    step = 0
    try:
        for epoch in range(config.epochs):
            for m in modules:
                m.train()
            order = torch.randperm(n, generator=generator)
            for b in range(steps_per_epoch):
                index = order[b * config.batch_size : (b + 1) * config.batch_size]
                tokens = train.tokens[layer][index].to(device, torch.float32, non_blocking=True)
                prefix = train.prefix[layer][index].to(device, torch.float32, non_blocking=True)
                labels = train.labels[index].to(device, non_blocking=True)
                prefix_arg = prefix if num_prefix else None
                factor = warmup_cosine(step, total_steps, warmup_steps)
                for i, ((_, lr, _), head, opt) in enumerate(zip(instances, modules, optimizers)):
                    if config.time_heads and cuda:
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    for group in opt.param_groups:
                        group["lr"] = lr * scale * factor
                    loss = F.cross_entropy(head(tokens, prefix=prefix_arg, grid=grid), labels)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if config.time_heads:
                        if cuda:
                            torch.cuda.synchronize()
                        seconds[i] += time.perf_counter() - t0
                step += 1
                bar.update(1)
            scores = evaluate(modules, val, layer, device, config.eval_batch_size, num_classes)
            for i, s in enumerate(scores):
                history[i].append(s)
                if (s["top1"], -s["loss"]) > (best[i][0], -best[i][1]):
                    state = {k: v.detach().to("cpu", copy=True) for k, v in modules[i].state_dict().items()}
                    best[i] = (s["top1"], s["loss"], epoch, state)
    finally:
        bar.close()
    return _select(
        heads, instances, modules, history, best, seconds, test, layer, config, num_classes, num_tokens, num_prefix
    )


def _select(
    heads, instances, modules, history, best, seconds, test, layer, config, num_classes, num_tokens, num_prefix
) -> list[HeadResult]:
    results = []
    for h_idx, spec in enumerate(heads):
        members = [i for i, (hi, _, _) in enumerate(instances) if hi == h_idx]
        chosen = max(members, key=lambda i: (best[i][0], -best[i][1], -instances[i][1]))
        head = copy.deepcopy(modules[chosen])
        head.load_state_dict(best[chosen][3])
        test_top1 = test_topk = None
        if test is not None and len(test):
            score = evaluate([head], test, layer, config.device, config.eval_batch_size, num_classes)[0]
            test_top1, test_topk = score["top1"], score["topk"]
        sweep = [
            dict(
                lr=instances[i][1],
                best_epoch=best[i][2],
                val_top1=best[i][0],
                val_top1_per_epoch=[round(s["top1"], 4) for s in history[i]],
            )
            for i in members
        ]
        results.append(
            HeadResult(
                label=spec.label,
                name=spec.name,
                kwargs=dict(spec.kwargs),
                layer=layer,
                lr=instances[chosen][1],
                best_epoch=best[chosen][2],
                val_top1=best[chosen][0],
                val_top1_last_epoch=history[chosen][-1]["top1"],
                test_top1=test_top1,
                test_top5=test_topk,
                top5_k=min(5, num_classes),
                params=head.num_params(),
                macs=head.macs(num_tokens, num_prefix if head.uses_prefix != "never" else 0),
                train_time_s=sum(seconds[i] for i in members),
                sweep=sweep,
            )
        )
    return results


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, enabled: bool, desc: str):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI)
    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=False, disable=None)
