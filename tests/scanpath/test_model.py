"""OAT: teacher-forcing targets, the fitted positional code, padding and causality invariances, and batched
greedy / sampled generation against one-scene-at-a-time decoding."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vizoo.scanpath.data import collate_scenes, scene_tensors
from vizoo.scanpath.model import OAT, fit_positional_table, next_object_targets
from vizoo.scanpath.synthetic import make_scenes

TINY = dict(crop_size=(32, 32), appearance_dim=32, position_dim=32, num_heads=2, ffn_dim=64, encoder_layers=1,
            decoder_layers=2, max_steps=24)


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(5, seed=11, fill=0.7)  # different object counts: batches are padded


def _batch(scenes, crop=(32, 32)):
    return collate_scenes([dict(scene_tensors(s, crop), scanpath=torch.tensor(s.scanpaths[0])) for s in scenes])


def test_next_object_targets_hand_case():
    targets = next_object_targets(torch.tensor([[4, 2, 2], [0, -1, -1]]))
    assert targets.tolist() == [[5, 3, 3, 0], [1, 0, -100, -100]]


def test_fitted_positional_table_follows_a_gaussian_of_distance():
    table = fit_positional_table(12, 30, sigma=2.0)
    unit = F.normalize(table, dim=1)
    index = torch.arange(12.0)
    goal = torch.exp(-((index[:, None] - index[None]) ** 2) / 8)
    assert (unit @ unit.T - goal).abs().max() < 0.01
    norms = table.norm(dim=1)
    assert (norms.max() - norms.min()) / norms.mean() < 0.05
    assert torch.equal(table, fit_positional_table(12, 30, sigma=2.0))  # seeded


def test_batched_logits_equal_one_scene_at_a_time(scenes):
    model = OAT(**TINY).eval()
    batch = _batch(scenes)
    logits = model(batch)
    for b, scene in enumerate(scenes):
        alone = model(_batch([scene]))[0]
        n, t = len(scene.boxes), len(scene.scanpaths[0])
        torch.testing.assert_close(logits[b, : t + 1, : n + 1], alone, atol=2e-5, rtol=1e-4)
        assert (logits[b, :, n + 1:] <= torch.finfo(logits.dtype).min / 2).all()  # padding objects never win


def test_logits_are_causal(scenes):
    model = OAT(**TINY).eval()
    batch = _batch(scenes[:1])
    changed = dict(batch, scanpath=batch["scanpath"].clone())
    changed["scanpath"][0, -1] = (changed["scanpath"][0, -1] + 1) % len(scenes[0].boxes)
    a, b = model(batch), model(changed)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_greedy_generation_batched_equals_single_and_follows_argmax(scenes):
    torch.manual_seed(3)
    model = OAT(**TINY).eval()
    batch = _batch(scenes)
    paths = model.generate(batch, max_length=8)
    for b, scene in enumerate(scenes):
        assert paths[b] == model.generate(_batch([scene]), max_length=8)[0]
        assert 1 <= len(paths[b]) <= 8  # stopping is not allowed at step 1
        # teacher-forcing the greedy path reproduces it: each step's argmax is the next fixation (then stop)
        logits = model(_batch([scene]) | {"scanpath": torch.tensor([paths[b]])})[0]
        logits[0, 0] = float("-inf")
        expected = [i + 1 for i in paths[b]] + ([0] if len(paths[b]) < 8 else [])
        assert logits.argmax(-1).tolist()[: len(expected)] == expected


def test_sampled_generation_is_seeded_and_valid(scenes):
    model = OAT(**TINY).eval()
    batch = _batch(scenes)
    def draw():
        return model.generate(batch, 6, sample=True, generator=torch.Generator().manual_seed(5))
    first = draw()
    assert first == draw()
    for path, scene in zip(first, scenes):
        assert 1 <= len(path) <= 6 and all(0 <= i < len(scene.boxes) for i in path)
    with pytest.raises(ValueError, match="temperature > 0"):
        model.generate(batch, 6, sample=True, temperature=0)


def test_training_steps_reduce_the_loss(scenes):
    model = OAT(**TINY)
    batch = _batch(scenes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_timm_appearance_encoder(scenes):
    model = OAT(appearance="test_resnet", **TINY)
    batch = _batch(scenes[:2])
    assert model(batch).shape == (2, batch["scanpath"].shape[1] + 1, 1 + batch["valid"].shape[1])
    model.loss(batch).backward()
    assert all(p.grad is not None for p in model.appearance.backbone.parameters())


def test_bad_input():
    with pytest.raises(ValueError, match="unknown appearance backbone 'resnet_nope'"):
        OAT(appearance="resnet_nope", **TINY)
    with pytest.raises(ValueError, match="at least 29x29 pixels"):
        OAT(**dict(TINY, crop_size=(24, 24)))
    assert OAT(**dict(TINY, crop_size=(150, 93))).appearance.fc.in_features == 1440  # OAT's FC(1440 -> 256)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        OAT(**dict(TINY, num_heads=5))
    model = OAT(**TINY)
    batch = _batch(make_scenes(1, seed=0))
    with pytest.raises(ValueError, match="every target must index a valid object"):
        model(dict(batch, target=torch.tensor([99])))


@pytest.mark.gpu
def test_oat_full_size_on_cuda_matches_cpu():
    """OAT's own widths and crops (150x93) on the GPU: logits match the CPU, batched greedy decoding is the same
    as one scene at a time, and a bf16 autocast training step is finite."""
    torch.manual_seed(0)
    scenes = make_scenes(6, seed=4, fill=0.7)
    batch = _batch(scenes, (150, 93))
    model = OAT(crop_size=(150, 93)).eval()
    cpu = model(batch)
    model.cuda()
    gpu_batch = {k: v.cuda() for k, v in batch.items()}
    torch.testing.assert_close(model(gpu_batch).cpu(), cpu, atol=1e-3, rtol=1e-3)
    paths = model.generate(gpu_batch, max_length=10)
    for b, scene in enumerate(scenes):
        single = {k: v.cuda() for k, v in _batch([scene], (150, 93)).items()}
        assert paths[b] == model.generate(single, max_length=10)[0]
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model.loss(gpu_batch)
    loss.backward()
    assert torch.isfinite(loss)
