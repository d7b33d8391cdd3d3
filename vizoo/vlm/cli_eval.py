"""``vizoo vlm-eval``: see :mod:`vizoo.vlm.cli`."""
from vizoo.vlm.cli import eval_main as main

__all__ = ["main"]
