"""CARVE: contrastive attention refinement of the image for visual question answering.

Paper: Ge, Liu, Wang, Mei, Bi, Zhou, Yao, Guo, Cheng. "Focusing by Contrastive Attention: Enhancing VLMs'
Visual Reasoning." arXiv 2509.06461. Official code: github.com/YuyaoGe/CARVE (no licence file). Written from
the paper and from reading that code; nothing is copied.

Method (faithful):
    * Two greedy generations on the same image: the task query (the question plus "Answer the question using
      a single word or phrase.") and the general instruction ("Write a general description of the image."
      plus the same suffix). At each generated token t and each chosen decoder layer l (default 20..25), the
      language model's attention of the current query over the image tokens, averaged over heads, not
      renormalised.
    * Contrast per token, layer and step: ``A_Q / (A_G + lambda)`` (lambda = 1e-8), steps paired by index
      up to the shorter generation.
    * Fusion: each map on the token grid is upsampled bilinearly to the image size; layers are summed and
      steps weighted by ``w_t = t`` (``steps="all"``, the code's default); ``"first"``/``"last"`` keep one step.
    * Mask: the top ``top_p`` fraction of pixels (threshold at the (1 - p) quantile; p = 0.2), its
      4-connected regions ranked by the fused map's sum inside them (or by area), keeping the
      ``max(regions, floor(p * #regions))`` best (regions = 3).
    * Refinement: pixels outside the kept regions are set to black, the regions' bounding box is cropped and
      resized with Lanczos by ``max(W / w, H / h)`` (aspect ratio kept).
    * Final answer: greedy, from ``[original, refined]`` with the task query (``final="both"``, the official
      code, which produced the published numbers; the default) or from the refined image only
      (``final="refined"``, the paper's Algorithm 1).

Differs:
    * The generations use the KV cache (``use_cache=True``, default): transformers' ``generate`` with a pure
      greedy configuration, one forward per token, and the task and general prompts run as the two
      (left-padded) rows of **one** generation, so their decode steps, which at batch 1 or 2 are bound by
      kernel launches rather than arithmetic, are paid once; each row stops at its own EOS. The official code
      reruns the whole sequence for every token, one prompt after the other; ``use_cache=False`` does that too
      and gives the same maps and answers (tested).
    * The attention comes from vizoo's eager attention function (vizoo.vlm.attention) instead of
      ``output_attentions``, so only the chosen layers' last rows are kept; the other layers, and every layer
      of the final answer, run transformers' ``sdpa`` (same math, fused; results equal up to rounding).
    * The first two passes run all layers (the paper notes they could stop after the last chosen layer; the
      greedy tokens need the logits, so vizoo does not).
    * ``general=`` reuses the general-instruction pass of an earlier question on the same image (the paper's
      appendix suggests this caching; ``vizoo carve`` does it for consecutive questions on one image).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from vizoo.vlm.attention import KeepCaptured, VLMAdapter, get_adapter
from vizoo.vlm.images import load_image

TASK_SUFFIX = " Answer the question using a single word or phrase."
GENERAL_INSTRUCTION = "Write a general description of the image."
STEPS = ("all", "first", "last")
FINALS = ("both", "refined")
REGION_STRATEGIES = ("attention_sum", "size")


# ------------------------------------------------------------------------------------------------ the steps
def contrast(task: Tensor, general: Tensor, lam: float = 1e-8) -> Tensor:
    """``task / (general + lam)`` elementwise: the attention the question adds beyond the image's own pull."""
    return task / (general + lam)


def step_weights(num_steps: int, steps: str = "all") -> Tensor:
    """Weights over generation steps: ``all`` is t = 1..T, ``first`` and ``last`` keep one step."""
    if steps not in STEPS:
        raise ValueError(f"steps must be one of {STEPS}, got {steps!r}")
    weights = torch.zeros(num_steps)
    if steps == "all":
        weights = torch.arange(1, num_steps + 1, dtype=torch.float32)
    elif num_steps:
        weights[0 if steps == "first" else -1] = 1.0
    return weights


def fuse(maps: Tensor, size: tuple[int, int], steps: str = "all") -> Tensor:
    """``sum_t w_t sum_l up(maps[t, l])``: maps (T, L, rows, cols) -> (H, W) with bilinear upsampling."""
    steps_, layers, rows, cols = maps.shape
    up = F.interpolate(maps.reshape(steps_ * layers, 1, rows, cols).float(), size=size, mode="bilinear",
                       align_corners=False)
    return torch.einsum("t,thw->hw", step_weights(steps_, steps), up.reshape(steps_, layers, *size).sum(1))


def _check_p(p: float) -> float:
    if not (isinstance(p, (int, float)) and 0 < p <= 1):
        raise ValueError(f"top_p must be in (0, 1] (the fraction of pixels kept), got {p!r}")
    return float(p)


def top_p_mask(saliency: np.ndarray, p: float) -> np.ndarray:
    """Pixels at or above the (1 - p) quantile of ``saliency``: about the top p fraction; p = 1 keeps all."""
    p = _check_p(p)
    return saliency >= np.quantile(saliency, 1.0 - p)


def keep_regions(mask: np.ndarray, saliency: np.ndarray, p: float, regions: int = 3,
                 strategy: str = "attention_sum") -> np.ndarray:
    """The mask's best 4-connected regions: ``max(regions, floor(p * count))`` of them, ranked by the sum of
    ``saliency`` inside (``attention_sum``) or by area (``size``)."""
    from scipy import ndimage

    if strategy not in REGION_STRATEGIES:
        raise ValueError(f"region strategy must be one of {REGION_STRATEGIES}, got {strategy!r}")
    if not (isinstance(regions, int) and regions >= 1):
        raise ValueError(f"regions must be an integer >= 1, got {regions!r}")
    labels, count = ndimage.label(mask)  # default structure: 4-connectivity
    if count == 0:
        return mask.copy()
    index = np.arange(1, count + 1)
    score = ndimage.sum(saliency if strategy == "attention_sum" else np.ones_like(saliency), labels, index)
    keep = max(regions, math.floor(_check_p(p) * count))
    best = index[np.argsort(-np.asarray(score), kind="stable")[:keep]]
    return np.isin(labels, best)


def refine_image(image: Image.Image, mask: np.ndarray) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Black outside ``mask``, cropped to its bounding box, resized (Lanczos) by max(W / w, H / h).

    Returns the refined image and the box (left, top, right, bottom) in the original's pixels.
    """
    if mask.shape != (image.height, image.width):
        raise ValueError(f"mask shape {mask.shape} does not match the image ({image.height}, {image.width})")
    if not mask.any():
        return image.copy(), (0, 0, image.width, image.height)
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    masked = np.asarray(image.convert("RGB")) * mask[..., None].astype(np.uint8)
    crop = Image.fromarray(masked).crop(box)
    scale = max(image.width / crop.width, image.height / crop.height)
    size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
    return (crop if size == crop.size else crop.resize(size, Image.LANCZOS)), box


# ------------------------------------------------------------------------------------------------ generation
def greedy_config(model: nn.Module, max_new_tokens: int, compile: bool = False):
    """Pure greedy decoding (no sampling, no repetition penalty) ending at the model's EOS ids.

    ``compile`` asks for a static KV cache, with which transformers compiles the decode step
    (``torch.compile``, CUDA graphs) on a GPU; elsewhere it runs the static cache uncompiled.
    """
    from transformers import CompileConfig, GenerationConfig

    base = model.generation_config
    extra = dict(cache_implementation="static", compile_config=CompileConfig()) if compile else {}
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=base.eos_token_id,
                            pad_token_id=base.pad_token_id, bos_token_id=base.bos_token_id, **extra)


def _eos_ids(model: nn.Module) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set() if eos is None else {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


@torch.no_grad()
def generate_greedy(model: nn.Module, inputs: dict, max_new_tokens: int, use_cache: bool = True,
                    compile: bool = False) -> Tensor:
    """The generated token ids (1, T). ``use_cache=False`` reruns the whole sequence for every token;
    ``compile`` see :func:`greedy_config`."""
    n = inputs["input_ids"].shape[1]
    if use_cache:
        return model.generate(**inputs, generation_config=greedy_config(model, max_new_tokens, compile))[:, n:]
    inputs, eos = dict(inputs), _eos_ids(model)
    for _ in range(max_new_tokens):
        token = model(**inputs, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        inputs["input_ids"] = torch.cat([inputs["input_ids"], token], 1)
        for key in ("attention_mask", "mm_token_type_ids"):  # a new text token: mask 1, type 0
            if key in inputs:
                new = torch.full_like(token, int(key == "attention_mask"))
                inputs[key] = torch.cat([inputs[key], new], 1)
        if int(token) in eos:
            break
    return inputs["input_ids"][:, n:]


TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")  # one entry per position


def stack_prompts(prompts: Sequence[dict], pad_id: int) -> tuple[dict, list[int]]:
    """One batch from batch-1 processor outputs: per-position tensors left-padded (pad id, mask 0, type 0) to
    the longest, the others (pixel values, image sizes or grids) concatenated. Returns it and each row's
    padding."""
    length = max(p["input_ids"].shape[1] for p in prompts)
    pads = [length - p["input_ids"].shape[1] for p in prompts]
    batch = {}
    for key in prompts[0]:
        values = [p[key] for p in prompts]
        if key in TOKEN_KEYS:
            fill = pad_id if key == "input_ids" else 0
            values = [F.pad(v, (pad, 0), value=fill) for v, pad in zip(values, pads)]
        batch[key] = torch.cat(values)
    return batch, pads


def _length(ids: Tensor, eos: set[int]) -> int:
    """Tokens up to and including the first EOS (all of them without one)."""
    for t, token in enumerate(ids.tolist()):
        if token in eos:
            return t + 1
    return ids.numel()


def prompt_maps(adapter: VLMAdapter, prompts: Sequence[dict], layers: Sequence[int], max_new_tokens: int,
                use_cache: bool = True, compile: bool = False) -> list[tuple[Tensor, Tensor]]:
    """Greedy generation for each prompt (batch-1 processor outputs) recording, per step and layer, the
    head-mean attention of the current query over the prompt's first image on its grid.

    Returns one (maps (T, L, rows, cols), generated ids (1, T)) per prompt. With ``use_cache`` the prompts run
    as the rows of **one** KV-cached generation (left-padded: padded keys get weight 0 and position ids start
    after the padding), so the decode steps, bound by kernel launches at these batch sizes, are shared; each
    row's steps end at its own EOS. ``use_cache=False`` runs each prompt on its own and reruns the whole
    sequence for every token (the official code's loop); both give the same maps (tested). ``compile``
    (cached only) uses a static cache and, on a GPU, transformers' compiled decode step.
    """
    if not use_cache:
        return [attention_maps(adapter, p, layers, max_new_tokens, use_cache=False) for p in prompts]
    model = adapter.model
    batch, pads = stack_prompts(prompts, adapter.pad_id)
    with adapter.capture(layers, deferred=compile) as captured:
        keep = [KeepCaptured(adapter)] if compile else []
        out = model.generate(**batch, generation_config=greedy_config(model, max_new_tokens, compile),
                             logits_processor=keep)
    length = batch["input_ids"].shape[1]
    generated, eos, rows = out[:, length:], _eos_ids(model), _prompt_rows(captured, length)
    results = []
    for row, (prompt, pad) in enumerate(zip(prompts, pads)):
        positions, grid = adapter.grid_positions(prompt) + pad, adapter.image_grid(prompt)
        steps = _length(generated[row], eos)
        maps = rows[:steps, :, row][..., positions]
        results.append((maps.reshape(steps, -1, *grid).cpu(), generated[row: row + 1, :steps]))
    return results


def _prompt_rows(captured: dict[int, list[Tensor]], length: int) -> Tensor:
    """(steps, layers, batch, keys): the captured rows over the first ``length`` keys, mean over heads."""
    return torch.stack([torch.stack([r[..., :length] for r in captured[layer]]) for layer in sorted(captured)],
                       1).mean(-2)


def attention_maps(adapter: VLMAdapter, inputs: dict, layers: Sequence[int], max_new_tokens: int,
                   use_cache: bool = True) -> tuple[Tensor, Tensor]:
    """Greedy generation recording, per step and layer, the head-mean attention of the current query over the
    first image's tokens on its grid. Returns (maps (T, L, rows, cols), generated ids (1, T))."""
    positions = adapter.grid_positions(inputs)
    rows, cols = adapter.image_grid(inputs)
    with adapter.capture(layers) as captured:
        ids = generate_greedy(adapter.model, inputs, max_new_tokens, use_cache)
    maps = _prompt_rows(captured, inputs["input_ids"].shape[1])[:, :, 0][..., positions]
    return maps.reshape(maps.shape[0], -1, rows, cols).cpu(), ids


# ------------------------------------------------------------------------------------------------ the method
@dataclass
class CarveResult:
    """What :func:`carve` returns.

    Attributes:
        answer: the final answer.
        refined_image: the masked, cropped and resized image.
        mask: (H, W) bool, the kept regions over the original image.
        saliency: (H, W) float, the fused contrast map.
        maps: (T, L, rows, cols) contrast maps per step and layer.
        task_maps, general_maps: the raw attention maps of the two first passes (same layout, own lengths).
        box: the refined crop's (left, top, right, bottom) in the original image.
        task_answer, general_answer: the texts of the two first passes.
    """

    answer: str
    refined_image: Image.Image
    mask: np.ndarray
    saliency: np.ndarray
    maps: Tensor
    task_maps: Tensor
    general_maps: Tensor
    box: tuple[int, int, int, int]
    task_answer: str = ""
    general_answer: str = ""
    options: dict = field(default_factory=dict)


def check_question(question: str) -> str:
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"the question is empty; give the text to ask about the image (got {question!r})")
    return question.strip()


def _decode(processor, ids: Tensor) -> str:
    return processor.batch_decode(ids, skip_special_tokens=True)[0].strip()


def carve(model: nn.Module, processor, image, question: str, *, layers: Sequence[int] = range(20, 26),
          steps: str = "all", lam: float = 1e-8, top_p: float = 0.2, regions: int = 3,
          region_strategy: str = "attention_sum", final: str = "both", max_new_tokens: int = 32,
          use_cache: bool = True, general_instruction: str = GENERAL_INSTRUCTION,
          suffix: str = TASK_SUFFIX, general: CarveResult | None = None, compile: bool = False) -> CarveResult:
    """Answer ``question`` about ``image`` with CARVE (defaults are the official code's).

    Args:
        model, processor: a supported Hugging Face VLM (see :func:`vizoo.vlm.get_adapter`) and its processor.
        image: a PIL image or an image file.
        question: the question (the single-word suffix is appended).
        layers: decoder layers whose attention is used (20..25).
        steps: ``all`` (weights t = 1..T), ``first`` or ``last``.
        lam: lambda of the contrast.
        top_p: fraction of pixels in the mask, in (0, 1]; 1 keeps the whole image.
        regions: minimum number of connected regions kept.
        region_strategy: ``attention_sum`` or ``size``.
        final: ``both`` (original + refined image, the official code) or ``refined`` (the paper).
        max_new_tokens: length of the three greedy generations.
        use_cache: KV-cached generation (same result as the official uncached loop, faster).
        general: an earlier result on the same image with the same layers and ``max_new_tokens``: its
            general-instruction pass is reused (it depends on the image only), saving one of the three passes.
        compile: static KV cache and, on a GPU, a compiled decode step (``torch.compile`` with CUDA graphs,
            through transformers' ``generate``), for the two generations; the same results. The first call
            for each prompt length compiles or records graphs (minutes for a 7B model); worth it over many
            calls of one shape. Needs ``use_cache``.
    """
    question = check_question(question)
    _check_p(top_p)
    if steps not in STEPS:
        raise ValueError(f"steps must be one of {STEPS}, got {steps!r}")
    if final not in FINALS:
        raise ValueError(f"final must be one of {FINALS}, got {final!r}")
    if region_strategy not in REGION_STRATEGIES:
        raise ValueError(f"region_strategy must be one of {REGION_STRATEGIES}, got {region_strategy!r}")
    if not (isinstance(regions, int) and regions >= 1):
        raise ValueError(f"regions must be an integer >= 1, got {regions!r}")
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if compile and not use_cache:
        raise ValueError("compile=True needs use_cache=True (it compiles the cached decode step)")
    adapter = get_adapter(model)
    layers = adapter.check_layers(layers)
    image = load_image(image)

    task_inputs = adapter.inputs(processor, [image], question + suffix)
    if general is not None and not (general.saliency.shape == (image.height, image.width)
                                    and general.options.get("layers") == layers
                                    and general.options.get("max_new_tokens") == max_new_tokens):
        raise ValueError("general= must come from the same image, layers and max_new_tokens")
    prompts = [task_inputs]
    if general is None:
        prompts.append(adapter.inputs(processor, [image], general_instruction + suffix))
    with adapter.fused_elsewhere():  # layers outside `layers` need no scores: sdpa
        passes = prompt_maps(adapter, prompts, layers, max_new_tokens, use_cache, compile)
    task_maps, task_ids = passes[0]
    if general is not None:
        general_maps, general_answer = general.general_maps, general.general_answer
    else:
        general_maps, general_answer = passes[1][0], _decode(processor, passes[1][1])
    n = min(len(task_maps), len(general_maps))
    maps = contrast(task_maps[:n], general_maps[:n], lam)
    saliency = fuse(maps, (image.height, image.width), steps).numpy()
    mask = keep_regions(top_p_mask(saliency, top_p), saliency, top_p, regions, region_strategy)
    refined, box = refine_image(image, mask)

    images = [image, refined] if final == "both" else [refined]
    final_inputs = adapter.inputs(processor, images, question + suffix)
    with adapter.fused_elsewhere():  # no capture: every layer runs sdpa
        answer_ids = generate_greedy(model, final_inputs, max_new_tokens, use_cache=True, compile=compile)
    options = dict(layers=layers, steps=steps, lam=lam, top_p=top_p, regions=regions,
                   region_strategy=region_strategy, final=final, max_new_tokens=max_new_tokens,
                   use_cache=use_cache, compile=compile)
    return CarveResult(_decode(processor, answer_ids), refined, mask, saliency, maps, task_maps, general_maps,
                       box, _decode(processor, task_ids), general_answer, options)
