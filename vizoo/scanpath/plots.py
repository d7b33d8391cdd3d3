"""PNG plots of scanpaths drawn over their scene: the human scanpaths beside the predicted ones."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from vizoo.scanpath.data import Scene
from vizoo.utils import atomic_path


def _draw(ax, scene: Scene, paths: Sequence[Sequence[int]], title: str, colour: str) -> None:
    from matplotlib.patches import Rectangle

    ax.imshow(scene.image)
    for i, (x0, y0, x1, y1) in enumerate(scene.boxes):
        is_target = i == scene.target
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=2.0 if is_target else 0.6,
                               ec="lime" if is_target else "black"))
    centres = scene.centres
    for k, path in enumerate(paths):
        if not path:
            continue
        # a small offset per scanpath keeps overlapping paths apart
        xy = centres[list(path)] + (k - (len(paths) - 1) / 2) * 1.5
        ax.plot(xy[:, 0], xy[:, 1], "-", color=colour, lw=1.2, alpha=0.8)
        ax.scatter(xy[:, 0], xy[:, 1], s=30, color=colour, edgecolors="white", linewidths=0.5, zorder=3)
        if k == 0:
            for j, (x, y) in enumerate(xy, 1):
                ax.annotate(str(j), (x, y), color="white", fontsize=6, ha="center", va="center", zorder=4)
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def plot_scanpaths(
    scene: Scene, predicted: dict[str, Sequence[Sequence[int]]], path: str | Path, max_humans: int = 3
) -> Path:
    """Write a PNG: the scene with its human scanpaths (first ``max_humans``), then one panel per entry of
    ``predicted`` (``{method name: scanpaths}``). The target box is green; fixation numbers follow each panel's
    first scanpath."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    panels = [("human", scene.scanpaths[:max_humans], "tab:blue")]
    colours = ["tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink"]
    panels += [(name, paths, colours[i % len(colours)]) for i, (name, paths) in enumerate(predicted.items())]
    width, height = scene.size
    size = 3.2
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size * height / width + 0.4), squeeze=False)
    for ax, (name, paths, colour) in zip(axes[0], panels):
        _draw(ax, scene, paths, f"{name}: " + " ".join(str(i) for i in (paths[0] if paths else [])), colour)
    fig.suptitle(f"{scene.scene_id} (target {scene.target})", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
