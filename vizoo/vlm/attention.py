"""Read and bend the language model's attention inside Hugging Face VLMs.

One adapter per VLM family knows where the image tokens sit in the prompt, their grid, and where the
language model's decoder layers live. Building an adapter switches the **language model only** to
``vizoo_eager``: an attention function registered with transformers' ``AttentionInterface`` that computes
exactly what transformers' own eager attention computes (scores, additive mask, softmax in float32, dropout,
weighted sum) and in addition, while a :meth:`VLMAdapter.capture` or :meth:`VLMAdapter.boost` block is open,

* records each chosen layer's attention row of the **last query** (the token being generated) over all
  keys, per head, once per forward pass (so once per generated token with the KV cache);
* adds ``w_h * v_j * |z_j|`` to the **pre-softmax** score ``z_j`` of the last query on key ``j`` for the
  chosen layers, with a per-key weight ``v`` (zero on keys left alone) and an optional per-head weight ``w``
  (PAINT's boost, vizoo.vlm.paint): in place on the scores in prompt passes and captured steps, and as an
  additive bias to ``sdpa`` in the other decode steps (one query: ``w_j |z_j|`` is a per-key constant
  once ``z`` is known), which needs about half the kernels of eager attention with the boost;
* inside a :meth:`VLMAdapter.fused_elsewhere` block, hands the layers that neither capture nor boost to
  transformers' ``sdpa`` attention, so only the layers that need the scores pay for eager attention.

With no block open the function is plain eager attention, so generation is unchanged (tested bit for bit).
The vision tower keeps its own attention implementation. Fused implementations (sdpa, flash) never
materialise the attention matrix, so an adapter always makes the switch and logs a warning when the model
was loaded with one of them; nothing is captured silently wrong.

transformers gives a newly registered attention name no mask unless the same name is registered with
``AttentionMaskInterface`` as well, which this module does (with the eager mask).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

ATTENTION_NAME = "vizoo_eager"


# ------------------------------------------------------------------------------------------------ the function
@dataclass
class AttentionState:
    """What the attention function does beyond eager attention; one per model, shared by its decoder layers."""

    capture_layers: frozenset[int] = frozenset()
    rows: dict[int, list[Tensor]] = field(default_factory=dict)  # layer -> one (B, H, K) row per forward
    capture_batch: int | None = None  # record only the first rows of the batch (PAINT's text row is not kept)
    deferred: bool = False  # rows go to `latest` (one slot per layer) and KeepCaptured appends copies
    latest: dict[int, Tensor] = field(default_factory=dict)
    boost_layers: frozenset[int] = frozenset()
    key_weight: Tensor | None = None  # (B, K0): the boost of the last query on keys 0..K0-1
    head_weight: dict[int, Tensor] = field(default_factory=dict)  # layer -> (H,); missing layer means all 1
    layer_weight: dict[int, Tensor] = field(default_factory=dict)  # layer -> the two above, multiplied and cast
    decode_weight: dict[int, Tensor] = field(default_factory=dict)  # the same as a bias for decode steps
    enabled: bool = True  # PAINT's text-only pass switches the boost off
    fused_elsewhere: bool = False  # layers neither captured nor boosted run transformers' sdpa


def _attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
               scaling: float, dropout: float = 0.0, **kwargs) -> tuple[Tensor, Tensor | None]:
    state: AttentionState | None = getattr(module, "_vizoo_state", None)
    layer = getattr(module, "layer_idx", None)
    active = state is not None and state.enabled
    boost = active and layer in state.boost_layers and state.key_weight is not None
    capture = active and layer in state.capture_layers
    if state is not None and state.fused_elsewhere and not (boost or capture or kwargs.get("output_attentions")):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, scaling=scaling,
                                              dropout=dropout, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` consecutive query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if boost and not capture and query.shape[2] == 1 and not (dropout and module.training) \
            and not kwargs.get("output_attentions"):
        weight = state.decode_weight.get(layer)
        if weight is None or weight.shape[-1] < key.shape[-2] or weight.dtype != query.dtype \
                or weight.device != query.device:
            weight = _decode_weight(state.key_weight, state.head_weight.get(layer), scaling, key.shape[-2] + 256,
                                    query.dtype, query.device)
            state.decode_weight[layer] = weight
        return _boosted_decode(query, key, value, attention_mask, scaling, weight), None
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    if boost:
        weight = state.layer_weight.get(layer)
        if weight is None or weight.dtype != scores.dtype or weight.device != scores.device:
            weight = _layer_weight(state.key_weight, state.head_weight.get(layer), scores.dtype, scores.device)
            state.layer_weight[layer] = weight
        _boost_last_row(scores, weight)  # scores is a fresh tensor: changed in place
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if capture:
        row = weights[: state.capture_batch, :, -1, :].detach().float()
        if state.deferred:  # a compiled step: a fixed slot, copied out by KeepCaptured after the forward
            state.latest[layer] = row
        else:
            state.rows.setdefault(layer, []).append(row)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def _layer_weight(key_weight: Tensor, head_weight: Tensor | None, dtype: torch.dtype,
                  device: torch.device) -> Tensor:
    """(B, heads or 1, K0): ``w_h * v_j`` in the scores' dtype, built once per layer and boost block."""
    weight = key_weight[:, None, :].to(device, torch.float32)
    if head_weight is not None:
        weight = weight * head_weight[None, :, None].to(device, torch.float32)
    return weight.to(dtype)


def _decode_weight(key_weight: Tensor, head_weight: Tensor | None, scaling: float, length: int,
                   dtype: torch.dtype, device: torch.device) -> Tensor:
    """(B, heads or 1, 1, length): ``scaling * w_h * v_j``, zero beyond the prompt's keys, for
    :func:`_boosted_decode`; built once per layer and boost block (again only if the keys outgrow it)."""
    weight = _layer_weight(key_weight, head_weight, torch.float32, device) * scaling
    weight = F.pad(weight, (0, max(0, length - weight.shape[-1])))
    return weight[:, :, None, :].to(dtype)


def _boosted_decode(query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None, scaling: float,
                    weight: Tensor) -> Tensor:
    """Attention of one query (a decode step) with the boost, through sdpa: for keys the mask leaves visible,
    ``z + w |z|`` is ``z`` plus the additive bias ``scaling * w |q . k|``, so the bias (with the mask) goes
    in sdpa's ``attn_mask``. Four kernels (matmul, abs, addcmul, sdpa) where eager attention with the boost
    needs about nine; it never forms the softmax, so it serves only when no capture needs the weights.
    Returns (B, 1, heads, head_dim), like the attention functions."""
    (batch, heads, _, dim), length = query.shape, key.shape[-2]
    raw = torch.bmm(query.reshape(batch * heads, 1, dim), key.reshape(batch * heads, length, dim).transpose(1, 2))
    raw = raw.view(batch, heads, 1, length).abs_()  # |q . k|
    if attention_mask is None:
        bias = raw.mul_(weight[..., :length])
    else:
        bias = torch.addcmul(attention_mask[:, :, :, :length], weight[..., :length], raw).to(query.dtype)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scaling)
    return out.transpose(1, 2).contiguous()


def _boost_last_row(scores: Tensor, weight: Tensor) -> Tensor:
    """In place, ``z_j + w_hj |z_j|`` on the last query row for the keys ``weight`` (B, H or 1, K0) covers
    (the prompt's); two kernels (abs, addcmul). Serves prompt passes and steps whose weights are captured."""
    n = min(weight.shape[-1], scores.shape[-1])
    last = scores[:, :, -1, :n]
    last.addcmul_(weight[..., :n], last.abs())
    return scores


def _mask(*args, **kwargs) -> Tensor | None:
    """Eager attention's additive mask, except for a single query with nothing padded: no mask at all (it may
    see every key), as transformers gives sdpa. That spares each decode step the dozen small operations that
    build a ``(B, 1, 1, K)`` tensor of zeros."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if args or kwargs.get("q_length") != 1:
        return ALL_MASK_ATTENTION_FUNCTIONS["eager"](*args, **kwargs)
    kwargs.pop("allow_is_causal_skip", None)
    dtype = kwargs.pop("dtype", torch.float32)
    mask = sdpa_mask(allow_is_causal_skip=True, **kwargs)  # bool (True: attend) or None
    if mask is None:
        return None
    return torch.where(mask, torch.zeros((), device=mask.device, dtype=dtype), torch.finfo(dtype).min)


def register_attention() -> None:
    """Register ``vizoo_eager`` with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, _attention)
    AttentionMaskInterface.register(ATTENTION_NAME, _mask)


# ------------------------------------------------------------------------------------------------ adapters
def _find(model: nn.Module, paths: Sequence[str]) -> nn.Module | None:
    for path in paths:
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    return None


class VLMAdapter:
    """What vizoo needs to know about one VLM family. Build one with :func:`get_adapter`.

    Attributes:
        model: the wrapped ``...ForConditionalGeneration`` model (its language model now uses ``vizoo_eager``).
        layers: the language model's decoder layers.
        image_token_id: the id that marks image positions in ``input_ids``.
    """

    family = ""
    model_types: tuple[str, ...] = ()

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config
        self.image_token_id = int(self.config.image_token_id)
        paths = ("model.language_model.layers", "language_model.model.layers", "language_model.layers")
        layers = _find(model, paths)
        if layers is None:
            raise ValueError(f"cannot find the language model's decoder layers in {type(model).__name__}")
        self.layers: nn.ModuleList = layers
        self._switch_attention()
        self.state = AttentionState()
        for layer in self.layers:
            layer.self_attn._vizoo_state = self.state

    # -- attention implementation
    def _switch_attention(self) -> None:
        register_attention()
        text_config = getattr(self.config, "text_config", self.config)
        current = getattr(text_config, "_attn_implementation", None)
        if current != ATTENTION_NAME:
            if current not in (None, "eager"):
                logger.warning("vizoo.vlm: the language model used %r attention, which hides the attention "
                               "scores; switched it to %r (eager math). The vision tower is unchanged.",
                               current, ATTENTION_NAME)
            self.model.set_attn_implementation({"text_config": ATTENTION_NAME})
        if getattr(text_config, "_attn_implementation", None) != ATTENTION_NAME:
            raise ValueError(f"could not switch the language model of {type(self.model).__name__} to "
                             f"{ATTENTION_NAME!r} attention (it reports {text_config._attn_implementation!r})")

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def pad_id(self) -> int:
        """The id that pads a batch row (from the generation or text config; 0 when neither has one)."""
        pad = self.model.generation_config.pad_token_id
        if pad is None:
            pad = getattr(getattr(self.config, "text_config", self.config), "pad_token_id", None)
        if isinstance(pad, (list, tuple)):
            pad = pad[0]
        return 0 if pad is None else int(pad)

    def check_layers(self, layers: Iterable[int], what: str = "layers") -> list[int]:
        layers = sorted({int(i) for i in layers})
        if not layers:
            raise ValueError(f"{what} is empty; give decoder layer indices in [0, {self.num_layers})")
        bad = [i for i in layers if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(f"{what} {bad} out of range: this language model has {self.num_layers} decoder "
                             f"layers (indices 0..{self.num_layers - 1})")
        return layers

    # -- prompts and inputs
    def prompt(self, processor, question: str, num_images: int = 1) -> str:
        """The chat prompt for ``question`` with ``num_images`` images before it."""
        if getattr(processor, "chat_template", None):
            content = [{"type": "image"}] * num_images + [{"type": "text", "text": question}]
            messages = [{"role": "user", "content": content}]
            return processor.apply_chat_template(messages, add_generation_prompt=True)
        return self.default_prompt(question, num_images)

    def default_prompt(self, question: str, num_images: int) -> str:
        raise NotImplementedError

    def inputs(self, processor, images: Sequence, question: str) -> dict:
        """Processor output for one prompt (batch 1) on the model's device, floats in the model's dtype."""
        text = self.prompt(processor, question, len(images))
        batch = processor(images=list(images) or None, text=[text], return_tensors="pt")
        device, dtype = self.model.device, self.model.dtype
        return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.items()}

    def text_only(self, inputs: dict) -> dict:
        """The same prompt with the image tokens (and their markers) removed: PAINT's text-only pass."""
        ids = inputs["input_ids"]
        if ids.shape[0] != 1:
            raise ValueError("the text-only pass handles batch size 1 only")
        keep = ~self.marker_mask(ids)[0]
        out = {"input_ids": ids[:, keep]}
        if "attention_mask" in inputs:
            out["attention_mask"] = inputs["attention_mask"][:, keep]
        if "mm_token_type_ids" in inputs:
            out["mm_token_type_ids"] = inputs["mm_token_type_ids"][:, keep]
        return out

    def marker_mask(self, input_ids: Tensor) -> Tensor:
        return input_ids == self.image_token_id

    # -- where the image is
    def image_mask(self, input_ids: Tensor) -> Tensor:
        """(B, S) bool, True on image-token positions; a ValueError when a prompt has none."""
        mask = input_ids == self.image_token_id
        if not bool(mask.any(dim=-1).all()):
            raise ValueError(f"the prompt has no image tokens (id {self.image_token_id}); put the processor's "
                             "image placeholder in the text and pass the image to the processor")
        return mask

    def image_grid(self, inputs: dict) -> tuple[int, int]:
        """(rows, cols) of the first image's token grid."""
        raise NotImplementedError

    def grid_positions(self, inputs: dict) -> Tensor:
        """Sequence positions of the first image's grid tokens in row-major order (batch 1): a long tensor
        of length rows * cols."""
        raise NotImplementedError

    # -- capture and boost
    @contextlib.contextmanager
    def capture(self, layers: Iterable[int], deferred: bool = False) -> Iterator[dict[int, list[Tensor]]]:
        """Record the last query's attention row in each of ``layers``, once per forward pass.

        Yields a dict layer -> list over forward passes of (B, heads, keys) float32 rows; with a KV cache the
        list runs over generated tokens (the first entry is the prompt's last position). ``deferred`` is for
        compiled decode steps
        (``torch.compile``, CUDA graphs): each forward leaves its rows in one fixed slot per layer, and the
        :class:`KeepCaptured` logits processor, which ``generate`` calls after every forward, appends copies;
        appending inside a compiled step would make every step compile again (the list's length is guarded)
        and keep tensors that the next CUDA-graph replay overwrites.
        """
        layers = frozenset(self.check_layers(layers))
        self._switch_attention()  # someone may have set another implementation since the adapter was built
        state = self.state
        saved = state.capture_layers, state.rows, state.capture_batch, state.deferred, state.latest
        state.capture_layers, state.rows, state.capture_batch = layers, {}, None
        state.deferred, state.latest = deferred, {}
        try:
            yield state.rows
        finally:
            state.capture_layers, state.rows, state.capture_batch, state.deferred, state.latest = saved

    @contextlib.contextmanager
    def boost(self, layers: Iterable[int], key_weight: Tensor,
              head_weight: dict[int, Tensor] | None = None) -> Iterator[AttentionState]:
        """Add ``head_weight[l][h] * key_weight[b, j] * |z|`` to the last query's pre-softmax score on key j.

        Args:
            layers: decoder layers to modify.
            key_weight: (B, K0) float; keys at and beyond K0 (e.g. generated tokens) are left alone.
            head_weight: optional per-layer (heads,) weights; layers not in it use 1 for every head.
        """
        layers = frozenset(self.check_layers(layers))
        self._switch_attention()
        state = self.state
        saved = state.boost_layers, state.key_weight, state.head_weight, state.layer_weight, state.decode_weight
        state.boost_layers, state.key_weight, state.head_weight = layers, key_weight, dict(head_weight or {})
        state.layer_weight, state.decode_weight = {}, {}
        try:
            yield state
        finally:
            (state.boost_layers, state.key_weight, state.head_weight, state.layer_weight,
             state.decode_weight) = saved

    @contextlib.contextmanager
    def fused_elsewhere(self) -> Iterator[None]:
        """Inside the block, decoder layers that neither capture nor boost run transformers' ``sdpa`` attention
        (a fused kernel; the same math up to rounding) instead of eager; with no capture or boost open, all do."""
        saved, self.state.fused_elsewhere = self.state.fused_elsewhere, True
        try:
            yield
        finally:
            self.state.fused_elsewhere = saved

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Plain eager attention inside the block (no capture, no boost)."""
        saved, self.state.enabled = self.state.enabled, False
        try:
            yield
        finally:
            self.state.enabled = saved


class KeepCaptured:
    """A logits processor for ``generate`` inside ``capture(..., deferred=True)``: after each forward, append a
    copy of every layer's latest row to the captured lists."""

    def __init__(self, adapter: VLMAdapter):
        self.state = adapter.state

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        for layer, row in self.state.latest.items():
            self.state.rows.setdefault(layer, []).append(row.clone())
        return scores


class LlavaAdapter(VLMAdapter):
    """LLaVA-1.5 and LLaVA-NeXt (``llava``, ``llava_next``): a CLIP-style tower and a square patch grid.

    LLaVA-NeXt puts the base (low-resolution) image's grid first in each image's token block, followed by the
    high-resolution tiles; the grid used here is that base grid.
    """

    family = "llava"
    model_types = ("llava", "llava_next")

    def default_prompt(self, question: str, num_images: int) -> str:
        return "USER: " + "<image>\n" * num_images + f"{question} ASSISTANT:"

    def _side(self) -> int:
        vision = self.config.vision_config
        return int(vision.image_size) // int(vision.patch_size)

    def image_grid(self, inputs: dict) -> tuple[int, int]:
        return self._side(), self._side()

    def grid_positions(self, inputs: dict) -> Tensor:
        positions = self.image_mask(inputs["input_ids"])[0].nonzero().flatten()
        side = self._side()
        strategy = getattr(self.config, "vision_feature_select_strategy", "default")
        start = 1 if strategy == "full" else 0  # "full" keeps CLS as the first image token
        grid = positions[start: start + side * side]
        if grid.numel() != side * side:
            raise ValueError(f"expected at least {side * side} image tokens for a {side}x{side} grid, "
                             f"found {positions.numel()}")
        return grid

    def vision_tower(self) -> nn.Module:
        return _find(self.model, ("model.vision_tower", "vision_tower"))


class QwenVLAdapter(VLMAdapter):
    """Qwen2-VL and Qwen2.5-VL: patches merged ``merge x merge`` before the language model; the grid comes
    from ``image_grid_thw`` and the image tokens sit between ``<|vision_start|>`` and ``<|vision_end|>``."""

    family = "qwen-vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")

    def default_prompt(self, question: str, num_images: int) -> str:
        image = "<|vision_start|><|image_pad|><|vision_end|>"
        return f"<|im_start|>user\n{image * num_images}{question}<|im_end|>\n<|im_start|>assistant\n"

    def marker_mask(self, input_ids: Tensor) -> Tensor:
        c = self.config
        return ((input_ids == self.image_token_id) | (input_ids == c.vision_start_token_id)
                | (input_ids == c.vision_end_token_id))

    def _merge(self) -> int:
        return int(self.config.vision_config.spatial_merge_size)

    def image_grid(self, inputs: dict) -> tuple[int, int]:
        if inputs.get("image_grid_thw") is None:
            raise ValueError("Qwen-VL inputs need image_grid_thw (pass the image through the processor)")
        t, h, w = (int(v) for v in inputs["image_grid_thw"][0])
        return h // self._merge(), w // self._merge()

    def grid_positions(self, inputs: dict) -> Tensor:
        positions = self.image_mask(inputs["input_ids"])[0].nonzero().flatten()
        t = int(inputs["image_grid_thw"][0][0])
        rows, cols = self.image_grid(inputs)
        grid = positions[: rows * cols]  # one image has t frames; an image has t = 1
        if t != 1 or grid.numel() != rows * cols:
            raise ValueError(f"expected a still image with {rows * cols} tokens, got t={t} and "
                             f"{positions.numel()}")
        return grid


ADAPTERS: tuple[type[VLMAdapter], ...] = (LlavaAdapter, QwenVLAdapter)


def supported_model_types() -> list[str]:
    return [t for a in ADAPTERS for t in a.model_types]


def get_adapter(model: nn.Module) -> VLMAdapter:
    """The adapter for ``model``'s family (reused if one was built before); a ValueError lists the supported
    ones."""
    existing = getattr(model, "_vizoo_adapter", None)
    if existing is not None:
        return existing
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for cls in ADAPTERS:
        if model_type in cls.model_types:
            adapter = cls(model)
            model._vizoo_adapter = adapter
            return adapter
    raise ValueError(f"no vizoo.vlm adapter for model type {model_type!r} ({type(model).__name__}); supported "
                     f"model types: {', '.join(supported_model_types())}")
