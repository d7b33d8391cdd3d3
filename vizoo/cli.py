"""The ``vizoo`` command.

``vizoo fit|validate|test|predict`` is the Lightning CLI (see vizoo/train/cli.py); every other subcommand
lives in the module named below (its ``main``, or the function after a colon) and is imported only when used, so
``vizoo --help`` stays fast.
"""
from __future__ import annotations

import importlib
import os
import sys

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
SUBCOMMANDS = {
    "probe": ("vizoo.probe.cli", "evaluate frozen backbones with linear and attentive probes"),
    "hub": ("vizoo.hub.cli", "export, push and pull models in the Hugging Face Hub format"),
    "convert": ("vizoo.hub.cli:convert_main", "convert an official checkpoint into a vizoo export folder"),
    "bench": ("vizoo.bench", "benchmark kernels and backbones (on a GPU)"),
    "models": ("vizoo.cli_models", "list the registered vizoo models"),
    "carve": ("vizoo.vlm.cli_carve", "answer questions about images with CARVE (Hugging Face VLMs)"),
    "paint": ("vizoo.vlm.cli_paint", "generate VLM answers or captions with PAINT (less hallucination)"),
    "vlm-eval": ("vizoo.vlm.cli_eval", "score VLM answers with CHAIR or POPE"),
    "scanpath": ("vizoo.scanpath.cli", "predict and evaluate OAT gaze scanpaths (vs baselines), benchmark"),
}


def _usage() -> str:
    lines = ["usage: vizoo COMMAND [ARGS]", "", "commands:"]
    for name in LIGHTNING_COMMANDS:
        lines.append(f"  {name:<10} Lightning CLI: {name} a model (vizoo {name} -c configs/....yaml)")
    for name, (_, text) in SUBCOMMANDS.items():
        lines.append(f"  {name:<10} {text}")
    lines.append("")
    lines.append("Run `vizoo COMMAND --help` for the options of one command. Bad input ends with a one-line error")
    lines.append("and exit code 2; set VIZOO_TRACEBACK=1 to see the traceback instead.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run a subcommand; bad input (ValueError, FileNotFoundError) ends with a one-line error and exit code 2.

    Set ``VIZOO_TRACEBACK=1`` to see the full traceback instead.
    """
    try:
        _run(argv)
    except (ValueError, FileNotFoundError) as error:
        if os.environ.get("VIZOO_TRACEBACK"):
            raise
        print(f"vizoo: error: {error}", file=sys.stderr)
        sys.exit(2)


def _run(given: list[str] | None) -> None:
    argv = list(sys.argv[1:] if given is None else given)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    command, rest = argv[0], argv[1:]
    if command in LIGHTNING_COMMANDS:
        from vizoo.train.cli import cli_main

        cli_main(given)  # None: Lightning reads sys.argv itself (no 'args and argv' warning)
        return
    if command not in SUBCOMMANDS:
        from vizoo.utils import unknown_name_error

        valid = list(LIGHTNING_COMMANDS) + list(SUBCOMMANDS)
        print(f"vizoo: {unknown_name_error('command', command, valid)}", file=sys.stderr)
        sys.exit(2)
    module, _, function = SUBCOMMANDS[command][0].partition(":")  # "module" runs module.main
    code = getattr(importlib.import_module(module), function or "main")(rest)
    if isinstance(code, int) and not isinstance(code, bool) and code:
        sys.exit(code)  # a refusal (e.g. `vizoo bench` without CUDA) exits non-zero


if __name__ == "__main__":
    main()
