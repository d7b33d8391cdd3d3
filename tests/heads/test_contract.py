"""Properties every registered head must have: shapes, macs() vs FlopCounterMode, no dead parameters,
permutation invariance (or being listed as order-dependent), a batch of one, input validation."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vizoo.heads import create_head, get_head_class, head_options, list_heads

D, C, GRID, P = 64, 5, (4, 4), 2
N = GRID[0] * GRID[1]


def _variants():
    out = []
    for name in list_heads():
        out.append((name, {}))
        if "use_prefix" in head_options(name):
            out.append((name, {"use_prefix": True}))
    out += [("linear", {"pool": "cls"}), ("linear", {"pool": "avg"}), ("mhca", {"num_queries": 3}),
            ("ep", {"num_queries": 4, "d_out": 4}), ("abmilp", {"self_attention": "map"}),
            ("abmilp", {"self_attention": "none", "depth": 1, "activation": "relu"}),
            ("clip", {"feat_size": 4}), ("mhca", {"token_norm": False})]
    return out


VARIANTS = _variants()
IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in VARIANTS]


def _inputs(b=2, n=N, dtype=torch.float32):
    return torch.randn(b, n, D, dtype=dtype), torch.randn(b, P, D, dtype=dtype)


def _randomize(head, std=0.3):
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, std)
    return head


def _perturb(head, std=0.1):
    """Move every parameter off its init (zero queries, LayerScale 1e-5 and zero biases can hide structure)
    without saturating activations the way fully random weights do."""
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * std)
    return head


@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_forward_shape_and_batch_of_one(name, kw):
    head = create_head(name, D, C, **kw)
    x, p = _inputs(b=3)
    assert head(x, prefix=p, grid=GRID).shape == (3, C)
    head.eval()   # a batch of one (the official simpool/esimpool/cae/cbam squeeze it away and fail)
    assert head(x[:1], prefix=p[:1], grid=GRID).shape == (1, C)
    assert all(t.device.type == "cpu" for t in head.parameters())


@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_macs_equal_flop_counter(name, kw):
    """macs() is exactly FlopCounterMode's count / 2 for one sample (matmuls and convs only)."""
    head = create_head(name, D, C, **kw).eval()
    for n, grid in ((N, GRID), (10, (2, 5))):
        x, p = _inputs(b=1, n=n)
        with FlopCounterMode(display=False) as counter:
            head(x, prefix=p, grid=grid)
        flops = counter.get_total_flops()
        assert flops % 2 == 0
        assert head.macs(n, P) == flops // 2, (name, kw, n)


@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_every_parameter_element_gets_gradient(name, kw):
    """Train mode (the head's BatchNorm uses batch statistics, as in training), one backward.

    A parameter whose gradient is zero for every input is dead weight; vizoo leaves those out (see
    vizoo/heads/__init__.py), and this test finds any that remain.
    """
    head = _perturb(create_head(name, D, C, **kw).double()).train()
    x, p = _inputs(b=16, dtype=torch.float64)   # enough samples that no ReLU unit is off for all of them
    head(x, prefix=p, grid=GRID).pow(2).sum().backward()
    for pname, param in head.named_parameters():
        assert param.grad is not None, pname
        dead = (param.grad == 0).sum().item()
        assert dead == 0, f"{name}: {dead} of {param.numel()} entries of {pname} got no gradient"


@pytest.mark.parametrize("name", list_heads())
def test_permutation_invariance(name):
    head = _randomize(create_head(name, D, C).double()).eval()
    x, _ = _inputs(b=2, dtype=torch.float64)
    perm = torch.randperm(N)
    y, y_perm, y_other = head(x), head(x[:, perm]), head(torch.randn_like(x))
    change = (y - y_perm).abs().max() / (y - y_other).abs().max()
    if get_head_class(name).permutation_invariant:
        assert change < 1e-10
    else:
        assert change > 1e-3


def test_order_dependent_heads_are_listed():
    dependent = {n for n in list_heads() if not get_head_class(n).permutation_invariant}
    assert dependent == {"clip", "cbam"}
    assert {n for n in list_heads() if get_head_class(n).needs_grid} == {"clip", "cbam"}


# ---- where the official heads fail -------------------------------------------------------------------

def test_esimpool_works_when_12_does_not_divide_d():
    head = create_head("esimpool", 1024, 3).eval()
    assert head.num_heads == 8
    assert head(torch.randn(2, 9, 1024)).shape == (2, 3)
    assert create_head("esimpool", 768, 3).num_heads == 12
    with pytest.raises(ValueError, match="divisible by num_heads"):
        create_head("esimpool", 1024, 3, num_heads=12)


@pytest.mark.parametrize("grid", [(14, 14), (16, 16), (10, 12), (3, 7)])
def test_clip_on_any_grid(grid):
    head = create_head("clip", D, C).eval()
    n = grid[0] * grid[1]
    assert head(torch.randn(2, n, D), grid=grid).shape == (2, C)
    assert head.position_embedding(grid).shape == (n + 1, D)
    if grid == (14, 14):
        assert head.position_embedding(grid) is head.pos_embed


def test_dolg_needs_no_grid_and_pools_prefix_tokens():
    head = create_head("dolg", D, C, use_prefix=True).eval()
    assert head(torch.randn(2, 7, D), prefix=torch.randn(2, 1, D)).shape == (2, C)   # 8 tokens, not square


# ---- bad input ---------------------------------------------------------------------------------------

def test_unknown_name_lists_close_names():
    with pytest.raises(ValueError, match=r"unknown probe head 'simpol'.*Did you mean 'simpool'"):
        create_head("simpol", D, C)
    with pytest.raises(ValueError, match="esimpool"):
        create_head("simpol", D, C)


def test_unknown_option_lists_accepted_ones():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['queries'\].*num_queries=32"):
        create_head("ep", D, C, queries=8)
    with pytest.raises(ValueError, match="unknown option"):
        create_head("clip", D, C, use_prefix=True)     # the official clip_all fails; vizoo does not offer it


@pytest.mark.parametrize("name", ["linear", "ep", "cait"])
def test_bad_dims(name):
    with pytest.raises(ValueError, match="in_dim must be a positive int"):
        create_head(name, 0, C)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        create_head(name, D, 2.5)


@pytest.mark.parametrize("name", list_heads())
def test_wrong_width_and_rank_are_errors(name):
    head = create_head(name, D, C)
    with pytest.raises(ValueError, match=f"built for in_dim={D}"):
        head(torch.randn(2, N, D + 8), prefix=torch.randn(2, 1, D + 8))
    with pytest.raises(ValueError, match=r"tokens must be a tensor \[B, N, D\]"):
        head(torch.randn(2, D))


@pytest.mark.parametrize("name,kw", [(n, kw) for n, kw in VARIANTS if kw.get("use_prefix") or kw.get("pool") == "cls"])
def test_missing_prefix_is_an_error(name, kw):
    head = create_head(name, D, C, **kw)
    assert head.uses_prefix == "required"
    with pytest.raises(ValueError, match="needs the prefix tokens"):
        head(torch.randn(2, N, D))
    with pytest.raises(ValueError, match=r"prefix must be a tensor \[B=2, P, D=64\]"):
        head(torch.randn(2, N, D), prefix=torch.randn(3, 1, D))
    with pytest.raises(ValueError, match="needs prefix tokens"):
        head.macs(N)


@pytest.mark.parametrize("name", ["clip", "cbam"])
def test_grid_heads_need_a_grid_for_non_square_n(name):
    head = create_head(name, D, C)
    with pytest.raises(ValueError, match="N=12 tokens is not a square"):
        head(torch.randn(2, 12, D))
    with pytest.raises(ValueError, match=r"grid \(3, 5\) does not match N=12"):
        head(torch.randn(2, 12, D), grid=(3, 5))
    assert head(torch.randn(2, 12, D), grid=(3, 4)).shape == (2, C)


@pytest.mark.parametrize("name", list_heads())
def test_class_attributes_describe_the_default_configuration(name):
    head = create_head(name, D, C)
    cls = get_head_class(name)
    assert (head.uses_prefix, head.needs_grid, head.permutation_invariant) == \
        (cls.uses_prefix, cls.needs_grid, cls.permutation_invariant)
