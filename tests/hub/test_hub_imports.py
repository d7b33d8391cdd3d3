"""vizoo.hub's modules import each other without a circle, at module level or inside functions."""
import ast
from pathlib import Path

import vizoo.hub

HUB = Path(vizoo.hub.__file__).parent


def _hub_imports(path: Path) -> set[str]:
    """The vizoo.hub modules a file imports anywhere in it (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vizoo.hub."):
            found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("vizoo.hub.")}
    return found


def test_hub_modules_import_without_a_circle():
    graph = {p.stem: _hub_imports(p) for p in HUB.glob("*.py") if p.stem != "__init__"}
    assert graph["loading"] and graph["export"]  # the parse finds imports at all
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import circle: {' -> '.join(path + (name,))}"
        if name not in done:
            for dep in graph.get(name, ()):
                visit(dep, path + (name,))
            done.add(name)

    for name in graph:
        visit(name, ())
