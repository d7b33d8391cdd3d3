"""The probing engine under DDP (augmented protocol) on the CPU: 2 gloo processes through Lightning (``devices=2``).

On the embedded ``shapes`` set at an odd split size (see ``N``). A script in the test's tmp folder runs ``run_probe``
with ``devices=2`` (Lightning's ``strategy='ddp'`` re-launches it as rank 1); rank 0 saves the selected heads' weights
and the results. The test then checks that both ranks exited 0, that every val/test image was scored exactly once
(counts equal the split sizes, no DistributedSampler padding), and that the reported val/test top-1 equal a
single-process evaluation of the same heads on the whole splits (metrics synced over ranks).
"""

import os
import subprocess
import sys
import textwrap

import torch

from vizoo.heads import create_head
from vizoo.probe.features import BackboneSpec, create_backbone, data_config_for, extract_tokens
from vizoo.probe.pipeline import ProbeJob, _datamodule

VIT = dict(img_size=16, patch_size=4, depth=2, embed_dim=16, num_heads=2)
HEADS = [("linear", {}), ("plain_linear", {})]
# the embedded shapes set with an odd size per split: 2 ranks get uneven shards, so DistributedSampler padding
# (an image scored twice) would change the counts and the accuracy. (digits' val/test hold 270 images each,
# an even number, where padding could not show.)
N = 75

SCRIPT = """
import sys
import torch
from vizoo.probe.engine import HeadBank, HeadSpec, TrainConfig
from vizoo.probe.pipeline import ProbeJob, run_probe

seen = {}
choose = HeadBank.choose
def spy(self):
    seen["module"] = self
    return choose(self)
HeadBank.choose = spy

job = ProbeJob(
    model="vit_tiny_patch16_224", model_kwargs=%(vit)r, pretrained=False, checkpoint=%(ckpt)r,
    dataset="shapes", dataset_kwargs={"num_samples": %(n)d}, image_size=16, protocol="augmented",
    heads=[HeadSpec(n, k) for n, k in %(heads)r],
    train=TrainConfig(epochs=2, batch_size=16, eval_batch_size=16, lrs=[1e-2, 1e-1], device="cpu"),
    devices=2, progress=False, scale=(0.5, 1.0),
)
report = run_probe(job)
world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
if rank == 0:
    module = seen["module"]
    heads = [{k: v.cpu() for k, v in module.heads[i].state_dict().items()} for i in module.chosen]
    torch.save(dict(heads=heads, report=report, world=world), %(out)r)
print(f"rank {rank} of {world} done")
"""


def _reference(model, head, dataset) -> tuple[float, int]:
    """Single-process top-1 (%) of ``head`` over the whole ``dataset`` and the number of images scored."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=100, shuffle=False)
    correct = total = 0
    head.eval()
    with torch.no_grad():
        for images, labels in loader:
            (out,) = extract_tokens(model, images, [model_last(model)], False)
            logits = head(out.tokens.float(), prefix=out.prefix.float())
            correct += int((logits.argmax(1) == labels).sum())
            total += len(labels)
    return 100.0 * correct / total, total


def model_last(model) -> int:
    return len(model.blocks) - 1


def test_ddp_two_cpu_ranks_sync_metrics(tmp_path):
    torch.manual_seed(0)
    backbone = create_backbone(BackboneSpec("vit_tiny_patch16_224", dict(VIT), pretrained=False))
    ckpt = str(tmp_path / "backbone.pt")
    torch.save(backbone.state_dict(), ckpt)
    out = str(tmp_path / "ranks.pt")
    script = tmp_path / "ddp_probe.py"
    script.write_text(textwrap.dedent(SCRIPT % dict(vit=VIT, ckpt=ckpt, heads=HEADS, out=out, n=N)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rank 0 of 2 done" in proc.stdout and "rank 1 of 2 done" in proc.stdout  # rank 1 prints too

    saved = torch.load(out, weights_only=False)
    assert saved["world"] == 2
    report = saved["report"]
    sizes = report["meta"]["split_sizes"]
    assert sizes == {"train": N, "val": N, "test": N}
    job = ProbeJob(
        model="vit_tiny_patch16_224", dataset="shapes", dataset_kwargs={"num_samples": N}, image_size=16
    )
    dm = _datamodule(job, data_config_for(backbone, 16), 16)
    for result, state, (name, kwargs) in zip(report["results"], saved["heads"], HEADS):
        assert result["world_size"] == 2 and result["name"] == name
        assert (result["val_count"], result["test_count"]) == (sizes["val"], sizes["test"])
        head = create_head(name, VIT["embed_dim"], len(report["meta"]["classes"]), **kwargs)
        head.load_state_dict(state)
        for split, key in (("val", "val_top1"), ("test", "test_top1")):
            top1, total = _reference(backbone, head, dm.split(split))
            assert total == sizes[split]
            assert abs(result[key] - top1) < 1e-3, (name, split, result[key], top1)
