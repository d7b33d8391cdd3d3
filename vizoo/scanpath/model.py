"""OAT: the Object-level Attention Transformer for gaze scanpath prediction in visual search.

Paper: Fang, Yu, Zhang, van der Lans, Shi. "OAT: Object-Level Attention Transformer for Gaze Scanpath
Prediction." ECCV 2024, arXiv 2407.13335. Official code: github.com/HKUST-NISL/oat_eccv24 (no licence file).
This file is written from the paper and from reading that code; nothing is copied.

The model predicts a scanpath as a sequence of object indices followed by a stop token. Each object becomes a
token ``[appearance ; position]``: the appearance of its crop from a small CNN trained from scratch (or any
timm backbone) and a fitted positional code of where it is. One more encoder token describes the target
(its crop, its position, a flag set to 1). A transformer decoder reads the objects fixated so far (BOS first)
and, at every step, an object-attention head scores each encoder token against the decoder state: picking
an object means fixating it, picking the target token means stopping.

Faithful to the paper / official code:
    * token layout (appearance and positional halves concatenated, no 1-D position on the encoder side),
      BOS at the display centre, decoder tokens built the same way plus a sinusoidal time code and a causal
      mask; nn.Transformer encoder-decoder (defaults: d_model 512 = 256 + 256, 4 heads, FFN 512, 4 + 4 layers,
      dropout 0.1, Xavier-uniform initialisation);
    * the small CNN (conv5x5(16), max-pool 5, conv3x3(32), max-pool 3, linear to 256; 1440 flattened features
      for OAT's 150x93 crops);
    * the positional code: a table whose rows' cosine similarity is fitted to a Gaussian of their index
      distance (sigma 2) with a penalty pulling row norms to their mean, fitted by Adam; an object's code is
      ``[E[row] ; E[col] ; E[flag]]`` truncated to the positional width;
    * the output head: 2 heads of scaled dot products between projected encoder outputs and the projected
      decoder state, mixed by a learned Linear(2 -> 1); stopping is scored as attending to the target token;
      token-level cross-entropy under teacher forcing; greedy decoding forbids stopping at step 1.

Differs, and why:
    * positions are each box centre quantised into ``position_bins`` bins per axis (default 16) rather than
      the display's row and column, so that any layout of boxes works (a grid of up to 16 columns and rows
      keeps one bin per cell); the table is fitted when the model is built (seeded, a second or so) and kept
      as a buffer in the state dict, instead of being shipped as an ``.npy`` file; the fit starts from the
      kernel matrix's eigendecomposition (exact when the width is at least the number of bins, as with OAT's
      86 columns) and needs 300 Adam steps rather than OAT's 10k from a random start;
    * the target token comes first and the stop class is index 0 (objects are 1..N), so that scenes with
      different object counts batch together with padding masks; there is no PAD class (padding is masked);
    * the blank BOS patch is zeros everywhere (the official code uses ones in training and zeros at test);
    * crops default to 32x32 for the synthetic displays (OAT: 150x93); the CNN's flattened size follows;
      crops in [0, 1] are standardised as ``(x - 0.5) / 0.25`` before the appearance encoder (OAT feeds the
      [0, 1] values; centred inputs train faster from scratch).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vizoo.utils import unknown_name_error


def fit_positional_table(
    num_positions: int, dim: int, sigma: float = 2.0, steps: int = 300, lr: float = 0.01, seed: int = 0
) -> Tensor:
    """A ``[num_positions, dim]`` table whose rows' cosine similarities approximate ``exp(-(a-b)^2 / (2 sigma^2))``.

    The loss is the mean squared error of the cosine similarities plus the mean squared deviation of the row
    norms from their mean (OAT's objective). It starts from the best rank-``dim`` factor of the Gaussian kernel
    matrix (its top eigenvectors scaled by the square roots of their eigenvalues, plus a little seeded noise),
    which already is the exact optimum when ``dim >= num_positions``, and is refined with Adam. The fit is
    deterministic, so it is cached per argument set (a copy is returned)."""
    return _fit_positional_table(num_positions, dim, float(sigma), steps, lr, seed).clone()


@functools.lru_cache(maxsize=16)
def _fit_positional_table(num_positions: int, dim: int, sigma: float, steps: int, lr: float, seed: int) -> Tensor:
    if num_positions < 2 or dim < 1 or sigma <= 0:
        raise ValueError(f"need num_positions >= 2, dim >= 1, sigma > 0; got {num_positions}, {dim}, {sigma}")
    index = torch.arange(num_positions, dtype=torch.float64)
    goal = torch.exp(-((index[:, None] - index[None]) ** 2) / (2 * sigma**2))
    values, vectors = torch.linalg.eigh(goal)  # ascending
    rank = min(dim, num_positions)
    start = torch.zeros(num_positions, dim, dtype=torch.float64)
    start[:, :rank] = vectors[:, -rank:] * values[-rank:].clamp(min=0).sqrt()
    generator = torch.Generator().manual_seed(seed)
    table = (start.float() + 1e-3 * torch.randn(num_positions, dim, generator=generator)).requires_grad_()
    goal = goal.float()
    optimizer = torch.optim.Adam([table], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            unit = F.normalize(table, dim=1)
            norms = table.norm(dim=1)
            loss = F.mse_loss(unit @ unit.T, goal) + ((norms - norms.mean()) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return table.detach()


class SmallCNN(nn.Module):
    """OAT's appearance encoder: conv5x5(16) - ReLU - max-pool 5 - conv3x3(32) - ReLU - max-pool 3 - linear."""

    def __init__(self, crop_size: tuple[int, int], out_dim: int):
        super().__init__()
        if min(crop_size) < 29:
            raise ValueError(f"the small CNN needs crops of at least 29x29 pixels, got crop_size={tuple(crop_size)}")
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 5), nn.ReLU(), nn.MaxPool2d(5),
            nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(3), nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, 3, *crop_size)).shape[1]  # 1440 for OAT's 150x93 crops
        self.fc = nn.Linear(flat, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


class TimmAppearance(nn.Module):
    """Any timm backbone (pooled features, no classifier) followed by a linear map to ``out_dim``."""

    def __init__(self, name: str, out_dim: int, pretrained: bool = False, **kwargs: Any):
        super().__init__()
        if name not in timm.list_models() and not name.startswith(("hf-hub:", "hf_hub:")):
            raise unknown_name_error("appearance backbone", name, ["cnn", *timm.list_models()])
        self.backbone = timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
        self.fc = nn.Linear(self.backbone.num_features, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.backbone(x))


def sinusoidal(length: int, dim: int) -> Tensor:
    """The standard 1-D sinusoidal code ``[length, dim]`` (sin on even, cos on odd channels)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    code = torch.zeros(length, dim)
    code[:, 0::2] = torch.sin(position * freq)
    code[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return code


class ObjectAttentionHead(nn.Module):
    """Per head h: ``s_h[t, i] = (W_e^h e_i) . (W_d^h d_t) / sqrt(d)``; the heads are mixed by Linear(h -> 1)."""

    def __init__(self, dim: int, heads: int = 2):
        super().__init__()
        self.heads, self.dim = heads, dim
        self.enc = nn.Linear(dim, heads * dim)
        self.dec = nn.Linear(dim, heads * dim)
        self.mix = nn.Linear(heads, 1)

    def forward(self, decoded: Tensor, memory: Tensor) -> Tensor:
        b, t, _ = decoded.shape
        q = self.dec(decoded).view(b, t, self.heads, self.dim)
        k = self.enc(memory).view(b, memory.shape[1], self.heads, self.dim)
        scores = torch.einsum("bthd,bnhd->btnh", q, k) / math.sqrt(self.dim)
        return self.mix(scores).squeeze(-1)


class OAT(nn.Module):
    """Object-level Attention Transformer (see the module docstring).

    Args:
        appearance: ``"cnn"`` for OAT's small CNN, or a timm model name for the crop encoder.
        appearance_kwargs: extra ``timm.create_model`` arguments for a timm appearance encoder.
        crop_size: (height, width) every object crop is resized to.
        appearance_dim: width of the appearance half of a token.
        position_dim: width of the positional half of a token.
        position_bins: bins per axis that box centres are quantised into.
        position_sigma: the Gaussian width (in bins) of the fitted positional code.
        num_heads: attention heads of the transformer.
        ffn_dim: feed-forward width of the transformer.
        encoder_layers: transformer encoder depth.
        decoder_layers: transformer decoder depth.
        dropout: transformer dropout.
        output_heads: heads of the object-attention output.
        max_steps: the longest decoder sequence (BOS included) the time code covers.

    Batches are dicts from :func:`vizoo.scanpath.data.collate_scenes`: ``crops`` [B, N, 3, h, w], ``centres``
    [B, N, 2] (fractions of width and height), ``valid`` [B, N], ``target`` [B] and, for training,
    ``scanpath`` [B, T] (object indices, -1 padding). Logits are over ``1 + N`` classes: stop, then objects.
    """

    def __init__(
        self,
        appearance: str = "cnn",
        appearance_kwargs: dict[str, Any] | None = None,
        crop_size: tuple[int, int] = (32, 32),
        appearance_dim: int = 256,
        position_dim: int = 256,
        position_bins: int = 16,
        position_sigma: float = 2.0,
        num_heads: int = 4,
        ffn_dim: int = 512,
        encoder_layers: int = 4,
        decoder_layers: int = 4,
        dropout: float = 0.1,
        output_heads: int = 2,
        max_steps: int = 64,
    ):
        super().__init__()
        dim = appearance_dim + position_dim
        if dim % num_heads:
            raise ValueError(f"appearance_dim + position_dim = {dim} must be divisible by num_heads={num_heads}")
        if position_bins < 2:
            raise ValueError(f"position_bins must be >= 2, got {position_bins}")
        self.crop_size = tuple(crop_size)
        self.position_bins, self.position_dim, self.max_steps = position_bins, position_dim, max_steps
        self.appearance = (
            SmallCNN(self.crop_size, appearance_dim) if appearance == "cnn"
            else TimmAppearance(appearance, appearance_dim, **(appearance_kwargs or {}))
        )
        layer = nn.TransformerEncoderLayer(dim, num_heads, ffn_dim, dropout, batch_first=True)
        encoder = nn.TransformerEncoder(layer, encoder_layers, nn.LayerNorm(dim), enable_nested_tensor=False)
        self.transformer = nn.Transformer(
            dim, num_heads, encoder_layers, decoder_layers, ffn_dim, dropout, custom_encoder=encoder, batch_first=True
        )
        self.head = ObjectAttentionHead(dim, output_heads)
        for module in (self.transformer, self.head):
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        width = math.ceil(position_dim / 3)
        self.register_buffer("position_table", fit_positional_table(position_bins, width, position_sigma))
        self.register_buffer("time_code", sinusoidal(max_steps, dim), persistent=False)

    # ------------------------------------------------------------------------------------------------------
    def position_code(self, centres: Tensor, flag: Tensor) -> Tensor:
        """``[..., position_dim]`` codes for centres ``[..., 2]`` (x, y fractions) and target flags ``[...]``."""
        bins = (centres * self.position_bins).long().clamp(0, self.position_bins - 1)
        table = self.position_table
        code = torch.cat([table[bins[..., 1]], table[bins[..., 0]], table[flag.long()]], dim=-1)
        return code[..., : self.position_dim]

    def encode(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Run the encoder once: memory [B, 1 + N, d], its padding mask, and what the decoder reuses."""
        crops, centres, valid, target = batch["crops"], batch["centres"], batch["valid"], batch["target"]
        b, n = valid.shape
        if target.min() < 0 or (target >= valid.sum(1)).any():
            raise ValueError("every target must index a valid object of its scene")
        # the blank BOS patch goes through the encoder with the crops (one call, batch statistics included)
        flat = torch.cat([crops.flatten(0, 1), crops.new_zeros(1, *crops.shape[2:])])
        appearance = self.appearance((flat - 0.5) / 0.25)
        features, blank = appearance[:-1].view(b, n, -1), appearance[-1:]
        rows = torch.arange(b, device=crops.device)
        is_target = torch.zeros_like(valid)
        is_target[rows, target] = True
        objects = torch.cat([features, self.position_code(centres, torch.zeros_like(valid))], -1)
        target_code = self.position_code(centres[rows, target], torch.ones_like(target))
        target_token = torch.cat([features[rows, target], target_code], -1)
        tokens = torch.cat([target_token[:, None], objects], 1)
        padding = torch.cat([valid.new_zeros(b, 1), ~valid], 1)
        memory = self.transformer.encoder(tokens, src_key_padding_mask=padding)
        bos = torch.cat([blank, self.position_code(centres.new_full((1, 2), 0.5), target.new_zeros(1))], -1)
        return {"memory": memory, "padding": padding, "features": features, "centres": centres,
                "is_target": is_target, "bos": bos.expand(b, -1)}

    def decode(self, state: dict[str, Tensor], fixations: Tensor) -> Tensor:
        """Logits ``[B, T + 1, 1 + N]`` after BOS and each of ``fixations`` [B, T] (object indices; a negative
        index is padding and is read as object 0, its outputs being ignored by the caller)."""
        b, t = fixations.shape
        if t + 1 > self.max_steps:
            raise ValueError(f"a decoder sequence of {t + 1} steps exceeds max_steps={self.max_steps}")
        rows = torch.arange(b, device=fixations.device)[:, None]
        index = fixations.clamp(min=0)
        tokens = torch.cat([
            state["features"][rows, index],
            self.position_code(state["centres"][rows, index], state["is_target"][rows, index]),
        ], -1)
        tokens = torch.cat([state["bos"][:, None], tokens], 1) + self.time_code[: t + 1]
        causal = nn.Transformer.generate_square_subsequent_mask(t + 1, device=tokens.device, dtype=tokens.dtype)
        decoded = self.transformer.decoder(
            tokens, state["memory"], tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=state["padding"]
        )
        logits = self.head(decoded, state["memory"])
        return logits.masked_fill(state["padding"][:, None], torch.finfo(logits.dtype).min)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Teacher-forced logits ``[B, T + 1, 1 + N]`` for ``batch["scanpath"]``."""
        return self.decode(self.encode(batch), batch["scanpath"])

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Cross-entropy of the next object at every step and of stopping after the last fixation."""
        logits = self(batch)
        targets = next_object_targets(batch["scanpath"]).flatten()
        return F.cross_entropy(logits.flatten(0, 1), targets, ignore_index=-100)

    @torch.no_grad()
    def generate(
        self,
        batch: dict[str, Tensor],
        max_length: int = 16,
        sample: bool = False,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> list[list[int]]:
        """Predict one scanpath per scene, all scenes at once: greedy (argmax) or sampled from the softmax
        (``temperature`` scales the logits). Stopping is not allowed before the first fixation; a scanpath ends
        at the stop class or after ``max_length`` fixations. Returns object indices per scene."""
        if max_length < 1 or temperature <= 0:
            raise ValueError(f"need max_length >= 1 and temperature > 0, got {max_length}, {temperature}")
        state = self.encode(batch)
        b = state["memory"].shape[0]
        fixations = torch.zeros(b, 0, dtype=torch.long, device=state["memory"].device)
        done = torch.zeros(b, dtype=torch.bool, device=fixations.device)
        for step in range(max_length):
            logits = self.decode(state, fixations)[:, -1].float()
            if step == 0:
                logits[:, 0] = float("-inf")
            if sample:
                probs = torch.softmax(logits / temperature, -1)
                choice = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                choice = logits.argmax(-1)
            done |= choice == 0
            fixations = torch.cat([fixations, torch.where(done, -1, choice - 1)[:, None]], 1)
            if done.all():
                break
        return [[i for i in row if i >= 0] for row in fixations.tolist()]


def next_object_targets(scanpath: Tensor) -> Tensor:
    """Classes ``[B, T + 1]`` for teacher forcing: object i is class i + 1, stop (after the last fixation) is 0,
    padding is -100."""
    b, t = scanpath.shape
    targets = torch.full((b, t + 1), -100, dtype=torch.long, device=scanpath.device)
    lengths = (scanpath >= 0).sum(1)
    targets[:, :t] = torch.where(scanpath >= 0, scanpath + 1, -100)
    targets[torch.arange(b, device=scanpath.device), lengths] = 0
    return targets
