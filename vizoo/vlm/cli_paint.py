"""``vizoo paint``: see :mod:`vizoo.vlm.cli`."""
from vizoo.vlm.cli import paint_main as main

__all__ = ["main"]
