"""Probing heads for frozen backbones: a registry and one small module per head.

Usage::

    from vizoo.heads import create_head, list_heads
    head = create_head("ep", in_dim=768, num_classes=1000, num_queries=32)
    logits = head(patch_tokens, prefix=prefix_tokens, grid=(14, 14))
    head.num_params(), head.macs(num_tokens=196)

Every head is ``pool -> BatchNorm1d(width, affine=False, eps=1e-6) -> Linear(width, C)``, as in the
official efficient-probing code (Psomas et al., ICLR 2026, github.com/billpsomas/efficient-probing); see
``vizoo/heads/base.py`` for the call convention and the counting rules of ``num_params`` and ``macs``.

Parameters at D=768, C=1000, default options (tests/heads/test_counts.py checks every row, and the D=384
and D=1024 columns of ``research/probe_heads_official.md``). vizoo leaves out parameters whose gradient is
zero for every input and every weight value in the official modules; the last column names them.

| vizoo          | official flag | official total | vizoo total | left out (dead in the official module)          |
|----------------|---------------|---------------:|------------:|--------------------------------------------------|
| linear         | cls / pos     |        769,000 |     769,000 |                                                  |
| ep (M=32)      | ep            |      1,383,400 |   1,383,400 |                                                  |
| mhca (h=16)    | aim           |      1,949,416 |   1,949,416 |                                                  |
"""
from vizoo.heads.base import (
    ProbeHead,
    create_head,
    get_head_class,
    head_options,
    list_heads,
    register_head,
)

# Importing the modules registers the heads.
from vizoo.heads import linear, ep, mhca  # noqa: E402,F401  isort: skip

__all__ = ["ProbeHead", "create_head", "get_head_class", "head_options", "list_heads", "register_head"]
