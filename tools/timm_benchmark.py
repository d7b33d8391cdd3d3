"""Run timm's own ``benchmark.py`` (from a pytorch-image-models checkout) with vizoo's models registered.

timm's script builds models by name, so vizoo must be imported first; this does that and hands the arguments on.

    python tools/timm_benchmark.py PATH/TO/pytorch-image-models/benchmark.py --model-list models.txt \\
        --bench both --amp --amp-dtype bfloat16 -b 256 [--torchcompile] [--reparam] --results-file F.csv

(``--model-list`` is a text file with one model name per line; ``--model NAME`` runs one model.)
"""
import runpy
import sys

import vizoo  # noqa: F401  (registers vizoo's models with timm)

if __name__ == "__main__":
    if len(sys.argv) < 2 or not sys.argv[1].endswith(".py"):
        sys.exit(__doc__)
    script = sys.argv[1]
    sys.argv = [script] + sys.argv[2:]
    runpy.run_path(script, run_name="__main__")
