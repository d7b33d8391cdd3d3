"""Every pooler against a hand-written formula of its paper/official module (float64, random weights).

The references below loop over heads and use plain tensor algebra, independently of vizoo/heads/layers.py.
Heads that the official code follows with a constant output shift are compared centred over the batch where
vizoo drops the shift (see vizoo/heads/__init__.py); here every reference is written without those biases.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from vizoo.heads import create_head

D, B, N = 16, 3, 9


def _head(name, **kw):
    head = create_head(name, D, 4, **kw).double().eval()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.4)
    return head


def _mha(q, k, v, heads):
    """q [L, D] or [B, L, D], k/v [B, N, D]: loop over heads and samples."""
    b = k.shape[0]
    q = q.expand(b, *q.shape[-2:])
    dh, dv = k.shape[-1] // heads, v.shape[-1] // heads
    outs = []
    for i in range(b):
        per_head = []
        for h in range(heads):
            qh, kh, vh = q[i, :, h * dh:(h + 1) * dh], k[i, :, h * dh:(h + 1) * dh], v[i, :, h * dv:(h + 1) * dv]
            per_head.append(torch.softmax(qh @ kh.T / math.sqrt(dh), dim=-1) @ vh)
        outs.append(torch.cat(per_head, dim=-1))
    return torch.stack(outs)


def _ln(x, w=None, b=None, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], w, b, eps)


def _lin(x, layer):
    return x @ layer.weight.T + (layer.bias if layer.bias is not None else 0)


def _mlp(x, mlp):
    return _lin(F.gelu(_lin(x, mlp.fc1)), mlp.fc2)


@pytest.fixture
def x():
    return torch.randn(B, N, D, dtype=torch.float64)


def test_abmilp(x):
    h = _head("abmilp")
    q, k, v = _lin(x, h.qkv).chunk(3, dim=-1)
    z = _lin(_mha(q, k, v, 1), h.proj)
    s = _lin(torch.tanh(_lin(z, h.predictor[0])), h.predictor[2]).squeeze(-1)
    ref = torch.einsum("bn,bnd->bd", torch.softmax(s, dim=1), z)
    torch.testing.assert_close(h.forward_features(x), ref)


def test_simpool(x):
    h = _head("simpool")
    q = _lin(x.mean(1, keepdim=True), h.wq)
    xn = _ln(x, h.norm.weight, None, 1e-6)
    torch.testing.assert_close(h.forward_features(x), _mha(q, _lin(xn, h.wk), xn, 1)[:, 0])


def test_esimpool(x):
    h = _head("esimpool", num_heads=4)
    def ln(t):
        return _ln(t, h.norm.weight, h.norm.bias, 1e-6)
    torch.testing.assert_close(h.forward_features(x), _mha(ln(x.mean(1, keepdim=True)), ln(x), x, 4)[:, 0])


def test_clip_on_its_native_grid():
    h = _head("clip", feat_size=3)
    x = torch.randn(B, 9, D, dtype=torch.float64)
    xn = _ln(x, h.norm.weight, h.norm.bias, 1e-6)
    t = torch.cat([xn.mean(1, keepdim=True), xn], 1) + h.pos_embed
    ref = _lin(_mha(_lin(t[:, :1], h.q), _lin(t, h.k), _lin(t, h.v), 4), h.proj)[:, 0]
    torch.testing.assert_close(h.forward_features(x), ref)


def test_coca(x):
    h = _head("coca", num_heads=2, head_dim=4)
    q = _lin(_ln(h.query, h.norm.weight), h.to_q)                      # [8] = 2 heads x 4
    k, v = _lin(x, h.to_kv).chunk(2, dim=-1)                           # one shared 4-wide key/value head
    outs = [torch.einsum("bn,bnd->bd", torch.softmax(k @ q[i * 4:(i + 1) * 4] / 2.0, dim=1), v) for i in range(2)]
    torch.testing.assert_close(h.forward_features(x), _lin(torch.cat(outs, -1), h.to_out))


def test_cae(x):
    h = _head("cae", num_heads=2)
    q = _lin(_ln(h.query, h.norm_q.weight, h.norm_q.bias), h.q)[None]
    k = _lin(_ln(x, h.norm_k.weight), h.k)
    v = _lin(_ln(x, h.norm_v.weight), h.v)
    torch.testing.assert_close(h.forward_features(x), _lin(_mha(q, k, v, 2), h.proj)[:, 0])


@pytest.mark.parametrize("name", ["siglip", "vjepa"])
def test_latent_query_heads(name, x):
    h = _head(name, num_heads=2)
    t = _ln(x, h.norm1.weight, h.norm1.bias) if name == "vjepa" else x
    y = _lin(_mha(_lin(h.query, h.q)[None], _lin(t, h.k), _lin(t, h.v), 2), h.proj)[:, 0]
    if name == "vjepa":
        y = h.query + y
        ref = y + _mlp(_ln(y, h.norm2.weight, h.norm2.bias), h.mlp)
    else:
        ref = y + _mlp(y, h.mlp)
    torch.testing.assert_close(h.forward_features(x), ref)


def test_cait(x):
    h = _head("cait", num_heads=2)
    c = h.cls_token.expand(B, 1, D)
    u = _ln(torch.cat([c, x], 1), h.norm1.weight, h.norm1.bias, 1e-6)
    c = c + h.gamma1 * _lin(_mha(_lin(u[:, :1], h.q), _lin(u, h.k), _lin(u, h.v), 2), h.proj)
    c = c + h.gamma2 * _mlp(_ln(c, h.norm2.weight, h.norm2.bias, 1e-6), h.mlp)
    torch.testing.assert_close(h.forward_features(x), _ln(c, h.norm.weight)[:, 0])


def test_dinov2_block(x):
    h = _head("dinov2_block", num_heads=2)
    q, k, v = _lin(_ln(x, h.norm1.weight, h.norm1.bias), h.qkv).chunk(3, dim=-1)
    y = x + _lin(_mha(q, k, v, 2), h.proj)
    y = y + _mlp(_ln(y, h.norm2.weight, h.norm2.bias), h.mlp)
    torch.testing.assert_close(h.forward_features(x), y.mean(1))


def test_cbam_train_mode():
    h = _head("cbam", reduction=4).train()
    x = torch.randn(B, 12, D, dtype=torch.float64)
    m = x.transpose(1, 2).reshape(B, D, 3, 4)                          # row-major 3 x 4 grid
    def mlp(t):
        return _lin(torch.relu(_lin(t, h.fc1)), h.fc2)
    m1 = m * torch.sigmoid(mlp(m.mean((2, 3))) + mlp(m.amax((2, 3))))[:, :, None, None]
    s = F.conv2d(torch.cat([m1.mean(1, keepdim=True), m1.amax(1, keepdim=True)], 1), h.spatial_conv.weight, padding=3)
    s = (s - s.mean()) / torch.sqrt(s.var(unbiased=False) + 1e-5) * h.spatial_bn.weight + h.spatial_bn.bias
    ref = torch.relu(m1 * torch.sigmoid(s) + m).mean((2, 3))
    torch.testing.assert_close(h.forward_features(x, grid=(3, 4)), ref)


def test_dolg_train_mode(x):
    h = _head("dolg").train()
    f = _lin(x, h.conv1)
    mean, var = f.mean((0, 1)), f.var((0, 1), unbiased=False)
    f = (f - mean) / torch.sqrt(var + 1e-5) * h.feature_bn.weight + h.feature_bn.bias
    a = F.softplus(_lin(torch.relu(f), h.conv2))
    ref = (a * f / f.norm(dim=-1, keepdim=True)).mean(1)
    torch.testing.assert_close(h.forward_features(x), ref)
