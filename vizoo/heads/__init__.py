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

| vizoo          | official flag | official total | vizoo total | left out (gradient always zero in the official module) |
|----------------|---------------|---------------:|------------:|---------------------------------------------------------|
| linear         | cls / pos     |        769,000 |     769,000 |                                                         |
| ep (M=32)      | ep            |      1,383,400 |   1,383,400 |                                                         |
| mhca (h=16)    | aim           |      1,949,416 |   1,949,416 |                                                         |
| abmilp         | abmilp        |      3,720,425 |   3,720,424 | predictor's last bias (1)                               |
| simpool        | simpool       |      1,950,184 |   1,950,184 |                                                         |
| esimpool       | esimpool      |        770,536 |     770,536 |                                                         |
| clip           | clip          |      3,284,200 |   3,283,432 | key bias, part of qkv.bias (D)                          |
| coca           | coca          |      1,805,032 |   1,655,272 | 195 of 196 learned queries (195 D)                      |
| cae            | cae           |      3,135,976 |   3,133,672 | norm2_cross, unused (2D); norm1_k.bias (D)              |
| vjepa (h=16)   | jepa          |      7,857,640 |   7,856,872 | key bias, part of kv.bias (D)                           |
| siglip         | siglip        |      7,854,568 |   7,853,800 | key bias, part of kv.bias (D)                           |
| cait           | cait          |      7,860,712 |   7,859,944 | k.bias (D)                                              |
| dinov2_block   | dinovit       |      7,854,568 |   7,854,568 |                                                         |
| cbam           | cbam          |        842,828 |     842,828 |                                                         |
| dolg           | dolg          |      1,361,897 |   1,361,129 | conv1.bias, cancelled by the train-mode BatchNorm (D)   |

Each head's docstring says what else differs from the official module. ``use_prefix=True`` (where offered) is
the official ``<name>_all``: the prefix tokens are pooled together with the patch tokens.
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
from vizoo.heads import (  # noqa: E402,F401  isort: skip
    linear, ep, mhca, abmilp, simpool, clip, coca, cae, latent, cait, dinov2_block, cbam, dolg,
)

__all__ = ["ProbeHead", "create_head", "get_head_class", "head_options", "list_heads", "register_head"]
