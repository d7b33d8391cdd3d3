"""``vizoo models [PATTERN]``: list the registered vizoo models, and which have pretrained weights."""
from __future__ import annotations

from vizoo.utils import ArgumentParser


def main(argv: list[str] | None = None) -> None:
    import timm

    import vizoo

    parser = ArgumentParser(prog="vizoo models", description=__doc__)
    parser.add_argument("pattern", nargs="?", default="*", help="glob over model names, e.g. 'nat*'")
    args = parser.parse_args(argv)
    names = vizoo.list_models(args.pattern)
    if not names:
        from vizoo.utils import unknown_name_error

        if any(c in args.pattern for c in "*?["):
            raise ValueError(f"no vizoo model matches {args.pattern!r}; `vizoo models` lists them all")
        raise unknown_name_error("model", args.pattern, vizoo.list_models())
    pretrained = set(timm.list_pretrained(args.pattern))
    for name in names:
        tags = sorted(p.split(".", 1)[1] for p in pretrained if p.split(".", 1)[0] == name)
        print(name + (f"  [{', '.join(tags)}]" if tags else ""))
