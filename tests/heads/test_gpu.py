"""The heads on a CUDA device: same values as on the CPU, and bf16 autocast training steps stay finite."""
import pytest
import torch

from vizoo.heads import create_head, list_heads

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", list_heads())
def test_cuda_matches_cpu(name):
    d, grid = 768, (14, 14)
    head = create_head(name, d, 1000).eval()
    x, p = torch.randn(8, 196, d), torch.randn(8, 1, d)
    ref = head(x, prefix=p, grid=grid)
    out = head.cuda()(x.cuda(), prefix=p.cuda(), grid=grid)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", list_heads())
def test_cuda_bf16_autocast_train_step(name):
    head = create_head(name, 384, 100).cuda().train()
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    x, p = torch.randn(16, 256, 384, device="cuda"), torch.randn(16, 5, 384, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(head(x, prefix=p, grid=(16, 16)),
                                                 torch.randint(0, 100, (16,), device="cuda"))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(q).all() for q in head.parameters())
