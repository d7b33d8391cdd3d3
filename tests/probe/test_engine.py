"""The probing engine: lr selection on validation, prefix checks, bad inputs, the optimizers, one pass for all."""


import pytest
import torch

from vizoo.probe.cache import CachedSplit
from vizoo.probe.engine import HeadSpec, TrainConfig, build_optimizer
from vizoo.probe.pipeline import train_probes as _train


def train_probes(train, val, test, layer, heads, num_classes, config):
    splits = dict(train=train, val=val, **({"test": test} if test is not None else {}))
    return _train(splits, [layer], heads, num_classes, config)


def make_split(n, seed, num_prefix=0, num_classes=4, dim=16, tokens=9):
    """Tokens whose mean points along a class direction (linearly separable), plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    directions = torch.eye(dim)[:num_classes] * 3.0
    x = torch.randn(n, tokens, dim, generator=g) + directions[labels][:, None, :]
    prefix = x.mean(1, keepdim=True).expand(n, num_prefix, dim).contiguous()
    return CachedSplit([5], {5: x.half()}, {5: prefix.half()}, {5: (3, 3)}, labels, {})


def test_selection_picks_the_good_lr_over_lr_zero():
    train, val, test = make_split(200, 0), make_split(80, 1), make_split(80, 2)
    config = TrainConfig(epochs=4, batch_size=32, lrs=[0.0, 1e-2], seed=0)
    (linear, ep) = train_probes(
        train,
        val,
        test,
        5,
        [HeadSpec("linear"), HeadSpec("ep", {"num_queries": 4})],
        4,
        config
    )
    for result in (linear, ep):
        assert result.lr == pytest.approx(1e-2)
        by_lr = {s["lr"]: s["val_top1"] for s in result.sweep}
        assert by_lr[1e-2] > 85.0 and by_lr[1e-2] > by_lr[0.0] + 30  # lr 0 never learns
        assert result.test_top1 > 85.0 and result.test_top5 == 100.0 and result.top5_k == 4
        assert len(result.sweep[0]["val_top1_per_epoch"]) == 4
    assert linear.params == 16 * 4 + 4 and linear.macs == 64
    assert ep.label == "ep(num_queries=4)"


def test_selection_uses_validation_not_test():
    """Swap the labels of the test split: the choice (made on validation) must not change."""
    train, val, test = make_split(120, 0), make_split(60, 1), make_split(60, 2)
    flipped = CachedSplit(test.layers, test.tokens, test.prefix, test.grids, (test.labels + 1) % 4, {})
    config = TrainConfig(epochs=2, batch_size=32, lrs=[1e-3, 1e-2])
    a = train_probes(train, val, test, 5, [HeadSpec("linear")], 4, config)[0]
    b = train_probes(train, val, flipped, 5, [HeadSpec("linear")], 4, config)[0]
    assert (a.lr, a.best_epoch, a.val_top1) == (b.lr, b.best_epoch, b.val_top1)
    assert b.test_top1 < 30.0 < a.test_top1


def test_prefix_heads_use_the_class_token_when_present():
    train, val = make_split(64, 0, num_prefix=1), make_split(32, 1, num_prefix=1)
    (r,) = train_probes(
        train,
        val,
        None,
        5,
        [HeadSpec("linear", {"pool": "cls"})],
        4,
        TrainConfig(epochs=2, batch_size=32, lrs=[1e-2])
    )
    assert r.test_top1 is None and r.val_top1 > 50.0


def test_head_that_needs_prefix_tokens_on_patch_only_features():
    train, val = make_split(32, 0), make_split(16, 1)
    with pytest.raises(ValueError, match="needs prefix tokens.*pool='avg'"):
        train_probes(
            train,
            val,
            None,
            5,
            [HeadSpec("linear", {"pool": "cls"})],
            4,
            TrainConfig(epochs=1),
        )


def test_bad_inputs():
    train, val = make_split(32, 0), make_split(16, 1)
    with pytest.raises(ValueError, match="unknown probe head 'epp'.*Did you mean 'ep'"):
        HeadSpec("epp")
    one_class = CachedSplit(
        [5], train.tokens, train.prefix, train.grids, torch.zeros(32, dtype=torch.long), {}
    )
    with pytest.raises(ValueError, match="only 1 class"):
        train_probes(one_class, val, None, 5, [HeadSpec("linear")], 4, TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="at least 2 classes"):
        train_probes(train, val, None, 5, [HeadSpec("linear")], 1, TrainConfig(epochs=1))
    with pytest.raises(ValueError, match=r"layers \[3\] are not in"):
        train_probes(train, val, None, 3, [HeadSpec("linear")], 4, TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="lrs must be"):
        train_probes(train, val, None, 5, [HeadSpec("linear")], 4, TrainConfig(lrs=[]))
    with pytest.raises(ValueError, match="unknown optimizer"):
        train_probes(
            train, val, None, 5, [HeadSpec("linear")], 4, TrainConfig(optimizer="adam")
        )
    with pytest.raises(ValueError, match="unknown option"):
        train_probes(train, val, None, 5, [HeadSpec("ep", {"queries": 3})], 4, TrainConfig())


def test_lars_matches_hand_computation():
    """timm's LARS as the engine sets it up equals the MAE linear probe's LARS (weight decay 0, as the probing
    recipes use): matrices scaled by eta ||w|| / ||g||, vectors neither decayed nor scaled, heavy-ball momentum."""
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = build_optimizer("lars", [dict(params=[w, b], lr=0.5)], weight_decay=0.0)
    w.grad = torch.tensor([[0.0, 2.0]])
    b.grad = torch.tensor([2.0])
    opt.step()
    ratio = 0.001 * 5.0 / 2.0
    torch.testing.assert_close(w.detach(), torch.tensor([[3.0, 4.0 - 0.5 * ratio * 2.0]]))
    torch.testing.assert_close(b.detach(), torch.tensor([0.0]))  # vectors: no trust ratio
    b.grad = torch.tensor([2.0])
    opt.step()
    torch.testing.assert_close(b.detach(), torch.tensor([0.0 - 0.5 * (0.9 * 2.0 + 2.0)]))  # momentum


def test_sgd_is_plain_momentum_and_groups_keep_their_lr():
    w1, w2 = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2, 2))
    opt = build_optimizer("sgd", [dict(params=[w1], lr=0.1), dict(params=[w2], lr=1.0)], weight_decay=0.0)
    for _ in range(2):
        w1.grad, w2.grad = torch.ones(2, 2), torch.ones(2, 2)
        opt.step()
    # no Nesterov: steps of g then (0.9 g + g)
    torch.testing.assert_close(w1.detach(), torch.full((2, 2), 1 - 0.1 * (1 + 1.9)))
    torch.testing.assert_close(w2.detach(), torch.full((2, 2), 1 - 1.0 * (1 + 1.9)))


def test_instances_train_independently_in_one_pass():
    """The summed loss gives each head exactly its own gradient: a head trained with others ends where it ends
    when trained alone (same seed, same batches)."""
    train, val = make_split(96, 0), make_split(32, 1)
    config = TrainConfig(epochs=2, batch_size=32, lrs=[1e-2], device="cpu")
    alone = train_probes(train, val, None, 5, [HeadSpec("ep", {"num_queries": 2})], 4, config)[0]
    together = train_probes(train, val, None, 5, [HeadSpec("ep", {"num_queries": 2}), HeadSpec("linear")], 4,
                            config)[0]
    assert alone.sweep[0]["val_top1_per_epoch"] == together.sweep[0]["val_top1_per_epoch"]
    assert alone.val_loss == pytest.approx(together.val_loss, rel=1e-5)


@pytest.mark.parametrize("n,batch", [(75, 8), (64, 16), (17, 4)])
def test_epoch_batches_split_ranks_like_ddp_needs(n, batch):
    """Training: every rank takes the same number of steps, together they cover every sample (padding repeats a
    few; a last batch of one sample per rank is dropped), the order changes with the epoch; evaluation: every
    sample exactly once over the ranks."""
    from vizoo.probe.sources import EpochBatches

    world = 3
    train = [EpochBatches(n, batch, True, seed=1, world=world, rank=r) for r in range(world)]
    assert len({len(s) for s in train}) == 1
    seen = [i for s in train for b in s for i in b]
    dropped = world if -(-n // world) % batch == 1 else 0
    assert len(set(range(n)) - set(seen)) <= dropped and len(seen) <= n + world
    first = list(train[0])
    train[0].set_epoch(1)
    assert list(train[0]) != first
    evals = [EpochBatches(n, batch, False, world=world, rank=r) for r in range(world)]
    scored = sorted(i for s in evals for b in s for i in b)
    assert scored == list(range(n))
