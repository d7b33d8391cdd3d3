"""Image folders: ``ROOT/<split>/<class>/<image>`` for training, and flat folders of images for prediction."""
from __future__ import annotations

from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from vizoo.data.registry import register_dataset


def load_image(path: str | Path) -> Image.Image:
    """An RGB image, or a ValueError naming the file when it is not a readable image (truncated, not an image)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:  # PIL: UnidentifiedImageError, truncated data, bad headers
        raise ValueError(f"cannot read image {path} ({type(err).__name__}: {err}); remove or replace the file") \
            from None


def check_image_folder(path: Path) -> None:
    """Raise a clear error if ``path`` is not ``<class>/<image>`` with at least one image."""
    if not path.is_dir():
        raise FileNotFoundError(f"image folder {str(path)!r} does not exist")
    classes = [d for d in sorted(path.iterdir()) if d.is_dir()]
    if not classes:
        raise ValueError(
            f"image folder {str(path)!r} has no class subfolders; expected {path}/<class name>/<image files>"
        )
    if not any(f.suffix.lower() in IMG_EXTENSIONS for d in classes for f in d.rglob("*")):
        raise ValueError(
            f"image folder {str(path)!r} has class subfolders but no images "
            f"(accepted extensions: {', '.join(IMG_EXTENSIONS)})"
        )


@register_dataset("folder")
def image_folder(split: str, root: str | None = None, **_) -> ImageFolder:
    """``root/<split>/<class>/*.jpg`` (torchvision ImageFolder); 'val' falls back to 'validation'."""
    if root is None:
        raise ValueError("the 'folder' dataset needs root=<path to a folder with train/ and val/ subfolders>")
    base = Path(root).expanduser()
    path = base / split
    if split == "val" and not path.exists() and (base / "validation").exists():
        path = base / "validation"
    check_image_folder(path)
    return ImageFolder(str(path), loader=load_image)


class ImageFiles(Dataset):
    """Every image file under a folder (recursively, sorted), for prediction; yields ``(PIL image, index)``."""

    def __init__(self, folder: str):
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"prediction folder {str(root)!r} does not exist")
        self.paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
        if not self.paths:
            raise ValueError(f"prediction folder {str(root)!r} holds no images ({', '.join(IMG_EXTENSIONS)})")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return load_image(self.paths[index]), index
