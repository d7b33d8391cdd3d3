"""Check vizoo's InLine models against the official implementation on the same random weights (CPU).

The official code (github.com/LeapLabTHU/InLine, models/inline_{deit,pvt,swin,cswin}.py, written for timm
0.4.12)
is read from a checkout or a git directory you provide; its model files are copied to a temporary directory
outside this project and imported there, with one patch: ``timm.models.registry.register_model`` is replaced
by
a no-op during the import, so the official ``inline_deit_*`` names do not clash with vizoo's. Nothing of it is
written into the project. For each model the official network is built with its released config (random
initialisation), its ``state_dict()`` is wrapped like an official ``.pth`` (``{'model': ...}``), converted by
vizoo's ``checkpoint_filter_fn`` and loaded strictly, and both networks classify the same random images in
eval
mode. Prints (and with ``--out`` writes, atomically, as JSON) the max |logit difference| per model.

    git clone https://github.com/LeapLabTHU/InLine /tmp/InLine
    python tools/check_official_inline.py --official /tmp/InLine [--models inline_swin_tiny,...] [--out FILE]

Needs timm >= 1.0 (its deprecated ``timm.models.layers`` / ``helpers`` / ``registry`` shims) and einops.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import timm
import torch

import vizoo  # noqa: F401
from vizoo.utils import atomic_write_text

FILES = ("inline_deit.py", "inline_pvt.py", "inline_swin.py", "inline_cswin.py")

# vizoo name -> (official module, builder(module) -> model, image size)
_SWIN = dict(
    T=dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], attn_type="IIIS"),
    S=dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], attn_type="IISS"),
    B=dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], attn_type="IIMS2"),
)
MODELS = {
    "inline_deit_tiny": (
        "inline_deit",
        lambda m: m.VisionTransformer(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=6),
        224,
    ),
    "inline_deit_small": (
        "inline_deit",
        lambda m: m.VisionTransformer(img_size=288, patch_size=16, embed_dim=320, depth=12, num_heads=10),
        288,
    ),
    "inline_deit_base": (
        "inline_deit",
        lambda m: m.VisionTransformer(img_size=448, patch_size=16, embed_dim=384, depth=12, num_heads=12),
        448,
    ),
    **{
        f"inline_pvt_{s}": (
            "inline_pvt",
            lambda m, s=s: getattr(m, f"inline_pvt_{s}")(img_size=224, attn_type="IIII", la_sr_ratios="1111"),
            224,
        )
        for s in ("tiny", "small", "medium", "large")
    },
    "inline_swin_tiny": ("inline_swin", lambda m: m.InLineSwin(window_size=56, **_SWIN["T"]), 224),
    "inline_swin_small": ("inline_swin", lambda m: m.InLineSwin(window_size=56, **_SWIN["S"]), 224),
    "inline_swin_base": ("inline_swin", lambda m: m.InLineSwin(window_size=56, **_SWIN["B"]), 224),
    "inline_swin_base_384": (
        "inline_swin",
        lambda m: m.InLineSwin(img_size=384, window_size=96, **_SWIN["B"]),
        384,
    ),
    **{
        f"inline_cswin_{s}": (
            "inline_cswin",
            lambda m, s=s: getattr(m, f"inline_cswin_{s}")(
                img_size=224, attn_type="IISS", la_split_size="56-28-14-7"
            ),
            224,
        )
        for s in ("tiny", "small", "base")
    },
    "inline_cswin_base_384": (
        "inline_cswin",
        lambda m: m.inline_cswin_base_384(img_size=384, attn_type="IISS", la_split_size="96-48-24-12"),
        384,
    ),
}


def _copy_official(source: Path, dest: Path) -> None:
    """Copy the four model files from a checkout (``source/models``) or a git directory (``HEAD:models``)."""
    pkg = dest / "inline_official"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in FILES:
        if (source / "models" / name).is_file():
            text = (source / "models" / name).read_text()
        else:
            text = subprocess.run(
                ["git", "--git-dir", str(source), "show", f"HEAD:models/{name}"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        (pkg / name).write_text(text)


def _import_official(dest: Path, module: str):
    sys.path.insert(0, str(dest))
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda fn: fn  # keep the official names out of timm's registry
    saved = sys.modules.get("timm.models.registry")
    sys.modules["timm.models.registry"] = registry
    try:
        return importlib.import_module(f"inline_official.{module}")
    finally:
        if saved is not None:
            sys.modules["timm.models.registry"] = saved
        sys.path.remove(str(dest))


def compare(name: str, dest: Path, batch: int = 2, seed: int = 0) -> tuple:
    """Returns (max |logit difference|, max |official logit|)."""
    module, build, size = MODELS[name]
    torch.manual_seed(seed)
    official = build(_import_official(dest, module)).eval()
    ours = timm.create_model(name).eval()
    filter_fn = importlib.import_module(type(ours).__module__).checkpoint_filter_fn
    ours.load_state_dict(filter_fn({"model": official.state_dict(), "epoch": 0}, ours), strict=True)
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        reference = official(x)
        return (reference - ours(x)).abs().max().item(), reference.abs().max().item()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--official",
        required=True,
        type=Path,
        help="checkout or git directory of github.com/LeapLabTHU/InLine",
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated vizoo names")
    parser.add_argument("--out", type=Path, help="write the results per model as JSON here")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    if not args.official.exists():
        raise SystemExit(f"--official {args.official} does not exist (clone github.com/LeapLabTHU/InLine)")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        _copy_official(args.official, Path(tmp))
        for name in names:
            start = time.time()
            diff, scale = compare(name, Path(tmp))
            results[name] = dict(max_abs_logit_diff=diff, max_abs_logit=scale)
            print(
                f"{name:24s} max |logit diff| {diff:.3e}  "
                f"(max |logit| {scale:.3f}; {time.time() - start:.0f} s)",
                flush=True,
            )
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
