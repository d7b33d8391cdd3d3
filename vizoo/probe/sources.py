"""Token sources of the probing engine: batches of tokens from a feature cache, or images for a frozen backbone.

Every source yields whole batches, in an order that one sampler, :class:`EpochBatches`, decides (a seeded
permutation per epoch for training, the stored order for evaluation; the rank's share under DDP), so the
sources are interchangeable: with augmentation off, the in-memory cache and the backbone on images feed the
heads the same samples in the same batches.

* :class:`MemoryTokens` - a cached split held in memory (``[n, N, D]`` fp16 per stream); batches are gathered
  by index. The default for caches that fit in memory.
* :class:`ShardStream` - a cache too large for memory, streamed from disk: whole shards are read sequentially
  by a pool of threads (each read checks the shard's SHA-256 and that its values are finite, as every cache
  read does), rows are shuffled within each shard, and batches are cut from consecutive shards. Caches are
  written in a seeded random order of the dataset (``vizoo.probe.cache``), so every shard already is a random
  sample of the split and shuffling within shards gives well-mixed batches even for class-sorted folders
  such as ImageNet's; the shard order is shuffled every epoch.
* :class:`ImageBatches` - images (with the augmentation of the training transform) for a frozen backbone
  that the engine runs every step.

A batch of tokens is ``(tokens, prefix, labels)`` with ``tokens[key]`` ``[B, N, D]`` and ``prefix[key]``
``[B, P, D]`` per stream ``key`` (a layer, or one of DINOv2's concatenated inputs); a batch of images is
``(images, labels)``.
"""

from __future__ import annotations

import collections
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler


def _epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch) * 7_919 + salt)


class EpochBatches(Sampler):
    """Batches of indices into ``range(n)`` for one epoch.

    Args:
        n: samples in the split.
        batch_size: samples per batch (per rank).
        shuffle: training order (a seeded permutation per epoch, the same on every rank) or the natural order.
        seed: seeds the permutation (with the epoch set by :meth:`set_epoch`, which Lightning calls).
        world: DDP world size; rank: this process's rank.

    Training under DDP pads the permutation to a multiple of ``world`` (as ``DistributedSampler`` does) so every
    rank takes the same number of steps; evaluation never pads (every sample is scored exactly once, the shards
    may differ by one). A last training batch of a single sample is dropped (it would break BatchNorm in
    training mode).
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, world: int = 1, rank: int = 0):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.world, self.rank, self.epoch = world, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        """This rank's sample indices of the current epoch, in order."""
        if not self.shuffle:
            return torch.arange(self.rank, self.n, self.world)
        order = torch.randperm(self.n, generator=_epoch_generator(self.seed, self.epoch))
        if self.world > 1:
            pad = (-self.n) % self.world
            order = torch.cat([order, order[:pad]])[self.rank :: self.world]
        return order

    def _count(self) -> int:
        return -(-self.n // self.world) if self.shuffle else len(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        count = self._count()
        full, rest = divmod(count, self.batch_size)
        return full + int(rest > 1 or (rest == 1 and (full == 0 or not self.shuffle)))

    def __iter__(self) -> Iterator[list[int]]:
        order = self.indices()
        for b in range(len(self)):
            yield order[b * self.batch_size : (b + 1) * self.batch_size].tolist()


class MemoryTokens(Dataset):
    """Cached tokens held in memory; ``source[indices]`` is one batch ``(tokens, prefix, labels)``.

    Args:
        streams: per stream key, ``(tokens [n, N, D], prefix [n, P, D])``.
        labels: int64 ``[n]``.
    """

    def __init__(self, streams: dict[str, tuple[torch.Tensor, torch.Tensor]], labels: torch.Tensor):
        self.streams, self.labels = streams, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: Sequence[int]):
        index = torch.as_tensor(index)
        tokens = {k: t.index_select(0, index) for k, (t, _) in self.streams.items()}
        prefix = {k: p.index_select(0, index) for k, (_, p) in self.streams.items()}
        return tokens, prefix, self.labels.index_select(0, index)


class ImageBatches(Dataset):
    """Images of a dataset; ``source[indices]`` is one batch ``(images [B, 3, H, W], labels [B])``.

    Args:
        dataset: yields ``(image tensor, label)`` (its transform does the augmentation).
        order: maps position -> dataset index (the order in which a cache of the split stores its rows, so that
            the two sources see the same sample at the same position); None: the identity.
    """

    def __init__(self, dataset: Dataset, order: torch.Tensor | None = None):
        self.dataset, self.order = dataset, order

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Sequence[int]):
        items = [self.dataset[int(self.order[i]) if self.order is not None else int(i)] for i in index]
        images = torch.stack([torch.as_tensor(x) for x, _ in items])
        return images, torch.as_tensor([int(y) for _, y in items], dtype=torch.int64)


class _ShardOrder:
    """The shards of one epoch: a seeded permutation (training) split round-robin over the ranks."""

    def __init__(self, sizes: list[int], shuffle: bool, seed: int, world: int, rank: int):
        self.sizes, self.shuffle, self.seed, self.world, self.rank = sizes, shuffle, seed, world, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shards(self, rank: int | None = None) -> list[int]:
        order = list(range(len(self.sizes)))
        if self.shuffle:
            order = torch.randperm(len(order), generator=_epoch_generator(self.seed, self.epoch, 1)).tolist()
        return order[(self.rank if rank is None else rank) :: self.world]


class ShardStream:
    """A feature cache streamed from disk, shard by shard (see the module docstring).

    Args:
        directory: a complete cache directory (its ``manifest.json`` names the shards).
        streams: per stream key, the cached layer it reads.
        batch_size: samples per batch (per rank).
        shuffle: training order (shard order and rows within shards shuffled per epoch) or the stored order.
        seed: seeds the shuffling (with the epoch Lightning sets through ``sampler.set_epoch``).
        world, rank: DDP world size and rank; training ranks take the same number of batches (the smallest
            share, the rest of the epoch's samples is dropped), evaluation ranks score every sample of their
            shards.
        workers: reader threads (file reads and hashing release the GIL); a few concurrent streams read a disk
            fastest, and many make the first shard of an epoch wait for all of them.
        prefetch: shards in flight (read or waiting to be consumed); default ``workers + 1``.

    Batches are not page-locked: copying them to a GPU (about 6 GB/s measured on an H200 host) is several times
    faster than the disk, and page-locking every shard cost more than it saved.
    """

    def __init__(
        self,
        directory: str | Path,
        streams: dict[str, int],
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        world: int = 1,
        rank: int = 0,
        workers: int = 4,
        prefetch: int | None = None,
    ):
        self.directory = Path(directory)
        self.manifest = json.loads((self.directory / "manifest.json").read_text())
        n, size = int(self.manifest["num_samples"]), int(self.manifest["shard_size"])
        sizes = [min(size, n - start) for start in range(0, n, size)]
        self.streams, self.batch_size, self.shuffle = streams, batch_size, shuffle
        self.workers = max(1, workers)
        self.prefetch = max(1, prefetch or self.workers + 1)
        self.sampler = _ShardOrder(sizes, shuffle, seed, world, rank)  # Lightning calls sampler.set_epoch
        self.batch_sampler = None  # what Lightning looks for on a loader

    def _steps(self) -> int | None:
        """Training: batches every rank takes this epoch (the smallest share); evaluation: None (all)."""
        if not self.shuffle:
            return None
        order = self.sampler
        return min(sum(order.sizes[i] for i in order.shards(r)) for r in range(order.world)) // self.batch_size

    def __len__(self) -> int:
        steps = self._steps()
        if steps is not None:
            return steps
        return -(-sum(self.sampler.sizes[i] for i in self.sampler.shards()) // self.batch_size)

    def _read(self, shard: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        from vizoo.probe.cache import read_shard

        tensors, _ = read_shard(self.directory / self.manifest["shards"][shard])
        labels = tensors["labels"]
        out = {f"{kind}.{key}": tensors[f"{kind}.{layer}"] for key, layer in self.streams.items()
               for kind in ("tokens", "prefix")}
        if self.shuffle and self.batch_size < len(labels):  # which rows share a batch changes every epoch
            rows = torch.randperm(len(labels), generator=_epoch_generator(self.sampler.seed, self.sampler.epoch,
                                                                          2 + shard))
            out, labels = {k: v.index_select(0, rows) for k, v in out.items()}, labels.index_select(0, rows)
        return out, labels

    def __iter__(self):
        steps = self._steps()
        shards = list(self.sampler.shards())
        carry: list[tuple[dict[str, torch.Tensor], torch.Tensor]] = []
        produced = 0
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="vizoo-shard")
        try:
            pending = collections.deque(pool.submit(self._read, s) for s in shards[: self.prefetch])
            upcoming = iter(shards[self.prefetch :])
            while pending:
                shard = pending.popleft().result()
                nxt = next(upcoming, None)
                if nxt is not None:
                    pending.append(pool.submit(self._read, nxt))
                for batch in self._cut(carry, shard):
                    if steps is not None and produced >= steps:
                        return
                    produced += 1
                    yield batch
            if carry and steps is None:
                yield self._batch(*carry.pop())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _cut(self, carry: list, shard: tuple[dict[str, torch.Tensor], torch.Tensor]):
        """Batches from the rows left over from the previous shard followed by this shard's rows."""
        tensors, labels = shard
        if carry:
            prev, prev_labels = carry.pop()
            tensors = {k: torch.cat([prev[k], v]) for k, v in tensors.items()}
            labels = torch.cat([prev_labels, labels])
        full = len(labels) // self.batch_size * self.batch_size
        for start in range(0, full, self.batch_size):
            yield self._batch({k: v[start : start + self.batch_size] for k, v in tensors.items()},
                              labels[start : start + self.batch_size])
        if full < len(labels):
            carry.append(({k: v[full:] for k, v in tensors.items()}, labels[full:]))

    def _batch(self, tensors: dict[str, torch.Tensor], labels: torch.Tensor):
        tokens = {k: tensors[f"tokens.{k}"] for k in self.streams}
        prefix = {k: tensors[f"prefix.{k}"] for k in self.streams}
        return tokens, prefix, labels


def loader(source: Any, sampler: EpochBatches | None = None, num_workers: int = 0, pin_memory: bool = False):
    """A DataLoader that returns the source's batches as they are (``source[indices]`` per ``sampler`` batch);
    a :class:`ShardStream` is its own loader."""
    if isinstance(source, ShardStream):
        return source
    from torch.utils.data import DataLoader

    return DataLoader(
        source,
        batch_size=None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
