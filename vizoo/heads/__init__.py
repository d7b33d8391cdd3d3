"""Probing heads for frozen backbones: a registry and one small module per head.

Usage::

    from vizoo.heads import create_head, list_heads
    head = create_head("ep", in_dim=768, num_classes=1000, num_queries=32)
    logits = head(patch_tokens, prefix=prefix_tokens, grid=(14, 14))
    head.num_params(), head.macs(num_tokens=196)

Every head is ``pool -> BatchNorm1d(width, affine=False, eps=1e-6) -> Linear(width, C)`` (``plain_linear``, DINOv2's
linear evaluation head, drops the BatchNorm), as in the
official efficient-probing code (Psomas et al., ICLR 2026, github.com/billpsomas/efficient-probing); see
``vizoo/heads/base.py`` for the call convention and the counting rules of ``num_params`` and ``macs``.

Parameters at D=768, C=1000, default options (tests/heads/test_counts.py checks every row, and the D=384
and D=1024 counts of the official efficient-probing code). vizoo leaves out the parameters of the official
heads whose gradient is zero for every input and every weight value when the head trains (pool ->
BatchNorm1d(affine=False) in train mode -> Linear). There are three kinds: (a) parameters that are never
used; (b) key biases, and LayerNorm biases that only reach the keys, which add the same amount to every
attention logit of a query, so the softmax cancels them; (c) biases that shift the pooled vector by the same
constant for every image (value/output-projection biases after attention weights that sum to one, a final
MLP or LayerNorm bias), which the train-mode BatchNorm subtracts again. The pooled outputs of every vizoo
head equal the official module's with the same weights, up to that constant shift (checked in float64 with
random weights against the official code, not part of the test suite since that code is not vendored).

| vizoo          | official flag | official total | vizoo total | left out: (kind) parameter, count               |
|----------------|---------------|---------------:|------------:|-------------------------------------------------|
| linear         | cls / pos     |        769,000 |     769,000 |                                                 |
| plain_linear   | (DINOv2)      |        769,000 |     769,000 | no BatchNorm (DINOv2's bare Linear)             |
| ep (M=32)      | ep            |      1,383,400 |   1,383,400 |                                                 |
| mhca (h=16)    | aim           |      1,949,416 |   1,949,416 |                                                 |
| abmilp         | abmilp        |      3,720,425 |   3,720,424 | (b) predictor's last bias, 1                    |
| simpool        | simpool       |      1,950,184 |   1,949,416 | (b+c) LayerNorm bias (keys and values), D       |
| esimpool       | esimpool      |        770,536 |     770,536 |                                                 |
| clip           | clip          |      3,284,200 |   3,281,896 | (b) key bias; (c) value bias, proj bias; 3D     |
| coca           | coca          |      1,805,032 |   1,655,272 | (a) 195 of the 196 learned queries, 195 D       |
| cae            | cae           |      3,135,976 |   3,132,136 | (a) norm2_cross 2D; (b) norm1_k bias D;         |
|                |               |                |             | (c) norm1_v bias, proj bias 2D; 5D in all       |
| vjepa (h=16)   | jepa          |      7,857,640 |   7,856,104 | (b) key bias; (c) mlp.fc2 bias; 2D              |
| siglip         | siglip        |      7,854,568 |   7,853,032 | (b) key bias; (c) mlp.fc2 bias; 2D              |
| cait           | cait          |      7,860,712 |   7,859,176 | (b) key bias; (c) final norm bias; 2D           |
| dinov2_block   | dinovit       |      7,854,568 |   7,853,800 | (c) mlp.fc2 bias (added to every token), D      |
| cbam           | cbam          |        842,828 |     842,828 |                                                 |
| dolg           | dolg          |      1,361,897 |   1,361,129 | (c') conv1 bias, cancelled by dolg's own BN, D  |

Multiply-adds per image at D=768, N=196 (``head.macs(196)``, equal to FlopCounterMode / 2): linear 0.77M,
ep 11.0M (the official project-first order: 121M), mhca 232M, abmilp 638M, simpool 117M, esimpool 1.07M,
clip 235M (official, all 197 queries: 525M), coca 21M (official, 196 queries: 213M), cae 233M, vjepa 238M,
siglip 238M, cait 239M, dinov2_block 1,447M, cbam 0.93M, dolg 117M.

Each head's docstring says what else differs from the official module. ``use_prefix=True`` (where offered) is
the official ``<name>_all``: the prefix tokens are pooled together with the patch tokens.
"""
from vizoo.heads.base import (
    ProbeHead,
    create_head,
    describe_heads,
    get_head_class,
    head_options,
    list_heads,
    register_head,
)

# Importing the modules registers the heads.
from vizoo.heads import (  # noqa: F401  isort: skip
    linear, ep, mhca, abmilp, simpool, clip, coca, cae, latent, cait, dinov2_block, cbam, dolg,
)

__all__ = ["ProbeHead", "create_head", "describe_heads", "get_head_class", "head_options", "list_heads",
           "register_head"]
