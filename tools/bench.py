"""Maintainer entry point for the GPU benchmarks: ``python tools/bench.py ...`` == ``vizoo bench ...``."""
import sys

from vizoo.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
