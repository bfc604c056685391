"""The plugin contract is written down: every hook states what it runs under, and every
field of every spec dataclass carries a ``#:`` doc comment where it is declared.

Extends ``test_plugins.py``'s documented-hook checks (a docstring that names the spec
type) with the runtime contract of issue 23. Both read the source, so a hook or a field
added without its documentation fails here.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from petseg_bench import hookspecs, specs
from petseg_bench.plugins import KINDS


#: The modules whose dataclasses are plugin specs (or parts of one): every field documented.
SPEC_MODULES = (specs,)

#: Per hook, what its "Runs under" section must mention (case-insensitive): the rules a
#: plugin author can only learn the hard way otherwise. Every other hook needs the section too.
MUST_MENTION = {
    "petseg_bench_models": ("autocast", "channels_last", "torch.compile", "zero-padded", "BatchNorm",
                            "set_phase", "eval mode", "weights_only", "no_grad"),
    "petseg_bench_backbones": ("once per key per process", "autocast", "no_grad", "BatchNorm", "channels_last"),
    "petseg_bench_perturbations": ("several threads at once", "in_parallel", "sub-batches", "one generator per image",
                                   "global random state", "original resolution", "read-only", "thread-safe"),
    "petseg_bench_metrics": ("confusion", "[N, C, C]", "float", "original mask resolution"),
}


def hookspec_functions() -> dict:
    """Every hook specification, found by pluggy's marker (as test_plugins does)."""
    return {n: f for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "petseg_bench_spec")}


def runs_under(doc: str) -> list[str]:
    """The bullet items of a docstring's ``Runs under:`` section (to the end of the
    docstring), each joined into one line."""
    lines = doc.splitlines()
    try:
        start = lines.index("Runs under:")
    except ValueError:
        return []
    items: list[str] = []
    for line in lines[start + 1:]:
        if line.startswith("- "):
            items.append(line[2:].strip())
        elif line.startswith("  ") and items:
            items[-1] += " " + line.strip()
        elif line.strip():
            break  # prose after the list ends the section
    return items


def test_the_contract_test_sees_every_hook():
    assert set(hookspec_functions()) == set(KINDS)
    assert set(MUST_MENTION) <= set(KINDS), f"not hooks: {sorted(set(MUST_MENTION) - set(KINDS))}"
    assert {"petseg_bench_models", "petseg_bench_backbones", "petseg_bench_perturbations",
            "petseg_bench_metrics"} <= set(MUST_MENTION)


@pytest.mark.parametrize("name", sorted(hookspec_functions()))
def test_every_hook_states_what_it_runs_under(name):
    doc = inspect.getdoc(hookspec_functions()[name])
    items = runs_under(doc or "")
    assert len(items) >= 2, f"{name}'s docstring has no 'Runs under:' section of bullet items"
    section = " ".join(items).lower()
    missing = [word for word in MUST_MENTION.get(name, ()) if word.lower() not in section]
    assert not missing, f"{name}'s 'Runs under' section does not mention: {missing}"


def test_runs_under_parser_finds_a_missing_section():
    """The parser above must not pass a docstring that lacks the section or its items."""
    assert runs_under("Return a list.\n\nNo contract here.") == []
    assert runs_under("Return a list.\n\nRuns under:\n\nprose, no bullets") == []
    assert runs_under("x\n\nRuns under:\n\n- one\n  more\n- two") == ["one more", "two"]


def spec_dataclasses(tree: ast.Module) -> list[ast.ClassDef]:
    """The classes of specs.py decorated ``@dataclass`` (with or without arguments)."""
    def is_dataclass(dec: ast.expr) -> bool:
        target = dec.func if isinstance(dec, ast.Call) else dec
        return (isinstance(target, ast.Name) and target.id == "dataclass") or \
            (isinstance(target, ast.Attribute) and target.attr == "dataclass")

    return [n for n in tree.body if isinstance(n, ast.ClassDef) and any(is_dataclass(d) for d in n.decorator_list)]


def undocumented_fields(source: str) -> list[str]:
    """``Class.field`` for every dataclass field whose line above is not a ``#:`` comment."""
    lines = source.splitlines()
    missing = []
    for cls in spec_dataclasses(ast.parse(source)):
        for node in cls.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
                if not re.match(r"^#: \S", above):
                    missing.append(f"{cls.name}.{node.target.id}")
    return missing


def test_every_spec_field_has_a_doc_comment():
    sources = {m.__name__: Path(m.__file__).read_text() for m in SPEC_MODULES}
    classes = {c.name for src in sources.values() for c in spec_dataclasses(ast.parse(src))}
    # the hook spec types of these modules, and the types they hold, are among the checked classes
    assert {cls.__name__ for _, cls in KINDS.values() if cls.__module__ in sources} >= \
        {"ModelSpec", "BackboneSpec", "PerturbationSpec", "MetricSpec"}
    assert {"ModelSpec", "BackboneSpec", "PerturbationSpec", "MetricSpec", "ModelConfig", "ModelOption",
            "Phase", "LossWeights", "PaperFigures"} <= classes
    missing = [f"{name}: {field}" for name, src in sources.items() for field in undocumented_fields(src)]
    assert not missing, "fields without a '#:' doc comment above them:\n" + "\n".join(missing)


def test_a_field_without_a_doc_comment_is_found():
    source = ('from dataclasses import dataclass\n\n@dataclass(frozen=True)\nclass S:\n'
              '    #: documented\n    a: int\n    b: int = 0  # a trailing comment is not a doc comment\n'
              '    #: documented, then a blank line\n\n    c: int = 1\n')
    assert undocumented_fields(source) == ["S.b", "S.c"]


def test_the_spec_classes_point_to_the_runtime_contract():
    """Each hook spec type's docstring sends its reader to the hook's 'Runs under' section."""
    for hook, (_, cls) in KINDS.items():
        if cls.__module__ not in {m.__name__ for m in SPEC_MODULES}:
            continue
        doc = inspect.getdoc(cls) or ""
        assert "Runs under" in doc and hook in doc, f"{cls.__name__}'s docstring does not point to {hook}"


REFERENCE = re.compile(r":(?:mod|func|class|meth|data|attr):`~?([\w.]+)`")


def resolve(dotted: str, home: str) -> object:
    """The object a Sphinx cross-reference names: a dotted path from ``petseg_bench``, or
    a name in the ``home`` module. Raises when nothing of that name exists."""
    import importlib

    parts = dotted.split(".")
    if parts[0] != "petseg_bench":
        parts = home.split(".") + parts
    for cut in range(len(parts), 0, -1):  # the longest importable module prefix, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


@pytest.mark.parametrize("module", [hookspecs, specs], ids=lambda m: m.__name__)
def test_every_cross_reference_in_the_contract_resolves(module):
    """The contract names engine functions and modules; one that moves or is renamed
    must take its documentation with it."""
    source = Path(module.__file__).read_text()
    refs = sorted(set(REFERENCE.findall(source)))
    assert refs, "no cross-reference found: the pattern no longer matches the docs"
    broken = []
    for ref in refs:
        try:
            resolve(ref, module.__name__)
        except (ImportError, AttributeError):
            broken.append(ref)
    assert not broken, f"{module.__name__} documents names that do not exist: {broken}"


def test_a_stale_cross_reference_is_found():
    with pytest.raises((ImportError, AttributeError)):
        resolve("petseg_bench.engine.no_such_module.fold", "petseg_bench.hookspecs")
    with pytest.raises(AttributeError):
        resolve("NoSuchSpec", "petseg_bench.specs")
    assert resolve("ModelSpec", "petseg_bench.specs") is specs.ModelSpec
