"""The vlm tests again on a CUDA device with LLaVA-1.5's real image shapes (336 px, 576 image tokens in a 24x24
grid) and a Qwen2-VL image of 448 px (a 16x16 token grid); the language models stay small (random weights)."""
import copy

import numpy as np
import pytest
import torch
from PIL import Image
from vlm_testlib import TwoPass, tiny_llava, tiny_qwen2_vl

from vizoo.vlm import carve, get_adapter, paint

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _no_tf32():
    """CARVE batches its two prompts (two images in one vision pass) where the uncached loop runs them one by
    one; with TF32 convolutions the two batch sizes can round differently at 1e-3, which these comparisons
    are not about."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _image(h, w):
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def llava():
    model, processor = tiny_llava(num_layers=8, image_size=336, patch_size=14, width=256)
    return model.cuda(), processor


def test_gpu_capture_equals_output_attentions(llava):
    model, processor = llava
    reference = copy.deepcopy(model)
    reference.set_attn_implementation({"text_config": "eager"})
    adapter = get_adapter(model)
    inputs = adapter.inputs(processor, [_image(400, 336)], "what is this ?")
    assert adapter.grid_positions(inputs).numel() == 576 and adapter.image_grid(inputs) == (24, 24)
    with adapter.capture(range(8)) as rows:
        ours = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    ref = reference.generate(**inputs, max_new_tokens=8, do_sample=False, output_attentions=True,
                             return_dict_in_generate=True)
    assert torch.equal(ours, ref.sequences)
    for step in range(8):
        for layer in range(8):
            torch.testing.assert_close(rows[layer][step], ref.attentions[step][layer][:, :, -1].float())


def test_gpu_paint_zero_is_plain(llava):
    model, processor = llava
    inputs = get_adapter(model).inputs(processor, [_image(400, 336)], "please describe the image in detail .")
    plain = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    with paint(model, processor, alpha=0.0, beta=0.0, gamma=0.0):
        assert torch.equal(model.generate(**inputs, max_new_tokens=32, do_sample=False), plain)


def test_gpu_paint_text_row_and_decode_path(llava):
    """The batched text row equals the sequential text-only pass, and the sdpa decode path with the boost equals
    eager attention with the boost (forced by capturing every layer), on 576 image tokens."""
    model, processor = llava
    adapter = get_adapter(model)
    inputs = adapter.inputs(processor, [_image(400, 336)], "please describe the image in detail .")
    kwargs = dict(max_new_tokens=16, do_sample=False, output_scores=True, return_dict_in_generate=True)
    with paint(model, processor, gamma=0.1):
        batched = model.generate(**inputs, **kwargs)
    with paint(model, processor, gamma=0.0):
        two_pass = model.generate(**inputs, logits_processor=[TwoPass(adapter, inputs, 0.1)], **kwargs)
    with paint(model, processor, gamma=0.1), adapter.capture(range(8)):
        eager = model.generate(**inputs, **kwargs)
    assert torch.equal(batched.sequences, two_pass.sequences)
    assert torch.equal(batched.sequences, eager.sequences)
    for ours, seq, ref in zip(batched.scores, two_pass.scores, eager.scores):
        torch.testing.assert_close(ours, seq, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_gpu_carve_cached_equals_uncached(llava, family):
    if family == "llava":
        (model, processor), image = llava, _image(400, 336)
    else:
        model, processor = tiny_qwen2_vl(num_layers=8, max_pixels=448 * 448)
        model, image = model.cuda(), _image(448, 448)
    kwargs = dict(layers=range(2, 8), max_new_tokens=16)
    cached = carve(model, processor, image, "what is this ?", **kwargs)
    uncached = carve(model, processor, image, "what is this ?", use_cache=False, **kwargs)
    assert cached.maps.shape[-2:] == ((24, 24) if family == "llava" else (16, 16))
    torch.testing.assert_close(cached.task_maps, uncached.task_maps, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(cached.general_maps, uncached.general_maps, rtol=1e-4, atol=1e-6)
    assert (cached.answer, cached.task_answer) == (uncached.answer, uncached.task_answer)


def test_gpu_carve_compiled_equals_cached(llava):
    """compile=True on a GPU: transformers compiles the decode step (CUDA graphs); the captured rows survive the
    graph replays (copied out after each step; rows left in CUDA-graph memory would all show the last step)
    and the result equals the uncompiled cached run. The first calls compile (a minute or so); a second
    question of another length must not break it."""
    model, processor = llava
    kwargs = dict(layers=range(2, 8), max_new_tokens=16)
    for question in ("what is this ?", "what color is the car on the left ?"):
        compiled = carve(model, processor, _image(400, 336), question, compile=True, **kwargs)
        cached = carve(model, processor, _image(400, 336), question, **kwargs)
        torch.testing.assert_close(compiled.task_maps, cached.task_maps, rtol=1e-3, atol=1e-6)
        torch.testing.assert_close(compiled.general_maps, cached.general_maps, rtol=1e-3, atol=1e-6)
        assert (compiled.answer, compiled.task_answer) == (cached.answer, cached.task_answer)
