"""Feature cache: frozen-backbone tokens of one dataset split, written once in shards and reused.

Layout of one cache directory (``<cache_root>/<model-slug>-<split>-<key16>/``)::

    key.json                    the key payload and its SHA-256 (written first, atomically)
    shard-00000.safetensors     fp16 ``tokens.<layer>`` [n, N, D], ``prefix.<layer>`` [n, P, D],
                                int64 ``labels``
    shard-00000.sha256          the shard's SHA-256, written atomically right after the shard
    shard-00001.safetensors     (each written atomically; safetensors metadata repeats key, start and count)
    manifest.json               written last, atomically: the cache is complete only when it exists

Integrity: every read checks each shard against its recorded SHA-256 and checks that its features are finite.
A shard that is truncated, overwritten, unreadable or holds NaN/inf is reported by path (a warning), deleted
with its checksum, and extracted again; a manifest that is not valid JSON is reported by path and rebuilt from
the shards. Only files the cache itself wrote are ever deleted.

The key hashes everything that changes the features: model name and arguments, a digest of the weights (every
tensor of the state dict), the transform (its repr) and data config, the layers, ``norm``, the compute
precision, and the dataset identity (name, split, root, options, size, a digest of the labels). A directory
written for a different key is never reused: automatic look-ups go to a directory named by the key, and a
user who points ``cache_root`` directly at an existing cache directory gets a ValueError naming the fields
that differ.

An interrupted extraction resumes: completed shards whose metadata match are kept, only the missing shards are
computed (the split is read in a fixed order with the evaluation transform, so shards are deterministic).

Order: rows are stored in a seeded random order of the split (:func:`storage_order`), so that every shard is a
random sample of it. A cache too large for memory is then streamed shard by shard with the rows shuffled within
each shard (``vizoo.probe.sources.ShardStream``) and still gives well-mixed batches, also for class-sorted image
folders. :func:`load_split` holds a whole cache in memory instead.

Not in the efficient-probing code (it never caches; every step re-runs the backbone on augmented images).
Caching changes the protocol (centre crop, no augmentation); the results file records which protocol ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from vizoo.probe.features import extract_tokens, stable_json
from vizoo.utils import atomic_path, atomic_write_text

CACHE_VERSION = 2  # 2: rows in storage_order
ORDER_SEED = 0
KEY_FILE = "key.json"
MANIFEST_FILE = "manifest.json"


class DamagedCacheFile(ValueError):
    """A cache file that cannot be trusted (``path`` names it); the cache rebuilds it."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"feature cache file {path} is damaged: {reason}")
        self.path = Path(path)


@dataclass
class CachedSplit:
    """Features of one split, in memory.

    Attributes:
        layers: absolute block indices, ascending.
        tokens: per layer, fp16 patch tokens ``[n, N, D]``.
        prefix: per layer, fp16 prefix tokens ``[n, P, D]`` (P = 0 without prefix tokens).
        grids: per layer, the token grid ``(H, W)`` or None.
        labels: int64 ``[n]``.
        manifest: the manifest dict (key, payload, shapes, norm, ...).
    """

    layers: list[int]
    tokens: dict[int, torch.Tensor]
    prefix: dict[int, torch.Tensor]
    grids: dict[int, tuple[int, int] | None]
    labels: torch.Tensor
    manifest: dict[str, Any]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> "CachedSplit":
        """The rows ``index`` (e.g. a low-shot sample) of every tensor."""
        return CachedSplit(
            self.layers,
            {k: v[index] for k, v in self.tokens.items()},
            {k: v[index] for k, v in self.prefix.items()},
            dict(self.grids),
            self.labels[index],
            self.manifest,
        )


def storage_order(n: int) -> torch.Tensor:
    """The dataset index stored at each row of a cache of ``n`` samples: a permutation seeded with
    ``ORDER_SEED`` (the same for every cache of that size)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(ORDER_SEED))


def dataset_identity(name: str, split: str, dataset: Dataset, **options: Any) -> dict[str, Any]:
    """What identifies a dataset split in a cache key: name, split, options, size, a digest of the labels and,
    for image folders, a digest of the file paths, sizes and modification times.

    Args:
        name: dataset name (``digits``, ``folder``, ...).
        split: ``train``, ``val`` or ``test``.
        dataset: the (raw or transformed) split; its labels are read through ``targets``/``labels`` when
            present, else by indexing (which loads every image once).
        **options: anything else that changes the images (root folder, dataset kwargs, image size).
    """
    labels = labels_of(dataset)
    digest = hashlib.sha256(labels.numpy().tobytes()).hexdigest()[:16]
    identity = dict(name=name, split=split, options=options, num_samples=len(dataset), labels_sha=digest)
    samples = getattr(getattr(dataset, "dataset", dataset), "samples", None)
    if samples is not None:  # image files: their paths, sizes and modification times
        h = hashlib.sha256()
        for path, _ in samples:
            st = os.stat(path)
            h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        identity["files_sha"] = h.hexdigest()[:16]
    return identity


def labels_of(dataset: Dataset) -> torch.Tensor:
    """The int64 labels of a dataset (fast paths for vizoo's datasets and torchvision-style ones)."""
    inner = getattr(dataset, "dataset", dataset)  # TransformedDataset / Subset wrappers
    for attr in ("labels", "targets"):
        values = getattr(inner, attr, None)
        if values is not None and len(values) == len(dataset) and not isinstance(dataset, Subset):
            return torch.as_tensor(
                list(values) if not hasattr(values, "__array__") else values, dtype=torch.int64
            )
    samples = getattr(inner, "samples", None)
    if samples is not None and len(samples) == len(dataset) and not isinstance(dataset, Subset):
        return torch.tensor([int(s[1]) for s in samples], dtype=torch.int64)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.int64)


def make_payload(
    model_name: str,
    model_kwargs: dict[str, Any],
    weights: str,
    transform: Any,
    data_config: dict[str, Any],
    layers: Sequence[int],
    norm: bool,
    dataset: dict[str, Any],
    amp: bool = False,
) -> dict[str, Any]:
    """The key payload of one cached split (see the module docstring for what goes in and why).

    Args:
        model_name: the timm name the backbone was built from.
        model_kwargs: its extra arguments.
        weights: the weights' identity (:func:`vizoo.probe.features.weights_digest`).
        transform: the evaluation transform (its repr is hashed).
        data_config: timm data config (mean, std, input size, interpolation, crop).
        layers: sorted absolute block indices.
        norm: final norm applied.
        dataset: :func:`dataset_identity` of the split.
        amp: bfloat16 autocast used.
    """
    return dict(
        version=CACHE_VERSION,
        model=model_name,
        model_kwargs=model_kwargs,
        weights=weights,
        transform=repr(transform),
        data_config=data_config,
        layers=list(layers),
        norm=bool(norm),
        precision="bf16-autocast" if amp else "fp32",
        dataset=dataset,
    )


def cache_key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(stable_json(payload).encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[-48:] or "model"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DamagedCacheFile(path, f"not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise DamagedCacheFile(path, f"holds a JSON {type(data).__name__}, not an object")
    return data


def _diff_fields(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_fields(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if stable_json(a) == stable_json(b) else [prefix.rstrip(".")]


def incompatible_cache_error(path: Path, found: dict[str, Any], wanted: dict[str, Any]) -> ValueError:
    fields = _diff_fields(found, wanted)
    return ValueError(
        f"the feature cache at {path} was written for different inputs and cannot be reused here; "
        f"fields that "
        f"differ: {', '.join(fields[:12]) or '(format)'}. Point the cache at a parent folder (vizoo picks a "
        f"sub-folder per key) or delete {path}."
    )


def _is_cache_dir(path: Path) -> bool:
    return (path / KEY_FILE).exists() or (path / MANIFEST_FILE).exists()


def cache_dir_for(cache_root: str | Path, payload: dict[str, Any]) -> Path:
    """The directory that holds the cache for ``payload``.

    If ``cache_root`` is itself a cache directory (the user pointed at one), it is used only when its key
    matches; otherwise a ValueError lists the fields that differ.
    """
    root = Path(cache_root)
    key = cache_key(payload)
    if _is_cache_dir(root):
        recorded = _read_json(root / (MANIFEST_FILE if (root / MANIFEST_FILE).exists() else KEY_FILE))
        if recorded.get("key") != key:
            raise incompatible_cache_error(root, recorded.get("payload", {}), payload)
        return root
    dataset = payload["dataset"]
    return root / f"{_slug(payload['model'])}-{_slug(dataset['name'])}-{dataset['split']}-{key[:16]}"


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def _checksum_path(shard: Path) -> Path:
    return shard.with_suffix(".sha256")


def _file_sha256(path: Path) -> str:
    from vizoo.hub.export import file_sha256

    return file_sha256(path)


_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "I64": torch.int64}


def read_shard(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A shard's tensors and metadata, after checking its SHA-256 and that its features are finite.

    The file is read once into one buffer, hashed, and its tensors are views of that buffer (the safetensors
    layout: an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and byte
    range, then the data), so a read costs the disk, the hash and the finiteness check, and no copy.

    Raises:
        DamagedCacheFile: the shard is missing its checksum, differs from it, does not parse, or holds NaN/inf.
    """
    recorded = _checksum_path(path)
    if not recorded.exists():
        raise DamagedCacheFile(path, f"its checksum file {recorded.name} is missing")
    data = bytearray(path.stat().st_size)
    with open(path, "rb", buffering=0) as f:
        view, done = memoryview(data), 0
        while done < len(data) and (n := f.readinto(view[done:])):
            done += n
    if hashlib.sha256(data).hexdigest() != recorded.read_text().strip():
        raise DamagedCacheFile(path, "its SHA-256 differs from the one recorded when it was written")
    try:
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
        meta = header.pop("__metadata__", None) or {}
        tensors = {}
        for name, info in header.items():
            dtype = _DTYPES[info["dtype"]]
            start, end = (8 + size + int(v) for v in info["data_offsets"])
            count = (end - start) // dtype.itemsize
            flat = (torch.frombuffer(data, dtype=dtype, count=count, offset=start) if count
                    else torch.empty(0, dtype=dtype))
            tensors[name] = flat.view(info["shape"])
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise DamagedCacheFile(path, f"not a readable safetensors file ({err})") from None
    for name, tensor in tensors.items():
        finite = not tensor.is_floating_point() or not tensor.numel() or \
            torch.isfinite(torch.stack(torch.aminmax(tensor))).all()
        if not finite:
            # min and max propagate NaN and show +-inf: one pass, no temporary as large as the tensor
            raise DamagedCacheFile(path, f"{name} holds NaN or infinite values")
    return tensors, meta


def _discard(path: Path, reason: Exception) -> None:
    """Report a damaged cache file by path and delete it (and a shard's checksum) so it is rebuilt."""
    print(f"vizoo probe: warning: {reason}; extracting it again", file=sys.stderr, flush=True)
    for item in (path, _checksum_path(path) if path.suffix == ".safetensors" else None):
        if item is not None and item.exists():
            item.unlink()


def _shard_ok(path: Path, key: str, start: int, count: int) -> bool:
    if not path.exists():
        return False
    try:
        _, meta = read_shard(path)
    except DamagedCacheFile as err:
        _discard(path, err)
        return False
    return meta.get("key") == key and meta.get("start") == str(start) and meta.get("count") == str(count)


def extract_split(
    model: nn.Module,
    dataset: Dataset,
    payload: dict[str, Any],
    layers: Sequence[int],
    norm: bool,
    cache_root: str | Path,
    batch_size: int = 256,
    shard_size: int = 4096,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    amp: bool = False,
    progress: bool = True,
    on_shard: Callable[[int, Path], None] | None = None,
    load: bool = True,
) -> CachedSplit | Path:
    """Extract (or load, or finish) the cached features of one split.

    Args:
        model: the frozen backbone (eval mode), already on ``device``.
        dataset: the transformed split (evaluation transform), yielding ``(image tensor, label)``.
        payload: the key payload (see :func:`make_payload`); must match ``layers`` and ``norm``.
        layers: sorted absolute block indices.
        norm: apply the final norm to each block.
        cache_root: a folder of caches (a sub-folder per key is used), or one cache folder.
        batch_size: images per forward pass.
        shard_size: images per shard file.
        num_workers: DataLoader workers.
        device: where the backbone runs.
        amp: bfloat16 autocast on CUDA (recorded in the key through ``payload``).
        progress: show a progress bar.
        on_shard: called as ``on_shard(index, path)`` after each shard is written (tests use it to simulate
            a crash).
        load: return the split loaded in memory; False: return the complete cache's directory (for streaming).

    Returns:
        The :class:`CachedSplit` (rows in :func:`storage_order`), or the cache directory.
    """
    if len(dataset) == 0:
        raise ValueError("the dataset split is empty; nothing to extract")
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size} and {batch_size}")
    key = cache_key(payload)
    directory = cache_dir_for(cache_root, payload)
    if (directory / MANIFEST_FILE).exists():
        try:
            split = load_split(directory, key=key, check=load)
            return split if load else directory
        except DamagedCacheFile as err:  # rebuilt below: the manifest goes, the damaged file too
            _discard(err.path, err)
            if (directory / MANIFEST_FILE).exists():
                (directory / MANIFEST_FILE).unlink()
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / KEY_FILE).exists():
        atomic_write_text(directory / KEY_FILE, stable_json(dict(key=key, payload=payload)))
    n = len(dataset)
    stored = Subset(dataset, storage_order(n).tolist())
    starts = list(range(0, n, shard_size))
    todo = [
        i
        for i, s in enumerate(starts)
        if not _shard_ok(directory / _shard_name(i), key, s, min(shard_size, n - s))
    ]
    shapes: dict[str, Any] = {}
    from tqdm.auto import tqdm

    bar = tqdm(  # disable=None also hides it when stderr is not a terminal (logs, CI)
        total=sum(min(shard_size, n - starts[i]) for i in todo),
        desc=f"features {payload['dataset']['name']}/{payload['dataset']['split']}",
        unit="img",
        dynamic_ncols=True,
        leave=False,
        disable=None if progress and todo else True,
    )
    try:
        for i in todo:
            start, count = starts[i], min(shard_size, n - starts[i])
            loader = DataLoader(
                Subset(stored, range(start, start + count)),
                batch_size=batch_size,
                shuffle=False,
                num_workers=num_workers,
            )
            parts: dict[str, list[torch.Tensor]] = {}
            for images, labels in loader:
                images = images.to(device, non_blocking=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and images.is_cuda):
                    outs = extract_tokens(model, images, layers, norm)
                for layer, out in zip(layers, outs):
                    parts.setdefault(f"tokens.{layer}", []).append(out.tokens.to("cpu", torch.float16))
                    parts.setdefault(f"prefix.{layer}", []).append(out.prefix.to("cpu", torch.float16))
                    shapes[str(layer)] = dict(
                        num_tokens=out.tokens.shape[1],
                        dim=out.tokens.shape[2],
                        num_prefix=out.prefix.shape[1],
                        grid=out.grid,
                    )
                parts.setdefault("labels", []).append(torch.as_tensor(labels, dtype=torch.int64))
                bar.update(len(images))
            path = directory / _shard_name(i)
            write_shard(path, {k: torch.cat(v).contiguous() for k, v in parts.items()}, key, start, count, shapes)
            if on_shard is not None:
                on_shard(i, path)
    finally:
        bar.close()
    if not shapes:  # every shard was already there: read the shapes back from the first one
        shapes = _shard_shapes(directory / _shard_name(0))
    write_manifest(directory, payload, n, shard_size, shapes)
    return load_split(directory, key=key) if load else directory


def write_shard(path: Path, tensors: dict[str, torch.Tensor], key: str, start: int, count: int,
                shapes: dict[str, Any]) -> None:
    """Write one shard atomically, then its SHA-256 (``tokens.<layer>``, ``prefix.<layer>``, ``labels``)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=dict(key=key, start=str(start), count=str(count),
                                                    shapes=stable_json(shapes)))
        checksum = _file_sha256(tmp)
    atomic_write_text(_checksum_path(path), checksum + "\n")


def write_manifest(directory: Path, payload: dict[str, Any], n: int, shard_size: int,
                   shapes: dict[str, Any]) -> None:
    """Write the manifest last, atomically: from then on the cache is complete."""
    manifest = dict(
        version=CACHE_VERSION,
        key=cache_key(payload),
        payload=payload,
        num_samples=n,
        shard_size=shard_size,
        shards=[_shard_name(i) for i in range(len(range(0, n, shard_size)))],
        layers=list(payload["layers"]),
        norm=payload["norm"],
        dtype="float16",
        shapes=shapes,
        order=f"torch.randperm({n}) seeded with {ORDER_SEED}",
    )
    atomic_write_text(directory / MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True))


def _shard_shapes(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {})["shapes"])


def load_split(directory: str | Path, key: str | None = None, check: bool = True) -> CachedSplit | None:
    """Load a complete cache directory; ``key`` (when given) must match the manifest's. ``check=False`` only
    checks the manifest and returns None (a streamed cache checks each shard as it reads it).

    Raises:
        DamagedCacheFile: the manifest or a shard is damaged (see the module docstring).
        ValueError: not a complete cache, another format version, or another key.
    """
    directory = Path(directory)
    if not (directory / MANIFEST_FILE).exists():
        raise ValueError(f"{directory} holds no complete feature cache (no {MANIFEST_FILE})")
    manifest = _read_json(directory / MANIFEST_FILE)
    if manifest.get("version") != CACHE_VERSION:
        raise ValueError(
            f"{directory}: cache format version {manifest.get('version')} is not "
            f"{CACHE_VERSION}; delete it and extract again"
        )
    if key is not None and manifest.get("key") != key:
        raise ValueError(
            f"{directory}: cache key {manifest.get('key', '')[:16]} does not match the wanted key {key[:16]}"
        )
    if not check:
        return None
    shards = [read_shard(directory / name)[0] for name in manifest["shards"]]
    layers = [int(v) for v in manifest["layers"]]
    tokens = {layer: torch.cat([s[f"tokens.{layer}"] for s in shards]) for layer in layers}
    prefix = {layer: torch.cat([s[f"prefix.{layer}"] for s in shards]) for layer in layers}
    grid_of = {layer: manifest["shapes"][str(layer)]["grid"] for layer in layers}
    grids = {layer: tuple(grid) if grid else None for layer, grid in grid_of.items()}
    labels = torch.cat([s["labels"] for s in shards])
    if len(labels) != manifest["num_samples"]:
        raise DamagedCacheFile(
            directory / MANIFEST_FILE, f"the shards hold {len(labels)} samples, it says {manifest['num_samples']}"
        )
    return CachedSplit(layers, tokens, prefix, grids, labels, manifest)
