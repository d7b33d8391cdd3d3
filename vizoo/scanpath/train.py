"""Training OAT with Lightning: ``ScanpathModule`` (the LightningModule) and ``ScanpathDataModule``.

``vizoo fit -c configs/scanpath/oat_synthetic.yaml`` trains on the synthetic visual-search world; ``data.root``
points at a vizoo scanpath folder instead (see :mod:`vizoo.scanpath.data`). The recipe follows OAT's: Adam at a
constant learning rate, token-level cross-entropy under teacher forcing (one training sample per human
scanpath), gradient clipping (``trainer.gradient_clip_val``), and early stopping on the validation behavioural
error, with the best checkpoint kept on the same metric. Validation decodes every validation scene greedily and
scores it against all its human scanpaths with :func:`vizoo.scanpath.metrics.score_scanpaths`.

Differs from OAT: validation metrics are computed on each process's share of the scenes (run evaluation on
one device for the exact numbers; ``vizoo scanpath evaluate`` does).
"""
from __future__ import annotations

from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from vizoo.scanpath.data import Scene, collate_scenes, load_scenes, scene_tensors, split_scenes
from vizoo.scanpath.metrics import score_scanpaths
from vizoo.scanpath.model import OAT
from vizoo.scanpath.synthetic import GuidedSearch, make_scenes


class ScanpathModule(L.LightningModule):
    """OAT trained with teacher forcing and validated by greedy decoding.

    Args:
        oat: keyword arguments of :class:`vizoo.scanpath.OAT` (appearance encoder, widths, depths...).
        lr: Adam learning rate (constant, as in OAT).
        weight_decay: Adam weight decay.
        max_length: the longest predicted scanpath during validation, test and predict.
        monitor: the validation metric for early stopping and the best checkpoint.
        monitor_mode: ``min`` or ``max`` for ``monitor``.
        patience: validation epochs without improvement before stopping (OAT: 30).
    """

    def __init__(
        self,
        oat: dict[str, Any] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        max_length: int = 16,
        monitor: str = "val/behavioural_error",
        monitor_mode: str = "min",
        patience: int = 30,
    ):
        super().__init__()
        self.save_hyperparameters()
        if monitor_mode not in ("min", "max"):
            raise ValueError(f"monitor_mode must be 'min' or 'max', got {monitor_mode!r}")
        try:
            self.model = OAT(**(oat or {}))
        except TypeError as error:
            raise ValueError(f"bad OAT arguments in model.oat: {error}") from None
        if max_length + 1 > self.model.max_steps:
            raise ValueError(f"max_length={max_length} needs oat.max_steps >= {max_length + 1}")
        self._outputs: dict[str, list] = {}

    def training_step(self, batch, batch_idx):
        loss = self.model.loss(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["target"]))
        return loss

    def _evaluate(self, batch, stage: str):
        self.log(f"{stage}/loss", self.model.loss(batch), on_epoch=True, batch_size=len(batch["target"]))
        paths = self.model.generate(batch, self.hparams.max_length)
        self._outputs.setdefault(stage, []).extend(zip(batch["index"].tolist(), paths))

    def _score(self, stage: str):
        outputs = sorted(self._outputs.pop(stage, []))
        if not outputs:
            return
        scenes = self.trainer.datamodule.scenes(stage)
        picked = [scenes[i] for i, _ in outputs]
        result = score_scanpaths(
            [p for _, p in outputs], [s.scanpaths for s in picked], [s.centres for s in picked],
            [s.target for s in picked], [s.size for s in picked],
        )
        shown = {f"{stage}/{k}": result.pop(k) for k in ("sequence_score", "behavioural_error")}
        self.log_dict(shown, prog_bar=True, batch_size=len(outputs))
        self.log_dict({f"{stage}/{k}": v for k, v in result.items()}, batch_size=len(outputs))

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self):
        self._score("val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def on_test_epoch_end(self):
        self._score("test")

    def predict_step(self, batch, batch_idx):
        return {"index": batch["index"].tolist(), "scanpaths": self.model.generate(batch, self.hparams.max_length)}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def configure_callbacks(self):
        h = self.hparams
        return [
            ModelCheckpoint(monitor=h.monitor, mode=h.monitor_mode, save_last=True, filename="best-{epoch}-{step}"),
            EarlyStopping(monitor=h.monitor, mode=h.monitor_mode, patience=h.patience),
        ]


class _Items(Dataset):
    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class ScanpathDataModule(L.LightningDataModule):
    """Scenes with human scanpaths, split by scene into train / val / test.

    Args:
        root: a vizoo scanpath folder (``scenes.json`` + images); None uses the synthetic world.
        synthetic: arguments of :func:`vizoo.scanpath.synthetic.make_scenes` (``num_scenes``, ``seed``,
            ``rows``, ``cols``, ``cell``, ``fill``, ``share``, ``searchers``) plus ``search``, a dict of
            :class:`~vizoo.scanpath.synthetic.GuidedSearch` fields.
        split: train / val / test fractions of the scenes.
        split_seed: seed of the shuffle before the split.
        crop_size: (height, width) of object crops; by default the model's.
        max_fixations: human scanpaths are cut to this many fixations for training and the loss.
        batch_size: per-device batch size (training samples are (scene, human scanpath) pairs).
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        root: str | None = None,
        synthetic: dict[str, Any] | None = None,
        split: Sequence[float] = (0.8, 0.1, 0.1),
        split_seed: int = 1234,
        crop_size: tuple[int, int] | None = None,
        max_fixations: int = 16,
        batch_size: int = 20,
        num_workers: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if max_fixations < 1 or batch_size < 1:
            raise ValueError(f"max_fixations and batch_size must be >= 1, got {max_fixations}, {batch_size}")
        self._splits: dict[str, list[Scene]] | None = None
        self._items: dict[str, list[dict]] = {}

    def _load(self) -> list[Scene]:
        if self.hparams.root:
            return load_scenes(self.hparams.root)
        kwargs = dict(self.hparams.synthetic or {})
        if isinstance(kwargs.get("search"), dict):
            kwargs["search"] = GuidedSearch(**kwargs["search"])
        kwargs.setdefault("num_scenes", 400)
        try:
            return make_scenes(**kwargs)
        except TypeError as error:
            raise ValueError(f"bad data.synthetic arguments: {error}") from None

    def _crop_size(self) -> tuple[int, int]:
        if self.hparams.crop_size:
            return tuple(self.hparams.crop_size)
        module = self.trainer.lightning_module if self.trainer is not None else None
        model = getattr(module, "model", None)
        return tuple(getattr(model, "crop_size", (32, 32)))

    def setup(self, stage: str | None = None):
        if self._splits is None:
            train, val, test = split_scenes(self._load(), self.hparams.split, self.hparams.split_seed)
            self._splits = {"train": train, "val": val, "test": test, "predict": test}
        crop = self._crop_size()
        if not self._items:
            for name, scenes in self._splits.items():
                tensors = [scene_tensors(s, crop) for s in scenes]
                if name == "train":  # one sample per human scanpath
                    items = [dict(t, scanpath=torch.tensor(p[: self.hparams.max_fixations]))
                             for t, s in zip(tensors, scenes) for p in s.scanpaths]
                else:  # one sample per scene; its first human scanpath gives the loss
                    items = [dict(t, scanpath=torch.tensor(s.scanpaths[0][: self.hparams.max_fixations]), index=i)
                             for i, (t, s) in enumerate(zip(tensors, scenes))]
                self._items[name] = items

    def scenes(self, stage: str) -> list[Scene]:
        """The scenes of ``stage`` (``train``, ``val``, ``test``; ``predict`` is the test split)."""
        if self._splits is None:
            self.setup()
        return self._splits[stage]

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        if not self._items[name]:
            raise ValueError(f"the {name} split is empty: give more scenes or change data.split")
        return DataLoader(_Items(self._items[name]), batch_size=self.hparams.batch_size, shuffle=shuffle,
                          num_workers=self.hparams.num_workers, collate_fn=collate_scenes)

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)

    def predict_dataloader(self):
        return self._loader("predict", False)
