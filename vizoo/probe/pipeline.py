"""One probing job from start to end: backbone, data, token source, the probing engine, results.

``run_probe(ProbeJob(...))`` is what ``vizoo probe`` calls; it is also the Python entry point::

    from vizoo.probe import ProbeJob, HeadSpec, run_probe
    report = run_probe(ProbeJob(model="vit_small_patch16_224.augreg_in21k", dataset="folder",
                                root="/data/pets", heads=[HeadSpec("linear"), HeadSpec("ep")]))

Both protocols train every head in one pass of the engine (``vizoo.probe.engine``); they differ in the token
source (``vizoo.probe.sources``), and the protocol is recorded in the results:

* ``cached``: the evaluation transform (resize + centre crop), tokens extracted once into the feature cache
  (``vizoo.probe.cache``), held in memory or, when the cache is larger than half the available memory (or
  ``stream=True``), streamed from disk. Fast; differs from the papers' recipe by having no augmentation.
* ``augmented``: the papers' recipe (MAE / efficient-probing): RandomResizedCrop + flip on every step and the
  frozen backbone re-run every step.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from vizoo.probe.cache import CachedSplit, dataset_identity, extract_split, load_split, make_payload, storage_order
from vizoo.probe.engine import HeadBank, HeadSpec, ProbeData, Stream, TrainConfig, fit_heads
from vizoo.probe.features import (
    BackboneSpec,
    create_backbone,
    data_config_for,
    extract_tokens,
    resolve_layers,
    weights_digest,
)
from vizoo.probe.lowshot import sample_k_shot
from vizoo.probe.multiblock import LINEAR_HEADS, InputSpec, blocks_needed, concat_features
from vizoo.probe.sources import EpochBatches, ImageBatches, MemoryTokens, ShardStream, loader

PROTOCOLS = ("cached", "augmented")


def default_cache_root() -> Path:
    import os

    base = os.environ.get("VIZOO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vizoo")
    return Path(base) / "features"


@dataclass
class ProbeJob:
    """Everything a probing run needs.

    Args:
        model: timm model name (vizoo's, timm's, ``hf-hub:...``, ``local-dir:...``).
        model_kwargs: extra ``timm.create_model`` arguments.
        pretrained: load the model's pretrained weights.
        checkpoint: a state-dict file to load instead.
        dataset: ``digits``, ``mnist5k``, ``shapes`` or ``folder`` (with ``root``).
        root: image folder root for ``dataset='folder'`` (``train/`` and ``val/`` [and ``test/``]).
        dataset_kwargs: extra dataset options.
        image_size: input size (default: the model's).
        heads: head types to train.
        train: optimisation settings.
        protocol: ``cached`` or ``augmented``.
        layers: blocks to probe (negative from the end); several = layer-wise mode (one result per layer).
        inputs: DINOv2 multi-block inputs (``cls1``, ``cls1+avg``, ``cls4``, ``cls4+avg``, ...; see
            ``vizoo.probe.multiblock``): the last blocks they need are cached once and every head is trained
            on each concatenated input (one result per input). Cached protocol, linear heads only; replaces
            ``layers``.
        norm: apply the final norm to the tokens (DINOv2 style) or not (MAE style).
        k_shot: images per class for low-shot mode (None = all).
        seeds: low-shot seeds (one result set per seed).
        cache_dir: root folder of feature caches.
        extract_batch_size: images per backbone forward.
        num_workers: DataLoader workers (images); reader threads of a streamed cache (0: 4).
        amp: bfloat16 autocast for the backbone on CUDA.
        scale: RandomResizedCrop scale (augmented protocol).
        hflip: horizontal flip probability (augmented protocol).
        augment: augmented protocol: RandomResizedCrop + flip on the training images (False: the evaluation
            transform, with which the protocol gives what the cached one gives; for checks).
        devices: processes of the Lightning Trainer (several: DDP).
        progress: progress bars.
        stream: read the cached tokens from disk shard by shard instead of holding them in memory (None: when
            the cache is larger than half the available memory). k-shot mode and multi-block inputs hold
            their (smaller) training data in memory.
    """

    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = True
    checkpoint: str | None = None
    dataset: str = "digits"
    root: str | None = None
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    heads: str | Sequence[HeadSpec | str] = ("linear", "ep")
    train: TrainConfig = field(default_factory=TrainConfig)
    protocol: str = "cached"
    layers: Sequence[int] | int | None = None
    inputs: Sequence[str] | str | None = None
    norm: bool = False
    k_shot: int | None = None
    seeds: Sequence[int] | int = (0,)
    cache_dir: str | None = None
    extract_batch_size: int = 256
    num_workers: int = 0
    amp: bool = False
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    augment: bool = True
    devices: int = 1
    progress: bool = True
    stream: bool | None = None

    def __post_init__(self) -> None:
        # one value where a list is expected is a list of one (``--heads linear``, ``--layers -1``)
        self.heads = HeadSpec.parse_all([self.heads] if isinstance(self.heads, (str, HeadSpec)) else self.heads)
        if isinstance(self.layers, int):
            self.layers = [self.layers]
        if isinstance(self.inputs, str):
            self.inputs = [self.inputs]
        if isinstance(self.seeds, int):
            self.seeds = [self.seeds]


def _datamodule(job: ProbeJob, data_config: dict[str, Any], image_size: int):
    from vizoo.data import ImageDataModule

    return ImageDataModule(
        dataset=job.dataset,
        root=job.root,
        image_size=image_size,
        batch_size=job.extract_batch_size,
        num_workers=job.num_workers,
        augment=True,
        scale=tuple(job.scale),
        hflip=job.hflip,
        color_jitter=0.0,
        data_config=data_config,
        dataset_kwargs=dict(job.dataset_kwargs) or None,
    )


def _check_classes(dm) -> list[str]:
    classes = dm.class_names
    if len(classes) < 2:
        raise ValueError(
            f"dataset {dm.dataset_name!r} has {len(classes)} class(es) {classes}; probing needs at least 2"
        )
    for split in ("train", "val"):
        if len(dm.raw_dataset(split)) == 0:
            raise ValueError(f"the {split} split of dataset {dm.dataset_name!r} is empty")
    return list(classes)


def _has_split(dm, split: str) -> bool:
    try:
        return len(dm.raw_dataset(split)) > 0
    except (ValueError, FileNotFoundError):
        return False


def check_job_numbers(job: ProbeJob) -> None:
    """ValueError naming the first setting whose number is out of range (never replaced by a default)."""
    at_least = dict(extract_batch_size=1, devices=1, num_workers=0)
    if job.image_size is not None:
        at_least["image_size"] = 1
    if job.k_shot is not None:
        at_least["k_shot"] = 1
    for name, low in at_least.items():
        value = getattr(job, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    low, high = (float(v) for v in job.scale)
    if not (0 < low <= high <= 1):
        raise ValueError(f"scale must be two numbers with 0 < min <= max <= 1, got {tuple(job.scale)}")
    if not (0 <= job.hflip <= 1):
        raise ValueError(f"hflip must be a probability in [0, 1], got {job.hflip}")


def check_device(device: str) -> None:
    """ValueError for a device this machine does not have (before any model is built)."""
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r} ({err})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is available here (torch.cuda.is_available() is "
                             "False); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}")


def run_probe(job: ProbeJob) -> dict[str, Any]:
    """Run a probing job and return the results dict (the JSON that ``vizoo probe`` writes).

    The dict holds ``meta`` (model, weights digest, protocol, norm, layers, data, settings, machine) and
    ``results``: one entry per (layer, seed, head type) with the selected lr/epoch, validation and test
    accuracy, parameters, MACs and train time.
    """
    if job.protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {job.protocol!r}")
    if not job.heads:
        raise ValueError("no heads given")
    job.train.check()
    if job.protocol == "augmented" and job.k_shot is not None:
        raise ValueError("low-shot mode (k_shot) runs on cached features; use protocol='cached' with k_shot")
    check_job_numbers(job)
    check_device(job.train.device)
    inputs = _check_inputs(job)
    started = time.perf_counter()
    spec = BackboneSpec(job.model, dict(job.model_kwargs), job.pretrained, job.checkpoint)
    model = create_backbone(spec)
    digest = weights_digest(model)
    image_size = job.image_size if job.image_size is not None else int(data_config_for(model)["input_size"][-1])
    data_config = data_config_for(model, image_size)
    dm = _datamodule(job, data_config, image_size)
    classes = _check_classes(dm)
    if inputs:
        layers = resolve_layers(model, list(range(-blocks_needed(inputs), 0)))
    else:
        layers = resolve_layers(model, job.layers)
    if job.k_shot is not None:  # fail early on a k larger than the smallest class
        from vizoo.probe.cache import labels_of

        sample_k_shot(labels_of(dm.raw_dataset("train")), job.k_shot, 0, len(classes))
    meta = dict(
        model=job.model,
        model_kwargs=dict(job.model_kwargs),
        weights_sha256=digest,
        checkpoint=job.checkpoint,
        protocol=job.protocol,
        norm=job.norm,
        layers=layers,
        inputs=[s.label for s in inputs] or None,
        dataset=job.dataset,
        root=job.root,
        image_size=image_size,
        data_config={k: v for k, v in data_config.items()},
        classes=classes,
        k_shot=job.k_shot,
        seeds=list(job.seeds) if job.k_shot else None,
        train=asdict(job.train),
        heads=[asdict(h) for h in job.heads],
        machine=dict(
            python=platform.python_version(),
            torch=torch.__version__,
            device=job.train.device,
            cpu=platform.processor() or platform.machine(),
            threads=torch.get_num_threads(),
        ),
    )
    if job.protocol == "cached":
        results, splits = _run_cached(job, model, dm, digest, data_config, layers, classes, inputs)
    else:
        results, splits = _run_augmented(job, model, dm, layers, classes)
    meta["split_sizes"] = splits
    meta["wall_time_s"] = time.perf_counter() - started
    return dict(meta=meta, results=results)


def extract_features(
    job: ProbeJob,
    model,
    dm,
    digest: str,
    data_config: dict[str, Any],
    layers: list[int],
    split: str,
    on_shard=None,
    shard_size: int = 4096,
) -> Path:
    """The cache directory of one split for the job's backbone and data (extracting what is missing)."""
    dataset = dm.split(split, training=False)
    identity = dataset_identity(
        job.dataset,
        split,
        dm.raw_dataset(split),
        root=job.root,
        dataset_kwargs=dict(job.dataset_kwargs),
        image_size=dm.hparams.image_size,
    )
    payload = make_payload(
        job.model,
        dict(job.model_kwargs),
        digest,
        dm.transform(False),
        data_config,
        layers,
        job.norm,
        identity,
        amp=job.amp,
    )
    device = job.train.device
    model.to(device)
    return extract_split(
        model,
        dataset,
        payload,
        layers,
        job.norm,
        job.cache_dir or default_cache_root(),
        batch_size=job.extract_batch_size,
        shard_size=shard_size,
        num_workers=job.num_workers,
        device=device,
        amp=job.amp,
        progress=job.progress,
        on_shard=on_shard,
        load=False,
    )


def _check_inputs(job: ProbeJob) -> list[InputSpec]:
    """The parsed multi-block inputs of the job (empty without them); checks what they combine with."""
    if not job.inputs:
        return []
    specs = [InputSpec.parse(s) for s in job.inputs]
    if len({s.label for s in specs}) != len(specs):
        raise ValueError(f"inputs {list(job.inputs)} name the same input twice")
    if job.protocol != "cached":
        raise ValueError("multi-block inputs (inputs=...) run in the cached protocol; use protocol='cached'")
    if job.layers:
        raise ValueError(
            "give either layers (layer-wise probing) or inputs (multi-block concatenation), not both: the "
            "inputs choose their blocks (the last n)"
        )
    others = [
        h.label for h in job.heads if h.name not in LINEAR_HEADS or h.kwargs.get("pool", "auto") == "cls"
    ]
    if others:
        raise ValueError(
            f"multi-block inputs give one vector per image, so only linear heads apply ({', '.join(LINEAR_HEADS)}"
            f" with pool 'auto' or 'avg'); got {others}"
        )
    return specs


def _fits_in_memory(manifest: dict[str, Any]) -> bool:
    """Whether a cache (its manifest) takes at most half of the memory available now."""
    per_sample = sum((v["num_tokens"] + v["num_prefix"]) * v["dim"] * 2 for v in manifest["shapes"].values())
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return True
    return manifest["num_samples"] * per_sample <= available / 2


def _layer_stream(split: CachedSplit, layer: int) -> Stream:
    tokens, prefix = split.tokens[layer], split.prefix[layer]
    return Stream(str(layer), layer, tokens.shape[1], tokens.shape[2], prefix.shape[1], split.grids[layer])


def _run_cached(job: ProbeJob, model, dm, digest, data_config, layers, classes, inputs=()):
    dirs = {
        s: extract_features(job, model, dm, digest, data_config, layers, s)
        for s in ("train", "val", "test")
        if s != "test" or _has_split(dm, "test")
    }
    config = job.train
    manifests = {s: json.loads((d / "manifest.json").read_text()) for s, d in dirs.items()}
    if job.stream or (job.stream is None and not all(_fits_in_memory(m) for m in manifests.values())):
        if inputs or job.k_shot is not None:
            raise ValueError(
                "k-shot mode and multi-block inputs hold the cached tokens in memory; this cache is larger than "
                "half the available memory (or stream=True was given)"
            )
        return _train_streamed(job, dirs, manifests, classes)
    splits = {s: load_split(d) for s, d in dirs.items()}
    sizes = {s: len(v) for s, v in splits.items()}
    results = []
    seeds = list(job.seeds) if job.k_shot is not None else [None]
    for seed in seeds:
        train = splits["train"]
        if seed is not None:
            train = train.subset(sample_k_shot(train.labels, job.k_shot, seed, len(classes)))
        run_config = config if seed is None else _with_seed(config, seed)
        parts = dict(splits, train=train)
        for r in train_probes(parts, layers, job.heads, len(classes), run_config, inputs, job.devices,
                              job.amp, job.progress):
            entry = _entry(r, seed=seed, k_shot=job.k_shot, protocol="cached", num_train=len(train))
            if r.input is not None:
                entry.update(label=f"{r.label} [{r.input}]", head_label=r.label)
            results.append(entry)
    return results, sizes


def train_probes(
    splits: dict[str, CachedSplit],
    layers: Sequence[int],
    heads: Sequence[HeadSpec],
    num_classes: int,
    config: TrainConfig,
    inputs: Sequence[InputSpec] = (),
    devices: int = 1,
    amp: bool = False,
    progress: bool = True,
):
    """Train every head type at every lr on cached splits held in memory, in one pass of the engine.

    Args:
        splits: ``train`` and ``val`` (and optionally ``test``) features.
        layers: the cached layers to probe, one stream each (ignored with ``inputs``).
        heads: head types.
        num_classes: C.
        config: optimisation settings.
        inputs: DINOv2 multi-block inputs: one stream per input instead of one per layer.
        devices, amp, progress: see :class:`ProbeJob`.

    Returns:
        The :class:`~vizoo.probe.engine.HeadResult` list, per stream then per head type.
    """
    config.check()
    if not heads:
        raise ValueError("no heads to train; give at least one head name")
    _check_splits(splits, layers, num_classes)
    streams, sources = [], {name: {} for name in splits}
    if inputs:
        last = max(splits["train"].layers)
        for spec in inputs:
            for name, split in splits.items():
                vectors = concat_features(split, spec)[:, None, :]
                sources[name][spec.label] = (vectors, vectors.new_zeros(len(vectors), 0, vectors.shape[2]))
            streams.append(Stream(spec.label, last, 1, vectors.shape[2], 0, (1, 1), input=spec.label))
    else:
        for layer in layers:
            streams.append(_layer_stream(splits["train"], layer))
            for name, split in splits.items():
                sources[name][str(layer)] = (split.tokens[layer], split.prefix[layer])
    memory = {name: MemoryTokens(sources[name], split.labels) for name, split in splits.items()}
    pin = str(config.device).startswith("cuda")

    def make_loader(split: str, training: bool, world: int, rank: int):
        source = memory[split]
        size = config.batch_size if training else config.eval_batch_size
        return loader(source, EpochBatches(len(source), size, training, config.seed, world, rank), pin_memory=pin)

    bank = HeadBank(heads, streams, num_classes, config)
    return fit_heads(bank, ProbeData(make_loader, "test" in splits and len(splits["test"]) > 0), devices, amp,
                     progress)


def _check_splits(splits: dict[str, CachedSplit], layers: Sequence[int], num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"probing needs at least 2 classes, the dataset has {num_classes}")
    for name in ("train", "val"):
        split = splits.get(name)
        if split is None or len(split) == 0:
            raise ValueError(f"the {name} split is empty")
        missing = [layer for layer in layers if layer not in split.tokens]
        if missing:
            raise ValueError(f"layers {missing} are not in the {name} features (cached layers: {split.layers})")
        if int(split.labels.min()) < 0 or int(split.labels.max()) >= num_classes:
            raise ValueError(f"{name} labels must lie in [0, {num_classes - 1}]")
    present = torch.unique(splits["train"].labels).numel()
    if present < 2:
        raise ValueError(f"the training split holds only {present} class; probing needs at least 2")


def _entry(result, **fields) -> dict[str, Any]:
    """One results.json entry: the engine's result plus what the run adds (seed, protocol, ...)."""
    return dict(result.to_dict(), **fields)


def _train_streamed(job: ProbeJob, dirs: dict[str, Path], manifests: dict[str, dict], classes: list[str]):
    """The cached protocol on caches streamed from disk (see :class:`~vizoo.probe.sources.ShardStream`)."""
    config = job.train
    config.check()
    manifest = manifests["train"]
    layers = [int(v) for v in manifest["layers"]]
    streams = []
    for layer in layers:
        shape = manifest["shapes"][str(layer)]
        grid = tuple(shape["grid"]) if shape["grid"] else None
        streams.append(Stream(str(layer), layer, shape["num_tokens"], shape["dim"], shape["num_prefix"], grid))

    def make_loader(split: str, training: bool, world: int, rank: int):
        size = config.batch_size if training else config.eval_batch_size
        return ShardStream(dirs[split], {s.key: s.layer for s in streams}, size, training, config.seed, world,
                           rank, workers=job.num_workers or 4)

    bank = HeadBank(job.heads, streams, len(classes), config)
    results = fit_heads(bank, ProbeData(make_loader, "test" in dirs), job.devices, job.amp, job.progress)
    sizes = {s: m["num_samples"] for s, m in manifests.items()}
    return [_entry(r, seed=None, k_shot=None, protocol="cached", num_train=sizes["train"], streamed=True)
            for r in results], sizes


def _run_augmented(job: ProbeJob, model, dm, layers: list[int], classes: list[str]):
    """The augmented protocol: the frozen backbone runs every step on freshly augmented images."""
    config = job.train
    sets = {"train": dm.split("train", training=job.augment), "val": dm.split("val")}
    if _has_split(dm, "test"):
        sets["test"] = dm.split("test")
    images, _ = ImageBatches(sets["val"])[[0, 1] if len(sets["val"]) > 1 else [0]]
    outs = extract_tokens(model, images, layers, job.norm)
    streams = [
        Stream(str(layer), layer, o.tokens.shape[1], o.tokens.shape[2], o.prefix.shape[1], o.grid)
        for layer, o in zip(layers, outs)
    ]
    # positions map to dataset indices as the rows of a cache of the split do (same samples in the same batches)
    sources = {name: ImageBatches(data, storage_order(len(data))) for name, data in sets.items()}
    pin = str(config.device).startswith("cuda")

    def make_loader(split: str, training: bool, world: int, rank: int):
        size = config.batch_size if training else config.eval_batch_size
        batches = EpochBatches(len(sources[split]), size, training, config.seed, world, rank)
        return loader(sources[split], batches, num_workers=job.num_workers, pin_memory=pin)

    bank = HeadBank(job.heads, streams, len(classes), config, backbone=model, norm=job.norm)
    results = fit_heads(bank, ProbeData(make_loader, "test" in sets), job.devices, job.amp, job.progress)
    return ([_entry(r, seed=None, k_shot=None, protocol="augmented", num_train=len(sets["train"])) for r in results],
            {name: len(data) for name, data in sets.items()})


def _with_seed(config: TrainConfig, seed: int) -> TrainConfig:
    from dataclasses import replace

    return replace(config, seed=seed)
