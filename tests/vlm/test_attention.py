"""vizoo.vlm.attention: the adapters' image spans and grids, capture against transformers' own eager
attention, and the pre-softmax boost."""
import copy
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from vlm_testlib import tiny_llava, tiny_llava_next, tiny_qwen2_5_vl, tiny_qwen2_vl

from vizoo.vlm.attention import _boost_last_row, _boosted_decode, _decode_weight, _layer_weight, get_adapter

FAMILIES = [pytest.param(tiny_llava, id="llava"), pytest.param(tiny_llava_next, id="llava_next"),
            pytest.param(tiny_qwen2_vl, id="qwen2_vl"), pytest.param(tiny_qwen2_5_vl, id="qwen2_5_vl")]


def _image(h=40, w=50, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("build", FAMILIES)
def test_captured_rows_equal_output_attentions(build, caplog):
    model, processor = build()
    reference = copy.deepcopy(model)
    reference.set_attn_implementation({"text_config": "eager"})
    with caplog.at_level(logging.WARNING):
        adapter = get_adapter(model)
    assert "switched it to 'vizoo_eager'" in caplog.text  # models built from configs default to sdpa
    assert model.config.vision_config._attn_implementation != "vizoo_eager"  # the vision tower is left alone
    inputs = adapter.inputs(processor, [_image()], "what is this ?")
    with adapter.capture([0, 2]) as rows:
        ours = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    ref = reference.generate(**inputs, max_new_tokens=4, do_sample=False, output_attentions=True,
                             return_dict_in_generate=True)
    assert torch.equal(ours, ref.sequences)
    assert sorted(rows) == [0, 2] and all(len(r) == 4 for r in rows.values())
    for step in range(4):
        for layer in (0, 2):
            expected = ref.attentions[step][layer][:, :, -1, :].float()
            torch.testing.assert_close(rows[layer][step], expected, rtol=0, atol=0)
    # outside the capture block nothing is recorded and logits equal eager's
    torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits, rtol=0, atol=0)
    assert all(len(r) == 4 for r in rows.values())  # the closed block recorded nothing more
    model.set_attn_implementation({"text_config": "sdpa"})  # would hide the scores: the next block switches back
    with caplog.at_level(logging.WARNING), adapter.capture([0]) as again:
        model(**inputs)
    assert len(again[0]) == 1 and model.config.text_config._attn_implementation == "vizoo_eager"


def test_image_span_and_grid():
    model, processor = tiny_llava()
    adapter = get_adapter(model)
    inputs = adapter.inputs(processor, [_image()], "what is this ?")
    ids = inputs["input_ids"][0]
    positions = adapter.grid_positions(inputs)
    assert adapter.image_grid(inputs) == (4, 4)  # 28 px / patch 7
    assert positions.tolist() == (ids == model.config.image_token_id).nonzero().flatten().tolist()

    model, processor = tiny_llava_next()  # base image (a 4x4 grid) first, then the any-resolution tiles
    adapter = get_adapter(model)
    inputs = adapter.inputs(processor, [_image()], "what is this ?")
    image = (inputs["input_ids"][0] == model.config.image_token_id).nonzero().flatten()
    assert image.numel() > 16 and adapter.grid_positions(inputs).tolist() == image[:16].tolist()

    model, processor = tiny_qwen2_vl()
    adapter = get_adapter(model)
    inputs = adapter.inputs(processor, [_image(40, 50)], "what is this ?")
    t, h, w = inputs["image_grid_thw"][0].tolist()
    assert adapter.image_grid(inputs) == (h // 2, w // 2) == (2, 3)  # 56x84 px in 14 px patches, 2x2 merge
    ids = inputs["input_ids"][0]
    start = (ids == model.config.vision_start_token_id).nonzero().item()
    end = (ids == model.config.vision_end_token_id).nonzero().item()
    assert positions.numel() == 16 and adapter.grid_positions(inputs).tolist() == list(range(start + 1, end))
    text = adapter.text_only(inputs)["input_ids"][0]
    assert text.numel() == ids.numel() - 6 - 2 and not adapter.marker_mask(text).any()


def test_boost_last_row_by_hand():
    scores = torch.tensor([[[[1.0, 1.0, 1.0], [2.0, -1.0, 0.5]], [[1.0, 1.0, 1.0], [2.0, -1.0, 0.5]]]])  # 1,2,2,3
    weight = _layer_weight(torch.tensor([[0.5, 0.5]]), torch.tensor([1.0, 0.0]), torch.float32, scores.device)
    assert weight.shape == (1, 2, 2)
    out = _boost_last_row(scores.clone(), weight)
    assert out[0, 0, 1].tolist() == [3.0, -0.5, 0.5]  # z + 0.5|z| on keys 0, 1; key 2 beyond the weight
    assert torch.equal(out[0, 1], scores[0, 1]) and torch.equal(out[:, :, 0], scores[:, :, 0])


def test_boosted_decode_by_hand():
    """The decode-step path (sdpa with the boost as a bias) against softmax(z + mask + w|z|) v written out."""
    g = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 3, n, 8, generator=g) for n in (1, 7, 7))
    mask = torch.zeros(2, 1, 1, 7)
    mask[1, ..., :2] = torch.finfo(torch.float32).min  # row 1 is left-padded by two keys
    key_weight, heads, scaling = torch.rand(2, 5, generator=g), torch.tensor([1.0, 0.5, 0.0]), 8 ** -0.5
    key_weight[1, :2] = 0.0  # padding is never boosted
    weight = _decode_weight(key_weight, heads, scaling, 9, torch.float32, query.device)
    assert weight.shape == (2, 3, 1, 9) and not weight[..., 5:].any()
    out = _boosted_decode(query, key, value, mask, scaling, weight)
    z = query @ key.transpose(2, 3) * scaling
    w = torch.zeros(2, 3, 1, 7)
    w[..., :5] = key_weight[:, None, None, :] * heads[None, :, None, None]  # generated keys 5, 6: no boost
    expected = torch.softmax(z + mask + w * z.abs(), -1) @ value
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_boosted_decode(query, key, value, None, scaling, weight),
                               (torch.softmax(z + w * z.abs(), -1) @ value).transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_boost_raises_attention_on_chosen_heads_and_keys():
    model, processor = tiny_llava()
    adapter = get_adapter(model)
    inputs = adapter.inputs(processor, [_image()], "what is this ?")
    image = adapter.image_mask(inputs["input_ids"]).float()
    with adapter.capture([0]) as plain:
        model(**inputs)
    heads = torch.tensor([1.0, 0.0, 0.0, 0.0])
    with adapter.capture([0]) as boosted, adapter.boost([0], 0.5 * image, {0: heads}):
        model(**inputs)
    before, after = plain[0][0][0], boosted[0][0][0]  # (heads, keys) of the one forward pass
    mass = lambda row: (row * image[0]).sum(-1)  # noqa: E731
    assert mass(after)[0] > mass(before)[0]
    torch.testing.assert_close(after[1:], before[1:], rtol=0, atol=0)  # other heads untouched in layer 0


def test_bad_input():
    class Other(torch.nn.Module):
        config = type("C", (), {"model_type": "paligemma"})()

    with pytest.raises(ValueError, match="supported model types: llava, llava_next, qwen2_vl, qwen2_5_vl"):
        get_adapter(Other())
    model, processor = tiny_llava()
    adapter = get_adapter(model)
    text_only = processor(text=["USER: what is this ? ASSISTANT:"], return_tensors="pt")
    with pytest.raises(ValueError, match="no image tokens"):
        adapter.grid_positions(dict(text_only))
    with pytest.raises(ValueError, match="3 decoder layers"):
        with adapter.capture([1, 5]):
            pass
