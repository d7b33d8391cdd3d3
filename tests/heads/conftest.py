"""The head tests use tiny tensors, for which one intra-op thread is fastest (and robust to a busy CI
machine, where two threads per process oversubscribe the cores). The thread count is restored afterwards."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
