"""vizoo.vlm.paint: PAINT is the plain model at zero strength, selects tokens as specified, boosts the chosen
image tokens, and its text-only correction equals the formula computed without a cache."""
import importlib
import math

import numpy as np
import pytest
import torch
from PIL import Image
from vlm_testlib import TwoPass, tiny_llava, tiny_llava_next, tiny_qwen2_vl

from vizoo.vlm import get_adapter, paint
from vizoo.vlm.paint import select_tokens


@pytest.fixture(scope="module")
def llava():
    model, processor = tiny_llava(num_layers=4)
    adapter = get_adapter(model)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    return model, processor, adapter.inputs(processor, [image], "what is this ?")


def test_zero_strength_generates_the_plain_tokens(llava):
    model, processor, inputs = llava
    plain = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    with paint(model, processor, alpha=0.0, beta=0.0, gamma=0.0):
        painted = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert torch.equal(painted, plain)
    assert "generate" not in model.__dict__  # the block restored the model


def test_llava_next_zero_strength_and_selection():
    model, processor = tiny_llava_next()
    inputs = get_adapter(model).inputs(processor, [Image.new("RGB", (50, 40), (90, 20, 200))], "what is this ?")
    plain = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    with paint(model, processor, alpha=0.0, beta=0.0, gamma=0.0) as painter:
        assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False), plain)
    selection = painter.last["selection"]
    assert selection.first_layer.numel() == 16 and selection.local.numel() + selection.summary.numel() >= 1
    with paint(model, processor, gamma=0.3):  # the text row beside an any-resolution image
        batched = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    with paint(model, processor, gamma=0.0):
        two_pass = model.generate(**inputs, max_new_tokens=4, do_sample=False,
                                  logits_processor=[TwoPass(get_adapter(model), inputs, 0.3)])
    assert torch.equal(batched, two_pass)


def test_select_tokens_by_hand():
    first = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.05, 0.7])
    penultimate = torch.tensor([1.0, 1.1, 0.9, 1.0, 10.0, 1.05, 0.95, 1.0])  # Q1 0.9875, Q3 1.0625: only 10 is out
    sel = select_tokens(first, penultimate, ratio=0.5)
    assert sel.summary.tolist() == [4]
    assert sel.local.tolist() == [1, 2, 7]  # top 4 of `first` (1, 4, 7, 2) less the summary token
    received = torch.tensor([5.0, 0, 0, 4.0, 0, 0, 0, 0])
    assert select_tokens(first, penultimate, 0.5, received, spatial_ratio=0.25).local.tolist() == [0, 1, 2, 3, 7]
    flat = select_tokens(first, torch.ones(8), ratio=0.25)
    assert flat.summary.numel() == 0 and flat.local.tolist() == [1, 4]


def test_boost_moves_attention_to_local_tokens(llava):
    model, processor, inputs = llava
    adapter = get_adapter(model)
    with adapter.capture([3]) as plain:
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    with paint(model, processor, alpha=0.7, beta=0.4, gamma=0.0, layers=[3]) as painter, \
            adapter.capture([3]) as boosted:
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    local = painter.last["positions"][painter.last["selection"].local]
    assert local.numel() == 4  # 25% of 16 patches; no summary outlier in this random tower
    before, after = plain[3][0][0, :, local].sum(-1), boosted[3][0][0, :, local].sum(-1)
    assert bool((after > before).all())


def test_text_only_correction_equals_uncached_formula(llava):
    model, processor, inputs = llava
    adapter = get_adapter(model)
    gamma, steps = 0.5, 4
    with paint(model, processor, alpha=0.0, beta=0.0, gamma=gamma):
        out = model.generate(**inputs, max_new_tokens=steps, do_sample=False, output_scores=True,
                             return_dict_in_generate=True)
    n = inputs["input_ids"].shape[1]
    text_ids = adapter.text_only(inputs)["input_ids"]
    assert text_ids.shape[1] == n - 16
    for t in range(steps):
        generated = out.sequences[:, n: n + t]
        with torch.no_grad():
            full = dict(inputs, input_ids=torch.cat([inputs["input_ids"], generated], 1),
                        attention_mask=torch.ones(1, n + t, dtype=torch.long))
            log_p = torch.log_softmax(model(**full, use_cache=False).logits[:, -1], -1)
            log_text = torch.log_softmax(model(input_ids=torch.cat([text_ids, generated], 1), use_cache=False)
                                         .logits[:, -1], -1)
        expected = log_p + gamma * (log_p - log_text)
        expected[log_p < log_p.max() + math.log(0.1)] = -math.inf
        torch.testing.assert_close(out.scores[t], expected, rtol=1e-4, atol=1e-4)
        assert out.sequences[0, n + t] == expected.argmax()


@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sampling"])
def test_batched_text_row_equals_two_pass(llava, sample):
    """The text-only row run as a second batch row gives the tokens (and scores) of the sequential second pass,
    with the boost on, greedy and sampling alike; a capture inside keeps the image row only."""
    model, processor, inputs = llava
    adapter = get_adapter(model)
    kwargs = dict(max_new_tokens=6, do_sample=sample, output_scores=True, return_dict_in_generate=True)
    if sample:
        kwargs.update(top_k=0, top_p=1.0, temperature=1.0)
    torch.manual_seed(3)
    with paint(model, processor, alpha=0.7, beta=0.4, gamma=0.5), adapter.capture([1, 3]) as rows:
        batched = model.generate(**inputs, **kwargs)
    torch.manual_seed(3)
    with paint(model, processor, alpha=0.7, beta=0.4, gamma=0.0):
        reference = model.generate(**inputs, logits_processor=[TwoPass(adapter, inputs, 0.5)], **kwargs)
    assert torch.equal(batched.sequences, reference.sequences)
    for ours, ref in zip(batched.scores, reference.scores):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert len(rows[3]) == 6 and rows[3][0].shape[0] == 1 and rows[3][-1].shape[-1] == inputs["input_ids"].shape[1] + 5


def test_text_row_decode_steps_equal_the_general_path(llava, monkeypatch):
    """A one-token step of the text row takes a ready-made 4-D mask and shifted positions (no per-step mask
    building); forcing every step through the general path (concatenated 2-D masks, cumulative positions) gives
    the same tokens and scores."""
    textrow = importlib.import_module("vizoo.vlm.paint").TextRow
    model, processor, inputs = llava
    kwargs = dict(max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    ready, general = textrow._decode_mask, textrow.pre_hook
    calls = []
    monkeypatch.setattr(textrow, "_decode_mask", lambda self, *a: calls.append(a[0]) or ready(self, *a))
    with paint(model, processor, alpha=0.7, beta=0.4, gamma=0.5):
        fast = model.generate(**inputs, **kwargs)
    n = inputs["input_ids"].shape[1]
    assert calls == list(range(n + 1, n + 6))  # every step after the prompt's

    def always_general(self, *args):
        self.unpadded = False
        return general(self, *args)

    monkeypatch.setattr(textrow, "pre_hook", always_general)
    calls.clear()
    with paint(model, processor, alpha=0.7, beta=0.4, gamma=0.5):
        slow = model.generate(**inputs, **kwargs)
    assert not calls
    assert torch.equal(fast.sequences, slow.sequences)
    for ours, ref in zip(fast.scores, slow.scores):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_decode_fast_path_equals_eager_boost(llava):
    """Decode steps with the boost take the sdpa path unless a capture needs the weights; capturing every layer
    forces eager attention with the boost written into the scores: the same scores and tokens."""
    model, processor, inputs = llava
    adapter = get_adapter(model)
    kwargs = dict(max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    with paint(model, processor, alpha=0.7, beta=0.4, gamma=0.1, head_specific=True):
        fast = model.generate(**inputs, **kwargs)
    with paint(model, processor, alpha=0.7, beta=0.4, gamma=0.1, head_specific=True), adapter.capture(range(4)):
        eager = model.generate(**inputs, **kwargs)
    assert torch.equal(fast.sequences, eager.sequences)
    for ours, ref in zip(fast.scores, eager.scores):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    with paint(model, processor, alpha=0.0, beta=0.0, gamma=0.1):
        unboosted = model.generate(**inputs, **kwargs)
    finite = torch.isfinite(fast.scores[0]) & torch.isfinite(unboosted.scores[0])
    assert not torch.allclose(fast.scores[0][finite], unboosted.scores[0][finite])  # the boost did change them


def test_output_attentions_inside_paint(llava):
    """Asked for, every layer's attention comes back (eager where sdpa would hide it), for the image row only."""
    model, processor, inputs = llava
    with paint(model, processor, gamma=0.5):
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_attentions=True,
                             return_dict_in_generate=True)
    n = inputs["input_ids"].shape[1]
    assert [tuple(a.shape) for a in out.attentions[2]] == [(1, 4, 1, n + 2)] * 4


def test_head_specific_weights(llava):
    model, processor, inputs = llava
    with paint(model, processor, layers=[2, 3], head_specific=True, gamma=0.0) as painter:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    weights = painter.last["head_weights"]
    assert sorted(weights) == [2, 3]
    for w in weights.values():
        assert w.shape == (4,) and math.isclose(float(w.mean()), 1.0, rel_tol=1e-5) and float(w.std()) > 0


def test_bad_input(llava):
    model, processor, _ = llava
    qwen, qwen_processor = tiny_qwen2_vl()
    with pytest.raises(ValueError, match="supported model types: llava, llava_next"):
        with paint(qwen, qwen_processor):
            pass
    for bad in (dict(alpha=-0.1), dict(gamma=float("nan")), dict(ratio=0.0), dict(layers=[4])):
        with pytest.raises(ValueError):
            with paint(model, processor, **bad):
                pass
    assert "generate" not in model.__dict__
    text = processor(text=["USER: what is this ? ASSISTANT:"], return_tensors="pt")
    with paint(model, processor), pytest.raises(ValueError, match="pixel_values"):
        model.generate(**text, max_new_tokens=1)
    _, _, inputs = llava
    with paint(model, processor), pytest.raises(ValueError, match="beam search"):
        model.generate(**inputs, max_new_tokens=2, num_beams=2)
    assert not model._forward_pre_hooks and not model._forward_hooks  # the text row's hooks are gone
