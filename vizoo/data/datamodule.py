"""``ImageDataModule``: any registered dataset (embedded, synthetic or an image folder) as a LightningDataModule.

Transforms come from the model's own data config (``timm.data.resolve_model_data_config`` then
``timm.data.create_transform``): when the module runs under a Trainer whose LightningModule has a
``data_config`` attribute, that config is used, so mean/std/interpolation/crop follow the backbone.
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import DataLoader, Dataset

from vizoo.data.folder import ImageFiles
from vizoo.data.registry import create_dataset

EMBEDDED_IMAGE_SIZE = 32


class TransformedDataset(Dataset):
    def __init__(self, dataset: Dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        return self.transform(image), target


class ImageDataModule(L.LightningDataModule):
    """Train/val/test/predict loaders for an image-classification dataset.

    Args:
        dataset: a name from ``vizoo.data.list_datasets()``: ``digits``, ``mnist5k``, ``shapes`` (embedded,
            no download) or ``folder`` (``root/train/<class>/...``, ``root/val/<class>/...``).
        root: the folder for ``dataset='folder'``.
        image_size: square input size; defaults to the model's data config (32 for embedded data).
        batch_size: per-device batch size.
        num_workers: DataLoader workers.
        augment: training augmentation through timm's ``create_transform(is_training=True)``; the knobs below
            follow timm's names. Off, the training set gets the evaluation transform.
        scale: RandomResizedCrop scale range.
        hflip: horizontal flip probability (0 for digits and text).
        color_jitter: colour jitter strength.
        auto_augment: e.g. ``rand-m9-mstd0.5-inc1`` (RandAugment), or None.
        re_prob: random-erasing probability.
        predict_dir: folder of images for ``vizoo predict``.
        data_config: an explicit data config (input_size, mean, std, interpolation, crop_pct); by default the
            LightningModule's.
        dataset_kwargs: extra arguments for the dataset builder (e.g. ``num_samples`` for shapes).
    """

    def __init__(
        self,
        dataset: str = "digits",
        root: str | None = None,
        image_size: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        augment: bool = False,
        scale: tuple[float, float] = (0.08, 1.0),
        hflip: float = 0.5,
        color_jitter: float = 0.4,
        auto_augment: str | None = None,
        re_prob: float = 0.0,
        predict_dir: str | None = None,
        data_config: dict[str, Any] | None = None,
        dataset_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.dataset_name = dataset
        self.embedded = dataset != "folder"
        self._raw: dict[str, Dataset] = {}
        self._data_config = data_config
        self._check_sizes()

    def _check_sizes(self) -> None:
        if self.hparams.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.hparams.batch_size}")
        if self.hparams.image_size is not None and self.hparams.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.hparams.image_size}")

    # -- datasets ---------------------------------------------------------------------------------------
    def raw_dataset(self, split: str) -> Dataset:
        """The untransformed split (PIL images), built once."""
        if split not in self._raw:
            kwargs = dict(self.hparams.dataset_kwargs or {})
            if self.embedded:
                kwargs["image_size"] = self.hparams.image_size or EMBEDDED_IMAGE_SIZE
            self._raw[split] = create_dataset(self.dataset_name, split, root=self.hparams.root, **kwargs)
        return self._raw[split]

    @property
    def class_names(self) -> list[str]:
        return list(self.raw_dataset("train").classes)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # -- transforms -------------------------------------------------------------------------------------
    @property
    def data_config(self) -> dict[str, Any]:
        config = self._data_config
        if config is None:
            module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
            config = getattr(module, "data_config", None)
        config = dict(config or {})
        size = self.hparams.image_size or (EMBEDDED_IMAGE_SIZE if self.embedded else None)
        if size is not None:
            config["input_size"] = (3, size, size)
        config.setdefault("input_size", (3, 224, 224))
        config.setdefault("mean", IMAGENET_DEFAULT_MEAN)
        config.setdefault("std", IMAGENET_DEFAULT_STD)
        config.setdefault("interpolation", "bicubic")
        config.setdefault("crop_pct", 0.875)
        if self.embedded:
            config["crop_pct"] = 1.0  # embedded images are already at the input size
        return config

    def transform(self, training: bool):
        cfg = self.data_config
        common = dict(
            input_size=cfg["input_size"], mean=cfg["mean"], std=cfg["std"], interpolation=cfg["interpolation"]
        )
        if training and self.hparams.augment:
            h = self.hparams
            return create_transform(
                **common, is_training=True, scale=tuple(h.scale), hflip=h.hflip, color_jitter=h.color_jitter,
                auto_augment=h.auto_augment, re_prob=h.re_prob,
            )
        return create_transform(**common, is_training=False, crop_pct=cfg["crop_pct"])

    def split(self, split: str, training: bool = False) -> Dataset:
        """A split with the model's transform applied; ``training`` turns on augmentation (if enabled)."""
        return TransformedDataset(self.raw_dataset(split), self.transform(training))

    # -- loaders ----------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, shuffle: bool, drop_last: bool = False) -> DataLoader:
        n = self.hparams.num_workers
        return DataLoader(
            dataset, batch_size=self.hparams.batch_size, shuffle=shuffle, num_workers=n, drop_last=drop_last,
            persistent_workers=n > 0, pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        train = self.split("train", training=True)
        return self._loader(train, shuffle=True, drop_last=len(train) > self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.split("val"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.split("test"), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        if self.hparams.predict_dir is None:
            raise ValueError("predict needs --data.predict_dir=<folder of images>")
        self.predict_files = ImageFiles(self.hparams.predict_dir)
        return self._loader(TransformedDataset(self.predict_files, self.transform(False)), shuffle=False)
