"""The vlm tests need transformers (the `vlm` extra); their tiny models live in vlm_testlib.py."""
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))  # vlm_testlib, under any --import-mode
