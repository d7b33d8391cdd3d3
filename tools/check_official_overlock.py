"""Compare vizoo's OverLoCK models with the official code on the same random weights, in both checkpoint forms.

The official ``models/overlock.py`` (github.com/LMMMEng/OverLoCK) imports NATTEN 0.17's ``na2d_av`` (removed from
NATTEN >= 0.20) and mmengine. This script reads that file from your clone (work tree or bare git directory, with
``git show``), writes it into a temporary folder beside two throw-away stand-ins, ``natten.functional.na2d_av``
(heads-first, on vizoo's reference ``na2d_av``) and ``mmengine.runner.load_checkpoint`` (unused), and imports it
there; nothing official enters the repository. For each variant it:

1. builds the official model (train form), gives every parameter and BN statistic random values (relative
   position biases, GRN and layer scales included), and runs two 224x224 images (fp32, CPU, eval mode);
2. converts its state dict with ``vizoo.backbones.overlock.checkpoint_filter_fn`` into vizoo's train form
   (``aux_head=True``) and deploy form (``deploy=True``) and prints the largest logit difference of each;
3. compares the training-mode outputs (batch-statistics BN, main and auxiliary logits) of the train forms;
4. calls the official ``reparam()`` and loads that deploy-form state dict into vizoo's deploy and train forms;
5. prints both codes' multiply-accumulates at 224 (FlopCounterMode / 2, deploy form).

    git clone https://github.com/LMMMEng/OverLoCK overlock-official
    python tools/check_official_overlock.py --official overlock-official [overlock_xt ...] [--markdown F]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import io
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

NATTEN_STANDIN = '''"""natten 0.17's na2d_av (heads-first [B, G, H, W, k*k] / [B, G, H, W, c]) on vizoo's reference."""
from vizoo.kernels.contmix.reference import na2d_av_reference


def na2d_av(attn, value, kernel_size, dilation=1):
    out = na2d_av_reference(attn.permute(0, 2, 3, 1, 4), value.permute(0, 2, 3, 1, 4), (kernel_size,) * 2,
                            (dilation,) * 2)
    return out.permute(0, 3, 1, 2, 4)
'''
MMENGINE_STANDIN = "def load_checkpoint(*args, **kwargs):\n    raise RuntimeError('not used by the check')\n"
VARIANTS = ("overlock_xt", "overlock_t", "overlock_s", "overlock_b")


def _read_official(path: Path) -> str:
    file = path / "models" / "overlock.py"
    if file.is_file():
        return file.read_text()
    git_dir = path if (path / "HEAD").is_file() else path / ".git"
    return subprocess.run(["git", f"--git-dir={git_dir}", "show", "HEAD:models/overlock.py"], check=True,
                          capture_output=True, text=True).stdout


def load_official(path: Path):
    """Import the official models/overlock.py with the stand-ins (its timm registrations are skipped)."""
    root = Path(tempfile.mkdtemp(prefix="overlock_official_"))
    standins = {"natten": {"functional.py": NATTEN_STANDIN}, "mmengine": {"runner.py": MMENGINE_STANDIN}}
    for pkg, files in standins.items():
        (root / pkg).mkdir()
        (root / pkg / "__init__.py").write_text("")
        for name, text in files.items():
            (root / pkg / name).write_text(text)
    (root / "overlock_official.py").write_text(_read_official(path))
    sys.path.insert(0, str(root))
    import timm.models.registry as registry

    register = registry.register_model
    registry.register_model = lambda fn: fn  # keep vizoo's overlock_* names in timm's registry
    try:
        spec = importlib.util.spec_from_file_location("overlock_official", root / "overlock_official.py")
        module = importlib.util.module_from_spec(spec)
        with contextlib.redirect_stdout(io.StringIO()):  # its iGEMM probes print per block
            spec.loader.exec_module(module)
    finally:
        registry.register_model = register
    return module


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Perturb every parameter (zero-initialised GRN and relative position biases included) and BN statistic,
    keeping activations at a moderate scale so that absolute logit differences are meaningful."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if "rpb" in name:
            p.copy_(noise)
        elif p.dim() > 1 and p.numel() > p.shape[0] and not name.endswith(("gamma", "beta")):  # conv, linear
            p.add_(0.01 * noise)
        else:  # biases, norm affines, layer scales, GRN
            p.add_(0.1 * noise)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.2 * torch.rand(m.num_features, generator=g) - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _macs(model: torch.nn.Module) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.randn(1, 3, 224, 224))
    return counter.get_total_flops() / 2e9


def check(official_module, name: str, batch: int = 2) -> dict:
    import timm

    import vizoo  # noqa: F401
    from vizoo.backbones.overlock import checkpoint_filter_fn

    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        official = getattr(official_module, name)()
    randomize(official)
    x = torch.randn(batch, 3, 224, 224)
    row = {"model": name}

    def load(state_dict, **kwargs):
        model = timm.create_model(name, **kwargs)
        model.load_state_dict(checkpoint_filter_fn(state_dict, model))
        return model

    with torch.no_grad():
        ref = official.eval()(x)
        train_sd = official.state_dict()
        for label, kwargs in (("train ckpt -> train form", dict(aux_head=True)),
                              ("train ckpt -> deploy form", dict(deploy=True))):
            row[label] = (load(train_sd, **kwargs).eval()(x) - ref).abs().max().item()
        out = copy.deepcopy(official).train()(x)  # copies: training mode updates BN statistics
        main, aux = load(train_sd, aux_head=True, drop_path_rate=0.0).train()(x)  # official default: no drop path
        row["train mode main / aux"] = max((main - out["main"]).abs().max().item(),
                                           (aux - out["aux"]).abs().max().item())
        row["train mode max |logit|"] = max(out["main"].abs().max().item(), out["aux"].abs().max().item())
        with contextlib.redirect_stdout(io.StringIO()):
            official.reparam()
        ref_deploy = official(x)
        row["official reparam drift"] = (ref_deploy - ref).abs().max().item()
        deploy_sd = official.state_dict()
        for label, kwargs in (("deploy ckpt -> deploy form", dict(deploy=True, aux_head=True)),
                              ("deploy ckpt -> train form", dict())):
            row[label] = (load(deploy_sd, **kwargs).eval()(x) - ref_deploy).abs().max().item()
        row["logit scale (max |logit|)"] = ref.abs().max().item()
    row["official GMACs"] = _macs(official)
    row["vizoo GMACs"] = _macs(timm.create_model(name, deploy=True))
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="OverLoCK clone (work tree or git dir)")
    parser.add_argument("models", nargs="*", default=list(VARIANTS))
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    module = load_official(args.official)
    rows = []
    for name in args.models:
        rows.append(check(module, name))
        print(rows[-1], flush=True)
    from vizoo.bench import markdown_table
    from vizoo.utils import atomic_write_text

    table = markdown_table(rows)
    print(table)
    if args.markdown:
        atomic_write_text(args.markdown, table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
