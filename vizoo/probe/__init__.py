"""Probing frozen backbones: feature extraction and caching, the multi-head probe trainer, protocols, reports.

* ``vizoo.probe.features`` - tokens of chosen blocks of any timm model through ``forward_intermediates``.
* ``vizoo.probe.cache`` - sharded, resumable fp16 feature cache keyed by model, weights, transform, layers,
  norm and data.
* ``vizoo.probe.trainer`` - many heads x learning rates trained on one pass over cached features; selection on
  the validation split.
* ``vizoo.probe.multiblock`` - DINOv2's multi-block inputs (class tokens of the last n blocks [+ patch mean])
  and its plain Linear head, on cached features.
* ``vizoo.probe.augmented`` - the papers' protocol (augmentation, backbone every step) through Lightning.
* ``vizoo.probe.lowshot`` - k images per class; ``vizoo.probe.optim`` - LARS and warmup + cosine.
* ``vizoo.probe.pipeline`` - ``run_probe(ProbeJob(...))``; ``vizoo.probe.cli`` - ``vizoo probe``;
  ``vizoo.probe.report`` - table, JSON, PNG; ``vizoo.probe.bench`` - throughput on a GPU.
"""

from vizoo.probe.pipeline import ProbeJob, run_probe
from vizoo.probe.trainer import HeadSpec, TrainConfig, train_probes

__all__ = ["HeadSpec", "ProbeJob", "TrainConfig", "run_probe", "train_probes"]
