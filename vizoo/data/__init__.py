"""Datasets and data modules. Embedded data needs no download: see ``vizoo.data.embedded``."""
from vizoo.data import embedded, folder  # noqa: F401  (register the datasets)
from vizoo.data.datamodule import ImageDataModule
from vizoo.data.registry import create_dataset, list_datasets, register_dataset

__all__ = ["ImageDataModule", "create_dataset", "list_datasets", "register_dataset"]
