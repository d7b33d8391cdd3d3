"""Image input and the PNG overlays the vlm commands write."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vizoo.utils import atomic_path


def load_image(image: str | os.PathLike | Image.Image) -> Image.Image:
    """An RGB PIL image from a PIL image or a file; FileNotFoundError / ValueError when it cannot be read."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path} does not decode as an image ({error}); give a PNG, JPEG or another format "
                         "Pillow reads") from error


def save_overlay(image: Image.Image, heat: np.ndarray, path: str | os.PathLike, title: str = "",
                 mask: np.ndarray | None = None) -> None:
    """Write a PNG: the image, ``heat`` (H x W, any scale) as a translucent colour map over it, and the
    outline of ``mask`` if given. Written atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6 * image.height / max(image.width, 1)))
    extent = (0, image.width, image.height, 0)  # pixel (row i, column j) covers [j, j + 1] x [i, i + 1]
    ax.imshow(image, extent=extent)
    ax.imshow(heat, cmap="jet", alpha=0.45, extent=extent, interpolation="bilinear")
    if mask is not None and mask.any():
        x, y = np.arange(mask.shape[1]) + 0.5, np.arange(mask.shape[0]) + 0.5
        ax.contour(x, y, mask.astype(float), levels=[0.5], colors="white", linewidths=1.5)
    ax.set_axis_off()
    if title:
        ax.set_title(title[:120], fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
