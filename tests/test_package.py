"""The package's shape: its modules import each other in one direction only."""

import ast
from pathlib import Path

import dreamlab

PACKAGE = Path(dreamlab.__file__).parent


def imports_at_load(path: Path) -> set[str]:
    """The package's modules that `path` imports when it is loaded (imports inside functions run later)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
    return names


def test_no_import_circle():
    graph = {p.stem: imports_at_load(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    for start in graph:
        path, todo = [], [(start, [start])]
        while todo:
            module, path = todo.pop()
            for following in graph.get(module, ()):
                assert following != start, f"import circle: {' -> '.join(path + [start])}"
                if following not in path:
                    todo.append((following, path + [following]))
