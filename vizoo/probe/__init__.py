"""Probing frozen backbones: feature extraction and caching, token sources, the probing engine, reports.

* ``vizoo.probe.features`` - tokens of chosen blocks of any timm model through ``forward_intermediates``.
* ``vizoo.probe.cache`` - sharded, resumable, checksummed fp16 feature cache keyed by model, weights,
  transform, layers, norm and data.
* ``vizoo.probe.sources`` - token sources: a cache in memory or streamed from disk, or images for a frozen
  backbone.
* ``vizoo.probe.engine`` - every head x learning rate (x layer or input) trained in one pass from one token
  source, one optimizer, one backward; selection on the validation split.
* ``vizoo.probe.multiblock`` - DINOv2's multi-block inputs (class tokens of the last n blocks [+ patch mean]).
* ``vizoo.probe.lowshot`` - k images per class.
* ``vizoo.probe.pipeline`` - ``run_probe(ProbeJob(...))``; ``vizoo.probe.cli`` - ``vizoo probe``;
  ``vizoo.probe.report`` - table, JSON, PNG; ``vizoo.probe.bench`` - throughput on a GPU.
"""

from vizoo.probe.engine import HeadSpec, TrainConfig
from vizoo.probe.pipeline import ProbeJob, run_probe, train_probes

__all__ = ["HeadSpec", "ProbeJob", "TrainConfig", "run_probe", "train_probes"]
