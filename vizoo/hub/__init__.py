"""vizoo.hub: Hugging Face Hub weights for vizoo (and any timm) models.

* :func:`export_model` / ``vizoo hub export``: a model, a ``vizoo fit`` checkpoint or a converted official
  checkpoint -> a folder with timm's ``config.json``, ``model.safetensors`` (never a pickle) and a model card.
* :func:`convert_checkpoint` / ``vizoo convert``: an official checkpoint -> an export folder, through the family's
  ``checkpoint_filter_fn``, with every missing/unexpected key accounted for.
* :func:`push_folder` / ``vizoo hub push``: verify a folder loads back exactly, then upload it.
* :func:`pull` / ``vizoo hub pull``: download, verify, never leave a partial file in the cache.
* :func:`create_model`: ``timm.create_model`` after ``import vizoo`` with errors that say what to do.

Exported folders load with plain timm (after ``import vizoo``): ``timm.create_model("hf-hub:ORG/REPO",
pretrained=True)``, ``"local-dir:DIR"``, or a registered name with ``pretrained_cfg_overlay=dict(file=...)``.

What a backbone family provides (in its own module, e.g. ``vizoo/backbones/nat.py``):

* ``default_cfgs = generate_default_cfgs({...})`` above its ``@register_model`` functions, each cfg with
  ``input_size``, ``crop_pct``, ``interpolation``, ``mean``, ``std``, ``license``, ``paper_ids`` and/or
  ``paper_name``, ``first_conv``, ``classifier``; a cfg with weights gives a full ``hf_hub_id`` (``ORG/NAME.TAG``;
  only timm's own ``'timm/'`` prefix is auto-completed) or a ``url``;
* ``checkpoint_filter_fn(state_dict, model)`` passed as ``build_model_with_cfg(pretrained_filter_fn=...)``. It
  must return a state dict already in vizoo's layout unchanged (timm runs it on Hub exports too);
* optionally ``CHECKPOINT_EXPECTED_MISSING`` / ``CHECKPOINT_EXPECTED_UNEXPECTED``: tuples of glob patterns of keys
  that an official checkpoint legitimately lacks (e.g. buffers the model regenerates) or carries unused;
* optionally ``CONVERT_NOTE``: a sentence ``vizoo convert`` prints after converting one of its checkpoints.

tests/hub/test_hub_cfgs.py checks all of this for every model in ``vizoo.list_models()``.
"""
from vizoo.hub.convert import convert_checkpoint
from vizoo.hub.export import export_model
from vizoo.hub.loading import create_model, verify_folder
from vizoo.hub.publish import pull, push_folder

__all__ = ["convert_checkpoint", "create_model", "export_model", "pull", "push_folder", "verify_folder"]
