"""vizoo.vlm.carve: each step against hand-made maps with known answers, and the whole method on tiny LLaVA
and Qwen2-VL models, KV-cached equal to the official uncached loop."""
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from vlm_testlib import tiny_llava, tiny_llava_next, tiny_qwen2_5_vl, tiny_qwen2_vl

from vizoo.vlm import carve, get_adapter
from vizoo.vlm.carve import (
    attention_maps,
    contrast,
    fuse,
    keep_regions,
    prompt_maps,
    refine_image,
    step_weights,
    top_p_mask,
)


def test_contrast_by_hand():
    task, general = torch.tensor([0.2, 0.1, 0.0]), torch.tensor([0.1, 0.4, 0.5])
    torch.testing.assert_close(contrast(task, general, lam=0.0), torch.tensor([2.0, 0.25, 0.0]))
    torch.testing.assert_close(contrast(task, general, lam=0.1), torch.tensor([1.0, 0.2, 0.0]))


def test_fuse_by_hand():
    maps = torch.arange(16, dtype=torch.float32).reshape(2, 2, 2, 2)  # (steps, layers, rows, cols)
    expected = 1 * (maps[0, 0] + maps[0, 1]) + 2 * (maps[1, 0] + maps[1, 1])  # w_t = t, layers summed
    torch.testing.assert_close(fuse(maps, (2, 2)), expected)
    torch.testing.assert_close(fuse(maps, (2, 2), "first"), maps[0].sum(0))
    torch.testing.assert_close(fuse(maps, (2, 2), "last"), maps[1].sum(0))
    assert step_weights(3).tolist() == [1.0, 2.0, 3.0]
    # bilinear upsampling of a one-token grid is constant; of a 1x2 grid it is a ramp with the two values at the
    # centres of the two halves
    torch.testing.assert_close(fuse(torch.full((1, 1, 1, 1), 3.0), (5, 7)), torch.full((5, 7), 3.0))
    ramp = fuse(torch.tensor([[[[0.0, 4.0]]]]), (1, 4))
    torch.testing.assert_close(ramp, torch.tensor([[0.0, 1.0, 3.0, 4.0]]))


def test_top_p_mask_by_hand():
    saliency = np.arange(100, dtype=float).reshape(10, 10)
    mask = top_p_mask(saliency, 0.2)
    assert mask.sum() == 20 and mask[8:].all()  # the values 80..99
    assert top_p_mask(saliency, 1.0).all()
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
            top_p_mask(saliency, bad)


def test_keep_regions_by_hand():
    mask = np.zeros((6, 6), bool)
    mask[0, 0:2] = True  # region A: 2 px
    mask[2:5, 0] = True  # region B: 3 px
    mask[0, 5] = mask[1, 4] = True  # C and D touch only diagonally: two regions under 4-connectivity
    mask[4:6, 3:6] = True  # region E: 6 px
    saliency = np.ones((6, 6))
    saliency[0, 5] = 100.0  # C carries the most attention, E the least per pixel
    saliency[4:6, 3:6] = 0.1
    kept = keep_regions(mask, saliency, p=0.2, regions=2)  # max(2, floor(0.2 * 5)) = 2: C (100) and B (3)
    assert kept.sum() == 4 and kept[0, 5] and kept[2:5, 0].all()
    by_size = keep_regions(mask, saliency, p=0.2, regions=2, strategy="size")  # E (6 px) and B (3 px)
    assert by_size.sum() == 9 and by_size[4:6, 3:6].all() and by_size[2:5, 0].all()
    assert keep_regions(mask, saliency, p=1.0, regions=1).sum() == mask.sum()  # floor(1 * 5) = all 5


def test_refine_image_by_hand():
    pixels = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    image = Image.fromarray(pixels)
    mask = np.zeros((8, 8), bool)
    mask[2:4, 1:5] = True  # a 4 x 2 box
    refined, box = refine_image(image, mask)
    assert box == (1, 2, 5, 4) and refined.size == (16, 8)  # scale max(8 / 4, 8 / 2) = 4
    corners = np.zeros((8, 8), bool)
    corners[0, 0] = corners[7, 7] = corners[3:5, 3:5] = True  # the box is the whole image: no resize
    refined, box = refine_image(image, corners)
    assert box == (0, 0, 8, 8) and np.array_equal(np.asarray(refined), pixels * corners[..., None])
    same, box = refine_image(image, np.ones((8, 8), bool))  # p = 1: the original image
    assert box == (0, 0, 8, 8) and np.array_equal(np.asarray(same), pixels)


@pytest.mark.parametrize("build", [pytest.param(tiny_llava, id="llava"), pytest.param(tiny_llava_next, id="llava_next"),
                                   pytest.param(tiny_qwen2_vl, id="qwen2_vl"),
                                   pytest.param(tiny_qwen2_5_vl, id="qwen2_5_vl")])
def test_carve_cached_equals_uncached(build):
    model, processor = build()
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    kwargs = dict(layers=[0, 1, 2], max_new_tokens=4, top_p=0.3, regions=1)
    cached = carve(model, processor, image, "what is this ?", **kwargs)
    uncached = carve(model, processor, image, "what is this ?", use_cache=False, **kwargs)
    rows, cols = (4, 4) if "llava" in model.config.model_type else (2, 3)  # 40x50 px: Qwen resizes to 56x84
    assert cached.maps.shape == (4, 3, rows, cols) and cached.saliency.shape == (40, 50)
    torch.testing.assert_close(cached.task_maps, uncached.task_maps, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cached.general_maps, uncached.general_maps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cached.saliency, uncached.saliency, rtol=1e-4)
    assert np.array_equal(cached.mask, uncached.mask) and cached.box == uncached.box
    assert (cached.answer, cached.task_answer, cached.general_answer) == \
        (uncached.answer, uncached.task_answer, uncached.general_answer)
    torch.testing.assert_close(cached.maps, cached.task_maps / (cached.general_maps + 1e-8))
    top = top_p_mask(cached.saliency, 0.3)  # regions=1 keeps one 4-connected region of the top 30%
    assert cached.mask.any() and not (cached.mask & ~top).any() and ndimage.label(cached.mask)[1] == 1
    if model.config.model_type == "llava":  # the final pass does not change the mask; the general pass is reused
        refined_only = carve(model, processor, image, "what is this ?", final="refined", general=uncached, **kwargs)
        assert np.array_equal(refined_only.mask, cached.mask) and refined_only.general_maps is uncached.general_maps
        with pytest.raises(ValueError, match="same image"):
            carve(model, processor, image.crop((0, 0, 30, 30)), "what ?", general=cached, **kwargs)


def test_batched_passes_end_at_each_rows_eos():
    """Two prompts of different lengths as rows of one cached generation: each row's maps and tokens equal its
    own uncached loop, and a row that meets EOS early keeps only its own steps."""
    model, processor = tiny_llava()
    adapter = get_adapter(model)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    texts = ("what is this ?", "write a general description of the image")
    prompts = [adapter.inputs(processor, [image], text) for text in texts]
    assert prompts[0]["input_ids"].shape[1] != prompts[1]["input_ids"].shape[1]  # one row is padded
    free = prompt_maps(adapter, prompts, [0, 2], 6)
    task, general = free[0][1][0].tolist(), free[1][1][0].tolist()
    eos = next(t for t in task[1:] if t not in general)  # ends the task row only
    model.generation_config.eos_token_id = eos
    try:
        batched = prompt_maps(adapter, prompts, [0, 2], 6)
        single = [attention_maps(adapter, p, [0, 2], 6, use_cache=False) for p in prompts]
    finally:
        model.generation_config.eos_token_id = None
    assert batched[0][1].shape[1] == task.index(eos) + 1 < batched[1][1].shape[1]
    for (maps, ids), (ref_maps, ref_ids) in zip(batched, single):
        assert torch.equal(ids, ref_ids) and maps.shape == (ids.shape[1], 2, 4, 4)
        torch.testing.assert_close(maps, ref_maps, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("build", [pytest.param(tiny_llava, id="llava"), pytest.param(tiny_qwen2_vl, id="qwen2_vl")])
def test_carve_static_cache_equals_dynamic(build):
    """compile=True runs a static KV cache (compiled on a GPU only): the captured rows then span the whole
    cache, padded keys included; the maps, mask and answers equal the default path's."""
    model, processor = build()
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    kwargs = dict(layers=[0, 2], max_new_tokens=4, top_p=0.3, regions=1)
    dynamic = carve(model, processor, image, "what is this ?", **kwargs)
    static = carve(model, processor, image, "what is this ?", compile=True, **kwargs)
    torch.testing.assert_close(static.task_maps, dynamic.task_maps, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(static.general_maps, dynamic.general_maps, rtol=1e-5, atol=1e-6)
    assert np.array_equal(static.mask, dynamic.mask)
    assert (static.answer, static.task_answer, static.general_answer) == \
        (dynamic.answer, dynamic.task_answer, dynamic.general_answer)


def test_carve_bad_input(tmp_path):
    model, processor = tiny_llava()
    image = Image.new("RGB", (30, 30))
    with pytest.raises(ValueError, match="question is empty"):
        carve(model, processor, image, "   ", layers=[0])
    with pytest.raises(ValueError, match="top_p"):
        carve(model, processor, image, "what ?", layers=[0], top_p=0.0)
    with pytest.raises(ValueError, match="needs use_cache"):
        carve(model, processor, image, "what ?", layers=[0], compile=True, use_cache=False)
    with pytest.raises(ValueError, match="3 decoder layers"):
        carve(model, processor, image, "what ?")  # the default layers 20..25 do not exist in a 3-layer model
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="does not decode"):
        carve(model, processor, broken, "what ?", layers=[0])
    with pytest.raises(FileNotFoundError):
        carve(model, processor, tmp_path / "missing.png", "what ?", layers=[0])
