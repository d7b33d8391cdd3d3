"""PAINT: boost the language model's attention to informative image tokens while it generates.

Paper: Arif, Dip, Hussain, Zhang, Thomas. "Fixing Imbalanced Attention to Mitigate In-Context Hallucination of
Large Vision-Language Model" (v1), retitled "PAINT: Paying Attention to INformed Tokens to Mitigate
Hallucination in Large Vision-Language Model", arXiv 2501.12206. Official code: github.com/hasanar1f/PAINT
(a fork of PAI, Liu et al., ECCV 2024). Written from the paper's abstracts and from reading that code; nothing
is copied.

Method (faithful to the released code):
    * **Token selection**, once per image, in the CLIP vision tower. Local tokens: the top ``ratio`` fraction of
      patches by the CLS-to-patch attention of the **first** layer, summed over heads. Summary tokens: the
      patches whose CLS-to-patch attention in the **penultimate** layer (summed over heads) is an upper outlier,
      above Q3 + 1.5 IQR. Local tokens that are also summary tokens count as summary tokens.
    * **Boost**, in decoder layers ``layers`` (default 2 to the last, as the code), on the last query row only,
      before the softmax: ``z + alpha |z|`` on local tokens, ``z + beta |z|`` on summary tokens, all heads alike.
    * **Text-only correction** (PAI's): the same prompt without the image runs beside the generation, with
      the boost off (as a second row of the same forward passes, see below), and the next-token
      log-probabilities become
      ``log p + gamma (log p - log p_text)``, keeping only tokens with ``p >= 0.1 max p``.
      ``gamma`` here is PAI's gamma minus one, so ``gamma = 0`` is no correction; the released configuration
      (PAI gamma 1.1) is ``gamma = 0.1``.

Options beyond the released code:
    * ``spatial_ratio``: the "spatially significant" stream of the v1 paper. The released code ranks query-row
      sums of a softmax matrix (all equal to one) and never enables it; here a patch's score is the attention
      it **receives** in the first layer (column sum over queries, mean over heads), and the top
      ``spatial_ratio`` fraction joins the local set. Off (0) by default, as released.
    * ``head_specific``: the v1 paper's head-specific modulation "based on measured visual sensitivity", which
      the released code does not have and whose v1 description could not be read. vizoo's definition: one
      prompt forward without the boost measures each head's attention mass of the last query on the image
      tokens; each head's boost is scaled by that mass over the layer's mean head mass (so the average boost
      is unchanged and image-attentive heads get more).

Differs: the text-only prompt is the given prompt with its image tokens removed (PAI builds a second prompt
from the question); the boost runs through vizoo's attention function (vizoo.vlm.attention) instead of a
patched Llama forward. The text-only sequence is not a second sequential forward per token (as in PAI) but a
second batch row of each forward ``generate`` makes (:class:`TextRow`): the image positions are padding that
row 1 cannot attend to and its position ids skip them, so it computes the text-only prompt exactly (tested
token for token against the sequential pass, greedy and sampling); a decode step of batch 2 costs about what
one of batch 1 costs, where the second pass nearly doubled the time per token. Batch size 1 (the command loops
over images). Needs a CLIP-style vision tower with a CLS token, so it supports the LLaVA family; Qwen-VL's
vision encoder has no CLS token.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from vizoo.vlm.attention import LlavaAdapter, VLMAdapter, get_adapter


@dataclass
class TokenSelection:
    """Patch indices (into the vision tower's patch grid, row-major) and their scores."""

    local: Tensor
    summary: Tensor
    first_layer: Tensor  # (patches,) CLS-to-patch attention of the first layer, summed over heads
    penultimate: Tensor  # (patches,) the same in the penultimate layer


def select_tokens(first_layer: Tensor, penultimate: Tensor, ratio: float = 0.25,
                  received: Tensor | None = None, spatial_ratio: float = 0.0) -> TokenSelection:
    """PAINT's local and summary sets from per-patch scores (1-D tensors of the same length).

    ``received`` is the attention each patch receives in the first layer (needed when ``spatial_ratio > 0``).
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if not 0 <= spatial_ratio <= 1:
        raise ValueError(f"spatial_ratio must be in [0, 1], got {spatial_ratio}")
    n = first_layer.numel()
    local = first_layer.topk(int(math.floor(ratio * n))).indices
    if spatial_ratio > 0:
        if received is None:
            raise ValueError("spatial_ratio > 0 needs the attention each patch receives (received=)")
        local = torch.cat([local, received.topk(int(math.floor(spatial_ratio * n))).indices]).unique()
    q1, q3 = torch.quantile(penultimate.float(), torch.tensor([0.25, 0.75], device=penultimate.device))
    count = int((penultimate > q3 + 1.5 * (q3 - q1)).sum())
    summary = penultimate.topk(count).indices
    local = local[~torch.isin(local, summary)]
    return TokenSelection(local.sort().values, summary.sort().values, first_layer, penultimate)


@torch.no_grad()
def vision_scores(adapter: VLMAdapter, pixel_values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(first-layer CLS scores, penultimate-layer CLS scores, first-layer received attention) per patch for
    the first image, from the vision tower run with eager attention (switched back afterwards)."""
    if not isinstance(adapter, LlavaAdapter):
        raise ValueError(f"PAINT's token selection needs a vision tower with a CLS token (the LLaVA family); "
                         f"{type(adapter.model).__name__} has none")
    model, vision = adapter.model, adapter.config.vision_config
    before = vision._attn_implementation
    if before != "eager":
        model.set_attn_implementation({"vision_config": "eager"})
    # LLaVA-NeXt's pixel_values are (images, crops, 3, H, W) with the whole (base) image first
    pixels = pixel_values[0, :1] if pixel_values.dim() == 5 else pixel_values[:1]
    try:
        attentions = adapter.vision_tower()(pixels, output_attentions=True).attentions
    finally:
        if before != "eager":
            model.set_attn_implementation({"vision_config": before})
    first, penultimate = attentions[0][0].float(), attentions[-2][0].float()  # (heads, 1 + P, 1 + P)
    received = first[:, 1:, 1:].mean(0).sum(0)
    return first[:, 0, 1:].sum(0), penultimate[:, 0, 1:].sum(0), received


def contrast_scores(scores: Tensor, text_logits: Tensor, gamma: float) -> Tensor:
    """``log p + gamma (log p - log p_text)``, with the tokens where p < 0.1 max p set to -inf."""
    log_p = torch.log_softmax(scores.float(), -1)
    log_text = torch.log_softmax(text_logits.float(), -1)
    out = log_p + gamma * (log_p - log_text)
    implausible = log_p < log_p.max(-1, keepdim=True).values + math.log(0.1)
    return out.masked_fill(implausible, -math.inf).to(scores.dtype)


class TextRow:
    """PAINT's text-only sequence as a second batch row of the model's own forward passes.

    While attached (forward hooks on the model), every forward that ``generate`` makes for its one prompt runs
    with batch 2: row 0 is what ``generate`` asked for, row 1 the same tokens with the image tokens (and their
    markers) replaced by padding and masked out of attention, with position ids that skip them. Row 1 therefore
    computes exactly the prompt without its image followed by the tokens generated so far (the padded keys get
    softmax weight 0), in the same kernel launches as row 0 and with the same (batch-2) KV cache; the forward
    hook hands ``generate`` row 0 only and keeps row 1's next-token logits. ``generate`` itself still runs with
    batch 1 (its logits processors, sampling and stopping are unchanged); the object is also the logits
    processor that applies :func:`contrast_scores` with row 1's logits. At batch 1 a decode step is bound by
    kernel launches, so the second row costs little where a second sequential forward cost nearly as much as
    the first. For the same reason a one-token step (once the prompt is in the cache, and when the prompt's own
    mask hides nothing) builds nothing per step: both rows take the generated id, the 4-D additive mask is a
    view into a buffer made once per ``generate`` (transformers uses a 4-D mask as given), and row 1's position
    is row 0's minus the number of image positions.
    """

    def __init__(self, adapter: VLMAdapter, inputs: dict, gamma: float):
        ids = inputs["input_ids"]
        self.keep = ~adapter.marker_mask(ids)  # (1, S): the text-only sequence's tokens
        self.pad = adapter.pad_id
        self.gamma = gamma
        self.text_logits: Tensor | None = None
        # positions the text row skips before the generated tokens (a generated token at p sits at p - shift)
        self.shift = int((~self.keep).sum())
        self.decode_mask: Tensor | None = None  # (2, 1, 1, L) additive mask of decode steps, sliced per step
        self.unpadded: bool | None = None  # the prompt's own mask hides nothing (checked once, at the prompt)

    def _keep(self, total: int) -> Tensor:
        """(1, total) bool: the text row's visible positions (generated tokens are all visible)."""
        extra = total - self.keep.shape[1]
        if extra < 0:
            raise ValueError(f"PAINT: a forward covers {total} positions, fewer than the prompt's "
                             f"{self.keep.shape[1]}")
        return torch.cat([self.keep, self.keep.new_ones(1, extra)], 1)

    def _decode_mask(self, total: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """(2, 1, 1, total) additive mask of a one-token step: row 0 sees every key, row 1 all but the image
        positions. A view into a buffer built once per ``generate`` (again only if the keys outgrow it), so a
        decode step spends no operations on its mask (transformers takes a 4-D mask as it is)."""
        mask = self.decode_mask
        if mask is None or mask.shape[-1] < total or mask.dtype != dtype or mask.device != device:
            keep = self._keep(total + 256).to(device)
            mask = torch.zeros(2, 1, 1, keep.shape[1], dtype=dtype, device=device)
            mask[1, 0, 0].masked_fill_(~keep[0], torch.finfo(dtype).min)
            self.decode_mask = mask
        return mask[..., :total]

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or ids.shape[0] != 1:
            raise ValueError("PAINT's text-only correction needs input_ids of one prompt in every forward "
                             "(no inputs_embeds, beam search or several return sequences)")
        args = args[1:] if args else args
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            raise ValueError("PAINT's text-only correction needs a 2-D attention mask and the default dynamic "
                             "cache (not a static or compiled cache)")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        start = int(cache.get_seq_length()) if cache is not None else 0
        length = ids.shape[1]
        total = start + length
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = torch.arange(start, total, device=ids.device)[None]
        if self.unpadded is None:
            self.unpadded = mask is None or bool(mask.all())
        decode = length == 1 and start >= self.keep.shape[1] and self.unpadded
        if decode and all(kwargs.get(name) is None for name in ("token_type_ids", "mm_token_type_ids")):
            # a generated token: the same id in both rows, the ready-made mask, the text row's shifted position
            kwargs["input_ids"] = ids.expand(2, 1)
            kwargs["attention_mask"] = self._decode_mask(total, module.dtype, ids.device)
            kwargs["position_ids"] = torch.cat([positions, positions - self.shift])
            return args, kwargs
        keep = self._keep(total)
        now = keep[:, start:]
        kwargs["input_ids"] = torch.cat([ids, ids.masked_fill(~now, self.pad)])
        mask = torch.ones(1, total, dtype=torch.long, device=ids.device) if mask is None else mask
        kwargs["attention_mask"] = torch.cat([mask, mask * keep.to(mask.dtype)])
        text_positions = (keep.long().cumsum(-1) - 1).clamp_min(0)[:, start:]
        kwargs["position_ids"] = torch.cat([positions, text_positions.to(positions.dtype)])
        for name in ("token_type_ids", "mm_token_type_ids"):
            if kwargs.get(name) is not None:
                kwargs[name] = torch.cat([kwargs[name], kwargs[name].masked_fill(~now, 0)])
        return args, kwargs

    def hook(self, module: nn.Module, args: tuple, kwargs: dict, output):
        self.text_logits = output.logits[1:, -1].float()
        output["logits"] = output.logits[:1]
        for name in ("hidden_states", "attentions"):
            if output.get(name) is not None:
                output[name] = tuple(None if t is None else t[:1] for t in output[name])
        return output

    @contextlib.contextmanager
    def attached(self, adapter: VLMAdapter) -> Iterator[None]:
        """The hooks on ``adapter.model`` for the block; a capture block open around it records row 0 only."""
        model, state = adapter.model, adapter.state
        handles = [model.register_forward_pre_hook(self.pre_hook, with_kwargs=True),
                   model.register_forward_hook(self.hook, with_kwargs=True)]
        saved, state.capture_batch = state.capture_batch, state.capture_batch or 1
        try:
            yield
        finally:
            state.capture_batch = saved
            for handle in handles:
                handle.remove()

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.text_logits is None:
            raise RuntimeError("PAINT's text row has no logits: the model's forward did not run with it attached")
        return contrast_scores(scores, self.text_logits, self.gamma)


class Painter:
    """The object :func:`paint` yields; ``last`` holds the latest image's selection and boosted positions."""

    def __init__(self, adapter: VLMAdapter, alpha: float, beta: float, gamma: float, layers: Sequence[int],
                 ratio: float, spatial_ratio: float, head_specific: bool):
        self.adapter, self.alpha, self.beta, self.gamma = adapter, alpha, beta, gamma
        self.layers, self.ratio, self.spatial_ratio = layers, ratio, spatial_ratio
        self.head_specific = head_specific
        self.last: dict | None = None

    def key_weight(self, inputs: dict) -> tuple[Tensor, TokenSelection]:
        """(1, S) boost per prompt position and the token selection for one prompt."""
        if inputs.get("pixel_values") is None:
            raise ValueError("PAINT needs pixel_values: pass the image through the processor")
        positions = self.adapter.grid_positions(inputs)
        first, penultimate, received = vision_scores(self.adapter, inputs["pixel_values"])
        if first.numel() != positions.numel():
            raise ValueError(f"the vision tower gives {first.numel()} patches but the prompt's image grid has "
                             f"{positions.numel()} tokens")
        selection = select_tokens(first, penultimate, self.ratio, received, self.spatial_ratio)
        weight = torch.zeros(inputs["input_ids"].shape, device=first.device)
        weight[0, positions[selection.local]] = self.alpha
        weight[0, positions[selection.summary]] = self.beta
        return weight, selection

    @torch.no_grad()
    def head_weights(self, inputs: dict, key_weight: Tensor) -> dict[int, Tensor]:
        """Per layer, each head's image attention mass over the layer's mean (one prompt forward, no boost)."""
        image = self.adapter.image_mask(inputs["input_ids"]).float()
        with self.adapter.capture(self.layers) as rows:
            self.adapter.model(**inputs)
        weights = {}
        for layer, (row,) in rows.items():
            mass = (row * image[:, None, :]).sum(-1).mean(0)  # (heads,)
            weights[layer] = mass / mass.mean().clamp_min(1e-12)
        return weights

    def generate(self, original, *args, **kwargs):
        inputs = dict(kwargs)
        if args:
            inputs["input_ids"] = args[0]
        if inputs["input_ids"].shape[0] != 1:
            raise ValueError("PAINT generates for one prompt at a time (batch size 1)")
        weight, selection = self.key_weight(inputs)
        heads = self.head_weights(inputs, weight) if self.head_specific else None
        positions = self.adapter.grid_positions(inputs)
        self.last = {"selection": selection, "positions": positions, "head_weights": heads}
        adapter = self.adapter
        with contextlib.ExitStack() as stack:
            if self.gamma:
                text = TextRow(adapter, inputs, self.gamma)
                kwargs["logits_processor"] = list(kwargs.pop("logits_processor", None) or []) + [text]
                weight = torch.cat([weight, torch.zeros_like(weight)])  # the text row is never boosted
                stack.enter_context(text.attached(adapter))
            if self.alpha or self.beta:  # at zero strength the layers stay as they are: the plain model
                stack.enter_context(adapter.fused_elsewhere())
                stack.enter_context(adapter.boost(self.layers, weight, heads))
            return original(*args, **kwargs)


@contextlib.contextmanager
def paint(model: nn.Module, processor=None, *, alpha: float = 0.7, beta: float = 0.4, gamma: float = 0.1,
          layers: Sequence[int] | None = None, ratio: float = 0.25, spatial_ratio: float = 0.0,
          head_specific: bool = False) -> Iterator[Painter]:
    """Apply PAINT to every ``model.generate`` call inside the block.

    Example::

        with paint(model, processor):
            out = model.generate(**processor(images=image, text=prompt, return_tensors="pt"), max_new_tokens=64)

    Args:
        model: a LLaVA-family ``...ForConditionalGeneration`` model.
        processor: the model's processor (not needed by the boost; accepted so that ``carve`` and ``paint``
            take the same leading arguments).
        alpha: boost of the local tokens (0.7 released).
        beta: boost of the summary tokens (0.4 released).
        gamma: strength of the text-only correction (PAI's gamma minus one; 0 turns it off; 0.1 released).
        layers: decoder layers to boost (default 2 to the last).
        ratio: fraction of patches taken as local tokens (0.25 released).
        spatial_ratio: fraction added by the spatial stream (0, off, released).
        head_specific: scale the boost per head by its measured image attention (the v1 paper's idea; off).
    """
    adapter = get_adapter(model)
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if not 0 <= spatial_ratio <= 1:
        raise ValueError(f"spatial_ratio must be in [0, 1], got {spatial_ratio}")
    if not isinstance(adapter, LlavaAdapter):
        raise ValueError(f"PAINT's token selection needs a vision tower with a CLS token; supported model types: "
                         f"{', '.join(LlavaAdapter.model_types)} (got {model.config.model_type!r})")
    layers = adapter.check_layers(range(min(2, adapter.num_layers - 1), adapter.num_layers) if layers is None
                                  else layers)
    painter = Painter(adapter, alpha, beta, gamma, layers, ratio, spatial_ratio, head_specific)
    patched_before = model.__dict__.get("generate")  # a paint block inside another
    original = model.generate
    model.generate = lambda *args, **kwargs: painter.generate(original, *args, **kwargs)
    try:
        yield painter
    finally:
        del model.generate
        if patched_before is not None:
            model.generate = patched_before
