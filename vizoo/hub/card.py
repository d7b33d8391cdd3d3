"""The model card (README.md) written beside an exported model: what the model is, where it comes from, its
data configuration, metrics when given, and how to load it."""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

PLACEHOLDER_REPO = "YOUR_ORG/YOUR_REPO"


def _paper_lines(cfg: Mapping[str, Any]) -> list[str]:
    lines = []
    name = cfg.get("paper_name")
    ids = cfg.get("paper_ids") or ()
    if isinstance(ids, str):
        ids = (ids,)
    links = []
    for pid in ids:
        pid = str(pid)
        if pid.lower().startswith("arxiv:"):
            links.append(f"[{pid}](https://arxiv.org/abs/{pid.split(':', 1)[1]})")
        else:
            links.append(pid)  # a URL or another identifier, shown as given
    if name or links:
        lines.append(f"- **Paper:** {name or ''}{' ' if name and links else ''}{', '.join(links)}")
    if cfg.get("origin_url"):
        lines.append(f"- **Original code:** {cfg['origin_url']}")
    return lines


def model_card(
    config: Mapping[str, Any],
    repo_id: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    source: str | None = None,
    num_params: int | None = None,
) -> str:
    """Render a Hugging Face model card for an export folder.

    Args:
        config: the folder's ``config.json`` content (timm's layout: ``architecture``, ``model_args``,
            ``pretrained_cfg``, optional ``label_names``).
        repo_id: the Hub repository the folder is meant for; a placeholder is written when None and replaced
            at push time.
        metrics: name -> value pairs (e.g. ``{"top1": 81.2}``), shown as a table; optional.
        source: one line saying where the weights come from (a checkpoint, a training run).
        num_params: parameter count, shown when given.
    """
    cfg = config.get("pretrained_cfg", {})
    arch = config["architecture"]
    repo = repo_id or PLACEHOLDER_REPO
    license_ = cfg.get("license")
    front = ["---", "library_name: timm", "tags:", "- image-classification", "- timm", "- vizoo"]
    if license_:
        front.append(f"license: {license_}")
    front.append("---")  # metrics go in the body: the Hub's model-index schema needs a dataset id we may not have

    body = [f"# {arch}" + (f".{cfg['tag']}" if cfg.get("tag") else ""), ""]
    desc = cfg.get("description")
    if desc:
        body += [desc, ""]
    body.append("## Model details")
    body.append(f"- **Architecture:** `{arch}` (registered with timm by `import vizoo`)")
    if num_params is not None:
        body.append(f"- **Parameters:** {num_params / 1e6:.2f} M ({num_params:,})")
    body.append(f"- **Classes:** {config.get('num_classes')}")
    body += _paper_lines(cfg)
    if license_:
        body.append(f"- **License:** {license_}")
    if source:
        body.append(f"- **Weights:** {source}")
    if config.get("model_args"):
        body.append(f"- **Model arguments:** `{json.dumps(config['model_args'], sort_keys=True)}`")
    body.append("")

    body.append("## Data configuration")
    for key in ("input_size", "test_input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std"):
        if cfg.get(key) is not None:
            value = cfg[key]
            value = list(value) if isinstance(value, tuple) else value
            body.append(f"- `{key}`: {value}")
    body.append("")

    if metrics:
        body += ["## Metrics", "", "| metric | value |", "|---|---|"]
        for name, value in metrics.items():
            body.append(f"| {name} | {value:.4g} |" if isinstance(value, float) else f"| {name} | {value} |")
        body.append("")

    body += [
        "## How to load",
        "",
        "```python",
        "import timm",
        "import vizoo  # registers the vizoo architectures with timm",
        "",
        f'model = timm.create_model("hf-hub:{repo}", pretrained=True).eval()',
        "data_config = timm.data.resolve_model_data_config(model)",
        "transform = timm.data.create_transform(**data_config, is_training=False)",
        "```",
        "",
        "From a local copy of this folder: `timm.create_model(\"local-dir:PATH\", pretrained=True)`;",
        "from the command line: `vizoo hub pull " + repo + "`.",
        "",
    ]
    return "\n".join(front + body)
