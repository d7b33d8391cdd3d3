"""EP, MHCA and the linear probe against hand-written formulas."""
import math

import pytest
import torch

from vizoo.heads import create_head


def _eval64(head):
    return head.double().eval()


def _randomize(head, std=0.5):
    """Peaked attention: the init (queries ~ N(0, 0.02^2)) gives near-uniform maps that hide mistakes."""
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, std)
    return head


def test_linear_is_bn_plus_linear_by_hand():
    head = create_head("linear", 16, 5)
    x = torch.randn(8, 9, 16)
    cls = torch.randn(8, 2, 16)
    head.train()
    out = head(x, prefix=cls)
    v = cls[:, 0]
    mean, var = v.mean(0), v.var(0, unbiased=False)
    ref = ((v - mean) / torch.sqrt(var + 1e-6)) @ head.classifier.weight.T + head.classifier.bias
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # avg pool ignores the prefix; auto falls back to the mean without it
    avg = create_head("linear", 16, 5, pool="avg")
    avg.load_state_dict(head.state_dict())
    avg.train(), head.train()
    torch.testing.assert_close(avg(x, prefix=cls), head(x))


def test_linear_pool_modes_prefix_use():
    assert create_head("linear", 8, 2, pool="cls").uses_prefix == "required"
    assert create_head("linear", 8, 2, pool="avg").uses_prefix == "never"
    assert create_head("linear", 8, 2).uses_prefix == "optional"
    with pytest.raises(ValueError, match="prefix"):
        create_head("linear", 8, 2, pool="cls")(torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="pool must be one of"):
        create_head("linear", 8, 2, pool="max")


def test_ep_single_query_is_softmax_weighted_value_projection():
    head = _randomize(_eval64(create_head("ep", 12, 3, num_queries=1)))
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    u, wv = head.queries[0], head.value.weight
    a = torch.softmax(x @ u / math.sqrt(12), dim=1)              # [B, N]
    y = torch.einsum("bn,bnd->bd", a, x @ wv.T)
    torch.testing.assert_close(head.forward_features(x), y)


def _ep_project_first(head, x):
    """The official order: project every token with W_V, split channels into M slices, pool each slice."""
    b, n, d = x.shape
    m = head.num_queries
    v = (x @ head.value.weight.T).view(b, n, m, -1)               # [B, N, M, D'/M]
    a = torch.softmax(torch.einsum("md,bnd->bmn", head.queries, x) / math.sqrt(d), dim=-1)
    return torch.einsum("bmn,bnmk->bmk", a, v).reshape(b, -1)


@pytest.mark.parametrize("d,m,d_out", [(48, 8, 1), (48, 4, 2), (64, 16, 4), (96, 32, 1)])
def test_ep_pool_first_equals_project_first(d, m, d_out):
    head = _randomize(_eval64(create_head("ep", d, 10, num_queries=m, d_out=d_out)), std=0.3)
    x = torch.randn(3, 11, d, dtype=torch.float64)
    assert head.width == d // d_out
    torch.testing.assert_close(head.forward_features(x), _ep_project_first(head, x), rtol=1e-10, atol=1e-10)
    # float32 at the default init: the official order and vizoo's differ by rounding only
    h32 = create_head("ep", d, 10, num_queries=m, d_out=d_out).eval()
    x32 = x.float()
    torch.testing.assert_close(h32.forward_features(x32), _ep_project_first(h32, x32), rtol=1e-5, atol=1e-5)


def test_ep_use_prefix_attends_to_prefix_tokens():
    head = _randomize(_eval64(create_head("ep", 16, 4, num_queries=4, use_prefix=True)))
    assert head.uses_prefix == "required"
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    p = torch.randn(2, 2, 16, dtype=torch.float64)
    torch.testing.assert_close(head.forward_features(x, prefix=p),
                               _ep_project_first(head, torch.cat([p, x], 1)))
    assert head.attention(x, prefix=p).shape == (2, 4, 7)
    with pytest.raises(ValueError, match="prefix"):
        head(x)
    # the plain EP ignores prefix tokens
    plain = _eval64(create_head("ep", 16, 4, num_queries=4))
    torch.testing.assert_close(plain(x, prefix=p), plain(x))


@pytest.mark.parametrize("m", [1, 4, 8])
def test_ep_equals_mhca_with_wk_folded_into_queries(m):
    """MHCA with M heads and one query == EP_M with u_j = W_K^(j)T q^(j) * sqrt(D) / sqrt(D/M)."""
    d = 32
    mhca = _randomize(_eval64(create_head("mhca", d, 6, num_heads=m)), std=0.3)
    ep = _eval64(create_head("ep", d, 6, num_queries=m))
    dh = d // m
    q = mhca.query[0].view(m, dh)
    wk = mhca.key.weight.view(m, dh, d)                         # head j's rows of W_K
    u = torch.einsum("mk,mkd->md", q, wk) / math.sqrt(dh) * math.sqrt(d)
    with torch.no_grad():
        ep.queries.copy_(u)
        ep.value.weight.copy_(mhca.value.weight)
    x = torch.randn(3, 10, d, dtype=torch.float64)
    x_bn = mhca.token_bn(x.transpose(1, 2)).transpose(1, 2)      # MHCA normalises its tokens first
    torch.testing.assert_close(mhca.forward_features(x), ep.forward_features(x_bn))


def test_ep_bad_options():
    with pytest.raises(ValueError, match="divisible by num_queries"):
        create_head("ep", 768, 10, num_queries=7)
    with pytest.raises(ValueError, match="divisible by d_out"):
        create_head("ep", 768, 10, d_out=5)
    with pytest.raises(ValueError, match="num_queries must be a positive int"):
        create_head("ep", 768, 10, num_queries=0)
