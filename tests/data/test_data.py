import numpy as np
import pytest
from PIL import Image

from vizoo.data import ImageDataModule, create_dataset, list_datasets
from vizoo.data.embedded import fixed_split


def test_registry_lists_embedded_and_folder():
    assert {"digits", "mnist5k", "shapes", "folder"} <= set(list_datasets())


def test_unknown_dataset_lists_close_names():
    with pytest.raises(ValueError, match=r"unknown dataset 'digit'.*Did you mean 'digits'"):
        create_dataset("digit", "train")
    with pytest.raises(ValueError, match="unknown split"):
        create_dataset("digits", "training")


def test_fixed_splits_are_disjoint_complete_stratified_and_stable():
    labels = np.repeat(np.arange(10), 20)
    parts = {s: fixed_split(labels, s) for s in ("train", "val", "test")}
    union = np.concatenate(list(parts.values()))
    assert len(union) == len(labels) == len(np.unique(union))
    assert np.array_equal(parts["val"], fixed_split(labels, "val"))
    for s, idx in parts.items():
        counts = np.bincount(labels[idx], minlength=10)
        assert counts.max() - counts.min() <= 1, (s, counts)


@pytest.mark.parametrize("name,sizes", [("digits", (1257, 270, 270)), ("mnist5k", (3500, 750, 750))])
def test_real_embedded_sets(name, sizes):
    splits = [create_dataset(name, s, image_size=16) for s in ("train", "val", "test")]
    assert tuple(len(d) for d in splits) == sizes
    counts = np.bincount(splits[0].labels, minlength=10)
    assert counts.min() >= 0.09 * sizes[0] and counts.max() <= 0.11 * sizes[0], counts  # ~balanced, 10 classes
    # a real image: a dark background with a bright stroke covering a fair part of the centre
    image = splits[0].images[0]
    assert image[0, 0].max() < 60 and image.max() > 150 and 0.05 < (image > 128).mean() < 0.6
    image, label = create_dataset(name, "val", image_size=16)[0]
    assert isinstance(image, Image.Image) and image.size == (16, 16) and image.mode == "RGB"
    assert 0 <= label < 10


def test_shapes_are_seeded_and_balanced():
    a = create_dataset("shapes", "train", image_size=24, num_samples=60)
    b = create_dataset("shapes", "train", image_size=24, num_samples=60)
    c = create_dataset("shapes", "val", image_size=24, num_samples=60)
    assert np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert np.bincount(a.labels).tolist() == [10] * 6


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="needs root"):
        create_dataset("folder", "train")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train")):
        create_dataset("folder", "train", root=str(tmp_path))
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        create_dataset("folder", "train", root=str(tmp_path))
    (tmp_path / "train" / "cat").mkdir()
    with pytest.raises(ValueError, match="no images"):
        create_dataset("folder", "train", root=str(tmp_path))
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "cat" / "a.png")
    assert create_dataset("folder", "train", root=str(tmp_path)).classes == ["cat"]


def test_datamodule_uses_data_config_normalisation():
    dm = ImageDataModule("digits", image_size=16, batch_size=8, data_config={"mean": (0.5,) * 3, "std": (0.5,) * 3})
    assert dm.num_classes == 10 and dm.class_names[0] == "0"
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (8, 3, 16, 16)
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6 and x.min() < -0.9  # (v - 0.5) / 0.5 for v in [0, 1]
