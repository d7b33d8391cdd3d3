"""``vizoo carve``: see :mod:`vizoo.vlm.cli`."""
from vizoo.vlm.cli import carve_main as main

__all__ = ["main"]
