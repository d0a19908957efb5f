"""The package floors, read from the source with ``ast``: who may import whom (docs/DESIGN.md, "Floors").

Every import counts, at module level or inside a function: an import placed in a function to dodge a cycle is still
an arrow. A package is ``pneumo.<name>``; the modules at the top of ``pneumo`` (``api``, ``demo``, ``__main__``) are
entry points. ``import pneumo`` / ``from pneumo import __version__`` reads the version string only and is ground; the
root package's own lazy ``pneumo.load`` (``api``) is an entry point.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pneumo

SRC = Path(pneumo.__file__).parent

TOP = {"cli", "serve", "reproduce", "bench", "api", "demo", "__main__", "<root>"}
USERS = {"evaluation", "trust", "gan", "inference"}
ENGINE = {"training"}
MODEL = {"models", "runs", "zoo"}
GROUND = {"data", "utils", "<version>"}
FLOORS = [TOP, USERS, ENGINE, MODEL, GROUND]

# The one arrow up a floor: a run trained on GAN-balanced data has the engine generate its synthetic images with the
# GAN run's generator (pneumo.gan.synth). gan imports nothing from training, so this makes no cycle (checked below).
ALLOWED_UP = {("training", "gan")}

# What each package may not import (beyond the floor order checked below).
FORBIDDEN = {
    **{p: ENGINE | TOP for p in USERS},  # evaluation, trust, gan, inference never import training
    "training": {"trust", "evaluation", "inference"} | TOP,
}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<version>"


def _source_package(path: Path, src: Path) -> tuple[str, str]:
    rel = path.relative_to(src.parent).with_suffix("")
    module = ".".join(rel.parts).removesuffix(".__init__")
    if path.parent == src:
        return module, "<root>" if path.name == "__init__.py" else path.stem
    return module, rel.parts[1]


def import_edges(src: Path = SRC) -> dict[tuple[str, str], list[str]]:
    """``(from package, to package) -> ["module (imported name)", ...]`` over all modules under ``src``."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(src.rglob("*.py")):
        module, package = _source_package(path, src)
        is_init = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".") if is_init else module.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    targets = [".".join([*base, node.module] if node.module else base)]
                else:
                    targets = [node.module or ""]
                if targets == ["pneumo"]:  # from pneumo import X: X may be a subpackage
                    names = [a.name for a in node.names]
                    targets = [f"pneumo.{n}" if n != "__version__" else "pneumo" for n in names]
            else:
                continue
            for target in targets:
                if target != "pneumo" and not target.startswith("pneumo."):
                    continue
                to = _package(target)
                if to != package:
                    edges.setdefault((package, to), []).append(f"{module} ({target})")
    return edges


def _floor(package: str) -> int:
    return next(i for i, floor in enumerate(FLOORS) if package in floor)


def test_every_package_has_a_floor() -> None:
    packages = {_package(f"pneumo.{p.name}") for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= set().union(*FLOORS), packages - set().union(*FLOORS)


def violations(edges: dict[tuple[str, str], list[str]]) -> list[str]:
    bad = []
    for (src, dst), where in edges.items():
        up = _floor(dst) < _floor(src) and (src, dst) not in ALLOWED_UP
        if up or dst in FORBIDDEN.get(src, ()):
            bad.append(f"{src} -> {dst}: {', '.join(where)}")
    return bad


def test_no_import_runs_up_a_floor_or_breaks_a_rule() -> None:
    bad = violations(import_edges())
    assert not bad, "\n".join(bad)


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for src, dst in import_edges():
        graph.setdefault(src, set()).add(dst)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    cycles = sorted(f"{a} -> {b} -> ... -> {a}" for a, b in import_edges() if reaches(b, a, {b}))
    assert not cycles, "\n".join(cycles)


def test_no_module_is_imported_by_its_name_as_a_string() -> None:
    """``importlib.import_module("pneumo...")`` hides an arrow from this test (the lazy package exports of
    ``pneumo.data``/``pneumo.trust``, which name modules of their own package, are the exception)."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module":
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and str(arg.value).startswith("pneumo"):
                    found.append(f"{path.relative_to(SRC)}: {arg.value}")
    assert not found, found


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The check itself, on a made-up package tree: an import placed in a function is an arrow like any other."""
    root = tmp_path / "pneumo"
    for package in ("models", "training", "inference"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "models" / "net.py").write_text("def build():\n    from pneumo.training.run import train\n")
    (root / "inference" / "load.py").write_text("from ..training import run\n")
    edges = import_edges(root)
    assert set(edges) == {("models", "training"), ("inference", "training")}
    assert len(violations(edges)) == 2
