"""The code's shape, as the project's "done when" states it: no module in ``adapters/`` or
``smeg_actors/`` over 400 lines, and a median function length (all three packages) of at most 10.

``domain/`` is held to the median only: the ``Message`` aggregate's events are nested classes
whose topics (``domain.message:Message.Received`` …) are stored, so the aggregate stays one module.

Prints the modules over the limit, the median function length (``ast``: ``end_lineno - lineno +
1`` of every function and method, decorators excluded) and the longest functions; exits 1 when
either limit is broken. Usage: ``python scripts/shape.py``.
"""

from __future__ import annotations

import ast
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("domain", "adapters", "smeg_actors")
SIZED = ("adapters", "smeg_actors")
MAX_MODULE_LINES = 400
MAX_MEDIAN_FUNCTION_LINES = 10
LONGEST_SHOWN = 10


@dataclass(frozen=True)
class Function:
    """One function or method: where it is and how many lines it spans."""

    path: Path
    name: str
    line: int
    length: int


def modules(root: Path) -> list[Path]:
    """Every Python module under the packages, in path order."""
    return sorted(path for package in PACKAGES for path in (root / package).rglob("*.py"))


def line_count(path: Path) -> int:
    """Physical lines of ``path``."""
    return len(path.read_text(encoding="utf-8").splitlines())


def functions(path: Path) -> list[Function]:
    """Every function and method defined in ``path``, nested ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        Function(path, node.name, node.lineno, (node.end_lineno or node.lineno) - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def report(root: Path) -> bool:
    """Print the shape of the code under ``root``; True when it is within both limits."""
    paths = modules(root)
    sized = [path for path in paths if path.relative_to(root).parts[0] in SIZED]
    too_long = [(path, count) for path in sized if (count := line_count(path)) > MAX_MODULE_LINES]
    found = [function for path in paths for function in functions(path)]
    median = statistics.median(function.length for function in found) if found else 0
    print(f"modules over {MAX_MODULE_LINES} lines: {len(too_long)}")
    for path, count in too_long:
        print(f"  {count:5d}  {path.relative_to(root)}")
    print(f"functions: {len(found)}, median length {median:g} lines (limit {MAX_MEDIAN_FUNCTION_LINES})")
    print(f"longest {LONGEST_SHOWN}:")
    for function in sorted(found, key=lambda f: -f.length)[:LONGEST_SHOWN]:
        print(f"  {function.length:5d}  {function.path.relative_to(root)}:{function.line} {function.name}")
    return not too_long and median <= MAX_MEDIAN_FUNCTION_LINES


if __name__ == "__main__":
    sys.exit(0 if report(ROOT) else 1)
