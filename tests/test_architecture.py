"""The architecture rules the core keeps: it names no built-in model, and its functions
stay short enough to read (at most 60 lines, at most 8 parameters)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "petseg_bench"
#: Words that contain a built-in model's name but are generic (gradient clipping,
#: checkpoints, entry points, the ``point`` input kind and its clicks).
GENERIC = re.compile(r"grad[_-]clip|clip_grad|clipp(?:ed|ing)|checkpoints?|entry[_ -]?points?|\bpoints?\b|point-prompted")
BUILTIN_NAMES = re.compile(r"clip|point|autoencoder")


def core_files() -> list[Path]:
    return sorted(p for p in CORE.rglob("*") if p.suffix in (".py", ".j2") and "__pycache__" not in p.parts)


def test_the_core_names_no_builtin_model():
    hits = []
    for path in core_files():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if BUILTIN_NAMES.search(GENERIC.sub("", line.lower())):
                hits.append(f"{path.relative_to(CORE.parent)}:{n}: {line.strip()}")
    assert not hits, "the core must not name a built-in model:\n" + "\n".join(hits)


def _functions():
    for path in core_files():
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(CORE.parent), node


@pytest.mark.parametrize("limit", [60])
def test_no_core_function_is_longer_than_60_lines(limit):
    long = [f"{p}:{f.lineno} {f.name} ({f.end_lineno - f.lineno + 1} lines)" for p, f in _functions()
            if f.end_lineno - f.lineno + 1 > limit]
    assert not long, "\n".join(long)


def test_no_core_function_takes_more_than_8_parameters():
    def count(f) -> int:
        a = f.args
        return len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) - (1 if a.args and a.args[0].arg in ("self", "cls") else 0)

    wide = [f"{p}:{f.lineno} {f.name} ({count(f)} parameters)" for p, f in _functions() if count(f) > 8]
    assert not wide, "\n".join(wide)


def test_the_readme_layout_names_every_core_package():
    readme = (CORE.parent / "README.md").read_text()
    packages = sorted(p.parent.name for p in CORE.glob("*/__init__.py"))
    missing = [p for p in packages if f"petseg_bench/{p}/" not in readme]
    assert not missing, f"README's layout table does not name: {missing}"
