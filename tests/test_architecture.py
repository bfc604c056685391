"""The architecture rules the core keeps: it names no built-in model, its functions
stay short enough to read (at most 60 lines, at most 8 parameters), and its modules
import each other without a cycle and only downwards through its layers."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "petseg_bench"
#: Words that contain a built-in model's name but are generic (gradient clipping,
#: checkpoints, entry points, the ``point`` input kind and its clicks, floating point,
#: clipping a value: ``clip(x)``, "clip to 0..255").
GENERIC = re.compile(r"grad[_-]clip|clip_grad|clipp(?:ed|ing)|checkpoints?|entry[_ -]?points?|\bpoints?\b|point-prompted"
                     r"|floating[_ ]point|\bclip(?=\(| to\b)")
#: Parts of built-in names (the CLIP backbone and the point-prompted models), in any case.
BUILTIN_PARTS = re.compile(r"clip|point|autoencoder")


def core_files() -> list[Path]:
    return sorted(p for p in CORE.rglob("*") if p.suffix in (".py", ".j2") and "__pycache__" not in p.parts)


def builtin_model_names() -> list[str]:
    """Every model petseg-bench's own plugins register (its distribution's entry points),
    from the registry: a new built-in model is covered without editing this test."""
    from importlib.metadata import distribution

    from petseg_bench.plugins import get_registry

    own = {ep.name for ep in distribution("petseg-bench").entry_points if ep.group == "petseg_bench"}
    reg = get_registry()
    return sorted(name for (kind, name), origin in reg.origins.items() if kind == "model" and origin in own)


def builtin_name_pattern(names: list[str]) -> re.Pattern:
    """A model name as a whole identifier (``_`` and letters around it make another word);
    case-sensitive, as names are lower case (``smp:Unet:...`` names a third-party class)."""
    return re.compile(r"(?<![A-Za-z0-9_])(?:" + "|".join(map(re.escape, names)) + r")(?![A-Za-z0-9_])")


def test_the_builtin_names_come_from_the_registry():
    from petseg_bench.plugins import get_registry

    names = builtin_model_names()
    assert len(names) >= 2 and get_registry().reference_model() in names
    pattern = builtin_name_pattern(names)
    assert all(pattern.search(f"train {n} --epochs 1") for n in names)
    assert not pattern.search("my_unet_variant Unet smp:Unet:resnet18")


def test_the_core_names_no_builtin_model():
    names = builtin_name_pattern(builtin_model_names())
    hits = []
    for path in core_files():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if BUILTIN_PARTS.search(GENERIC.sub("", line.lower())) or names.search(line):
                hits.append(f"{path.relative_to(CORE.parent)}:{n}: {line.strip()}")
    assert not hits, "the core must not name a built-in model:\n" + "\n".join(hits)


def _functions():
    for path in core_files():
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(CORE.parent), node


def code_lines(f) -> int:
    """A function's lines without its docstring: a hook spec's contract may run long,
    its code may not."""
    first = f.body[0]
    doc = (first.end_lineno - first.lineno + 1 if isinstance(first, ast.Expr) and isinstance(
        getattr(first, "value", None), ast.Constant) and isinstance(first.value.value, str) else 0)
    return f.end_lineno - f.lineno + 1 - doc


@pytest.mark.parametrize("limit", [60])
def test_no_core_function_is_longer_than_60_lines(limit):
    long = [f"{p}:{f.lineno} {f.name} ({code_lines(f)} lines)" for p, f in _functions() if code_lines(f) > limit]
    assert not long, "\n".join(long)


def test_code_lines_leave_out_the_docstring_only():
    f = ast.parse('def f():\n    """One\n    two."""\n    x = 1\n    return x\n').body[0]
    g = ast.parse("def g():\n    x = 1\n    return x\n").body[0]
    assert code_lines(f) == 3 and code_lines(g) == 3


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


# --------------------------------------------------------------------------- imports: no cycle, no arrow up

#: The layers, lowest first: a module imports its own layer or lower ones only. The core
#: (the top-level modules and data/) knows nothing of the engine that runs it; the app
#: and the command line sit on top of everything.
LAYERS = (("core", ()), ("engine", ("engine", "reporting")), ("app", ("app",)),
          ("kit", ("testing",)), ("cli", ("cli",)))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """petseg_bench module -> the petseg_bench modules it imports: module level, inside
    functions and under ``if TYPE_CHECKING`` alike (a deferred import is still a
    dependency; only the parent packages an import runs implicitly are left out)."""
    mods = {_module_name(p): p for p in core_files() if p.suffix == ".py"}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:  # petseg_bench.x.Y (a name) -> petseg_bench.x
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int:
    sub = module.split(".")[1] if "." in module else ""
    return next((k for k, (_, packages) in enumerate(LAYERS) if sub in packages), 0)


def test_the_import_graph_sees_relative_function_level_and_type_checking_imports():
    graph = import_graph()
    assert "petseg_bench.engine.checkpoint" in graph["petseg_bench.engine.training"]  # from . import checkpoint
    assert "petseg_bench.plugins" in graph["petseg_bench.backbones"]  # inside _build
    assert "petseg_bench.data.cache" in graph["petseg_bench.engine.train_loop"]  # under TYPE_CHECKING
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_core_modules():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_module_imports_a_higher_layer():
    up = [f"{m} ({LAYERS[layer(m)][0]}) imports {t} ({LAYERS[layer(t)][0]})"
          for m, targets in import_graph().items() for t in sorted(targets) if layer(t) > layer(m)]
    assert not up, "imports against the layers:\n" + "\n".join(up)


def test_no_two_modules_share_a_name():
    """A module's name says where it is: no two modules of the package and its built-in
    plugins are called the same (``models.py`` twice made every reader look twice)."""
    root = CORE.parent
    seen: dict[str, list[str]] = {}
    for folder in ("petseg_bench", "plugins", "perturbations"):
        for path in (root / folder).rglob("*.py"):
            if path.name != "__init__.py" and "__pycache__" not in path.parts:
                seen.setdefault(path.name, []).append(str(path.relative_to(root)))
    twice = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not twice, f"modules sharing a name: {twice}"
