"""Compare vizoo's NAT / DiNAT / isotropic models with the official code, through vizoo's checkpoint converter.

The official models need NATTEN 0.14's ``NeighborhoodAttention2D`` module, whose C++/CUDA ops current NATTEN
releases removed and which does not build here. This script stands in for them: it writes a throw-away
``natten`` package into a temporary folder holding NATTEN v0.14.6's own module file (read from your NATTEN
clone with ``git show``) and ``natten2dqkrpb`` / ``natten2dav`` written on vizoo's reference index math. Then,
for each model, it gives the official model random weights (RPB and LayerNorm affines included), converts its
state dict with ``vizoo.backbones.nat.checkpoint_filter_fn``, loads it strictly into vizoo's model and prints
the largest logit difference (fp32, CPU, two 224x224 images). With ``--hf``, it does the same for the Hugging
Face transformers layout (``Nat/DinatForImageClassification``, transformers <= 4.47 ships them). Nothing
official is copied into the repository.

    git clone https://github.com/SHI-Labs/Neighborhood-Attention-Transformer nat-official
    git clone https://github.com/SHI-Labs/NATTEN natten-src
    python tools/check_official_nat.py --official nat-official --natten natten-src [--hf] [nat_mini ...]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SHIM = '''"""natten2dqkrpb / natten2dav (NATTEN 0.14, heads-first [B, heads, H, W, d]) on vizoo's reference indices."""
import torch
from vizoo.kernels.neighborhood.reference import neighborhood_indices


def _idx(H, W, ks, dil, device):
    return neighborhood_indices((H, W), (ks, ks), (dil, dil), (1, 1), (False, False), device)


def natten2dqkrpb(q, k, rpb, kernel_size, dilation):
    B, h, H, W, d = q.shape
    key, _, rel = _idx(H, W, kernel_size, dilation, q.device)
    attn = torch.einsum("bhnd,bhnkd->bhnk", q.reshape(B, h, H * W, d), k.reshape(B, h, H * W, d)[:, :, key])
    if rpb is not None:
        attn = attn + rpb.reshape(h, -1)[:, rel][None]
    return attn.reshape(B, h, H, W, -1)


def natten2dav(attn, v, kernel_size, dilation):
    B, h, H, W, d = v.shape
    key, _, _ = _idx(H, W, kernel_size, dilation, v.device)
    out = torch.einsum("bhnk,bhnkd->bhnd", attn.reshape(B, h, H * W, -1), v.reshape(B, h, H * W, d)[:, :, key])
    return out.reshape(B, h, H, W, d)
'''

OFFICIAL = {  # vizoo name -> (official module, function)
    "nat_mini": ("nat", "nat_mini"), "nat_tiny": ("nat", "nat_tiny"), "nat_small": ("nat", "nat_small"),
    "nat_base": ("nat", "nat_base"), "dinat_mini": ("dinat", "dinat_mini"), "dinat_tiny": ("dinat", "dinat_tiny"),
    "dinat_small": ("dinat", "dinat_small"), "dinat_base": ("dinat", "dinat_base"),
    "dinat_large": ("dinat", "dinat_large"), "nat_iso_small": ("isotropic", "nat_isotropic_small"),
    "dinat_iso_small": ("isotropic", "dinat_isotropic_small"), "nat_iso_base": ("isotropic", "nat_isotropic_base"),
    "dinat_iso_base": ("isotropic", "dinat_isotropic_base"),
}
HF = {  # vizoo name -> (transformers class prefix, config kwargs)
    "nat_mini": ("Nat", dict(depths=[3, 4, 6, 5])),
    "nat_tiny": ("Nat", dict(depths=[3, 4, 18, 5])),
    "dinat_mini": ("Dinat", dict(depths=[3, 4, 6, 5], dilations=[[1, 8, 1], [1, 4, 1, 4], [1, 2] * 3, [1] * 5])),
    "dinat_tiny": ("Dinat", dict(depths=[3, 4, 18, 5], dilations=[[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5])),
}


def _shim_package(natten_repo: Path, tag: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix="natten_shim_"))
    pkg = root / "natten"
    pkg.mkdir()
    module = subprocess.run(["git", "-C", str(natten_repo), "show", f"{tag}:src/natten/natten2d.py"],
                            check=True, capture_output=True, text=True).stdout
    (pkg / "natten2d.py").write_text(module)
    (pkg / "functional.py").write_text(SHIM)
    (pkg / "__init__.py").write_text("from .natten2d import NeighborhoodAttention2D\n")
    return root


def _compare(name: str, reference: torch.nn.Module, x: torch.Tensor, label: str, call=None) -> float:
    import timm

    from vizoo.backbones.nat import checkpoint_filter_fn

    reference.eval()
    with torch.no_grad():  # random weights everywhere, so that no converted tensor is trivially zero or one
        for p in reference.parameters():
            p.normal_(0, 0.02 if p.dim() > 1 else 0.5)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    ours = timm.create_model(name, pretrained=False).eval()
    ours.load_state_dict(checkpoint_filter_fn(state, ours), strict=True)
    with torch.no_grad():
        a = call(reference, x) if call else reference(x)
        b = ours(x)
    diff = (a - b).abs().max().item()
    n_ref, n_ours = (sum(p.numel() for p in m.parameters()) for m in (reference, ours))
    print(f"{name} ({label}): params {n_ref:,} / vizoo {n_ours:,}; max |logit diff| {diff:.3e} "
          f"(max |logit| {a.abs().max().item():.3f})", flush=True)
    return diff


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", type=Path, required=True, help="clone of Neighborhood-Attention-Transformer")
    p.add_argument("--natten", type=Path, required=True, help="clone of NATTEN (for its v0.14.6 module file)")
    p.add_argument("--natten-tag", default="v0.14.6")
    p.add_argument("--hf", action="store_true", help="also check the transformers layout (needs transformers<=4.47)")
    p.add_argument("models", nargs="*", help="vizoo model names (default: all)")
    args = p.parse_args(argv)
    sys.path[:0] = [str(_shim_package(args.natten, args.natten_tag)), str(args.official / "classification")]
    import importlib

    import timm.models.registry as legacy_registry  # what the official files import register_model from

    import vizoo  # noqa: F401  (registers vizoo's models first)

    register = legacy_registry.register_model
    legacy_registry.register_model = lambda fn: fn  # keep the official names out of timm's registry

    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    worst = 0.0
    try:
        for name in args.models or list(OFFICIAL):
            module, fn = OFFICIAL[name]
            worst = max(worst, _compare(name, getattr(importlib.import_module(module), fn)(), x, "official .pth"))
    finally:
        legacy_registry.register_model = register
    if args.hf:
        import transformers
        import transformers.utils.import_utils as import_utils

        import_utils._natten_available = True
        from natten import functional as shim

        for path in ("transformers.models.deprecated.nat.modeling_nat", "transformers.models.dinat.modeling_dinat"):
            mod = importlib.import_module(path)
            mod.natten2dqkrpb, mod.natten2dav = shim.natten2dqkrpb, shim.natten2dav
        for name in [m for m in (args.models or list(HF)) if m in HF]:
            prefix, kwargs = HF[name]
            config = getattr(transformers, f"{prefix}Config")(
                embed_dim=64, num_heads=[2, 4, 8, 16], mlp_ratio=3.0, kernel_size=7, num_labels=1000, **kwargs)
            model = getattr(transformers, f"{prefix}ForImageClassification")(config)
            worst = max(worst, _compare(name, model, x, "transformers", lambda m, x: m(pixel_values=x).logits))
    print(f"largest difference: {worst:.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
