"""The rooms' imports point one way (docs/architecture.md): a lower layer never imports a higher one, not even
lazily inside a function, and no modules import each other in a cycle.

Every module of the packages is parsed with ``ast`` (imports at any depth, including inside functions and
``if TYPE_CHECKING`` blocks); nothing is imported.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["atc_il", "pipelines", "models", "simulator_adapters", "api", "atc_il_cli"]   # lowest first


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in LAYERS for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the module, resolved to a module of ``known`` where it
    names one (``from a.b import c`` is ``a.b.c`` when that is a module, else ``a.b``)."""
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                out.append((full if full in known else base, node.lineno))
    return out


def graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the package modules it imports; and the imports that point up the layers."""
    mods = modules()
    known = set(mods)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    upward = []
    for m, path in mods.items():
        layer = LAYERS.index(m.split(".")[0])
        for target, line in imports(m, path, known):
            top = target.split(".")[0]
            if top not in LAYERS:
                continue
            if LAYERS.index(top) > layer:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target} ({top} is above {m.split('.')[0]})")
            while target and target not in known:      # an attribute of a module: the module
                target = target.rpartition(".")[0]
            if target and target != m:
                edges[m].add(target)
    return edges, upward


def test_every_package_is_parsed():
    mods = modules()
    assert {m.split(".")[0] for m in mods} == set(LAYERS)
    assert "models.heads.base" in mods and "atc_il_cli.cli" in mods


def test_no_import_points_up_the_layers():
    _, upward = graph()
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_import_cycle():
    edges, _ = graph()
    try:
        tuple(TopologicalSorter(edges).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_the_check_sees_cycles_and_upward_imports(tmp_path):
    """The checker itself: an upward import inside a function and a two-module cycle are found."""
    src = "def f():\n    from models.policy import Policy\n"
    assert ("models.policy", 2) in imports("pipelines.x", _write(tmp_path / "x.py", src), {"models.policy"})
    try:
        tuple(TopologicalSorter({"a": {"b"}, "b": {"a"}}).static_order())
    except CycleError:
        pass
    else:
        raise AssertionError("graphlib did not report the cycle")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
