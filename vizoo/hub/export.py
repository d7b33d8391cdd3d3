"""Writing a model as a Hugging Face Hub folder in timm's layout: ``config.json`` + ``model.safetensors`` +
``README.md``.

``config.json`` is timm's own (written by ``timm.models.save_config_for_hf``: ``architecture``, ``model_args``,
``pretrained_cfg``, ``label_names``) so ``timm.create_model("hf-hub:...")`` and ``"local-dir:..."`` read it
unchanged. vizoo adds one top-level key, ``vizoo``, that timm ignores: the vizoo version, where the weights came
from, and a forward check (the first outputs of the model on a seeded input) that ``vizoo hub push`` re-runs before
it uploads anything. Weights are always written as safetensors, never as a pickle (timm's ``save_for_hf`` defaults
to ``pytorch_model.bin``). The folder is written under a temporary name beside the target and renamed into place, so
a killed export never leaves a half-written folder. ``config.json`` also records the SHA-256 of
``model.safetensors`` (``vizoo.weights_sha256``); loaders check it, so a modified or damaged file is reported by path.

Overwriting never deletes what vizoo did not write: ``overwrite=True`` replaces a folder only when it holds nothing
but an export's own three files, and refuses (naming the others) otherwise.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vizoo.hub.card import model_card
from vizoo.hub.folder import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    check_output_folder,
    file_sha256,
    forward_check,
    move_into_place,
)
from vizoo.hub.loading import verify_folder


def _imagenet_label_names(model: nn.Module) -> list[str] | None:
    """ImageNet synsets for a model whose cfg says it classifies an ImageNet subset (timm infers it), else None."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model)
    return list(ImageNetInfo(subset).label_names()) if subset else None


def _contiguous_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    sd = {}
    seen: dict[int, str] = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        ptr = tensor.untyped_storage().data_ptr() if tensor.numel() else -1
        if ptr in seen and ptr != -1:
            tensor = tensor.clone()  # safetensors refuses tensors that share memory (tied weights)
        seen.setdefault(ptr, key)
        sd[key] = tensor.contiguous()
    return sd


def export_model(
    model: nn.Module,
    out_dir: str | Path,
    *,
    label_names: Sequence[str] | Mapping[int, str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    model_args: Mapping[str, Any] | None = None,
    pretrained_cfg: Mapping[str, Any] | None = None,
    source: str | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
    verify: bool = True,
) -> Path:
    """Export a timm model (vizoo's or any other) as a Hub folder.

    Args:
        model: a model built by ``timm.create_model`` (it must have ``pretrained_cfg``).
        out_dir: the folder to create. It must not exist unless ``overwrite`` (see :func:`check_output_folder`).
        label_names: class names, one per output (written as ``label_names``); by default the ImageNet synsets
            when the model's cfg says it classifies ImageNet (timm's ``infer_imagenet_subset``), else none.
        metrics: name -> value pairs for the model card.
        model_args: constructor kwargs to record, in addition to those ``timm.create_model`` recorded.
        pretrained_cfg: entries that replace those of the model's pretrained cfg (e.g. ``tag``, ``license``).
        source: one line for the card and ``config.json`` saying where the weights come from.
        repo_id: the Hub repository the folder is meant for (used in the card's loading snippet).
        overwrite: replace an existing export folder ``out_dir`` (one holding other files is refused).
        verify: before the folder is moved into place, check that it loads back exactly
            (:func:`vizoo.hub.loading.verify_folder`: strict load, timm's loader, the forward check).

    Returns:
        The path of the written folder.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False, or holds files an export does not write.
        ValueError: the model has no ``pretrained_cfg``, a model argument cannot be written as JSON, or the
            written folder does not load back (then nothing is left at ``out_dir``).
    """
    from timm.models._hub import save_config_for_hf

    import vizoo

    out_dir = Path(out_dir)
    check_output_folder(out_dir, overwrite)
    if not getattr(model, "pretrained_cfg", None):
        raise ValueError("the model has no pretrained_cfg; build it with timm.create_model(...).")
    if label_names is not None and len(label_names) != getattr(model, "num_classes", len(label_names)):
        raise ValueError(f"{len(label_names)} label names given for a model with {model.num_classes} classes.")

    model_config: dict[str, Any] = {}
    if label_names is None and not model.pretrained_cfg.get("label_names"):
        label_names = _imagenet_label_names(model)
    if label_names is not None:
        model_config["label_names"] = list(label_names) if not isinstance(label_names, Mapping) else dict(label_names)
    if pretrained_cfg:
        model_config["pretrained_cfg"] = dict(pretrained_cfg)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        import safetensors.torch

        safetensors.torch.save_file(_contiguous_state_dict(model), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        save_config_for_hf(model, str(tmp / CONFIG_NAME), model_config=model_config,
                           model_args=dict(model_args or {}))
        config = json.loads((tmp / CONFIG_NAME).read_text())
        if config["pretrained_cfg"].get("license") is None:  # cleared for the user's own weights
            config["pretrained_cfg"].pop("license", None)
        # the check runs at the input size the config now declares, the one a loader will resolve
        config["vizoo"] = {
            "version": vizoo.__version__,
            "source": source,
            "weights_sha256": file_sha256(tmp / WEIGHTS_NAME),
            "forward_check": forward_check(model, config["pretrained_cfg"]["input_size"]),
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        num_params = sum(p.numel() for p in model.parameters())
        (tmp / CARD_NAME).write_text(model_card(config, repo_id=repo_id, metrics=metrics, source=source,
                                                num_params=num_params))
        _set_default_permissions(tmp)
        if verify:
            try:
                verify_folder(tmp)
            except (ValueError, FileNotFoundError) as err:
                raise ValueError(
                    f"the export of {config['architecture']} does not load back, so nothing was written: {err} "
                    "If the model was built with constructor arguments timm did not record, pass them as model_args."
                ) from err
        move_into_place(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def _set_default_permissions(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder; give it, and its files, the permissions the umask allows."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)
