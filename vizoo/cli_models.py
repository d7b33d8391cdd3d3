"""``vizoo models [PATTERN]``: list the registered vizoo models, and which have pretrained weights."""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    import timm

    import vizoo

    parser = argparse.ArgumentParser(prog="vizoo models", description=__doc__)
    parser.add_argument("pattern", nargs="?", default="*", help="glob over model names, e.g. 'nat*'")
    args = parser.parse_args(argv)
    pretrained = set(timm.list_pretrained(args.pattern))
    for name in vizoo.list_models(args.pattern):
        tags = sorted(p.split(".", 1)[1] for p in pretrained if p.split(".", 1)[0] == name)
        print(name + (f"  [{', '.join(tags)}]" if tags else ""))
