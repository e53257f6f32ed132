"""The packages are layers: no module imports from a layer above its own (lazily neither), so
a newcomer reads them bottom up and a stage can be used without the ones built on it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: bottom to top. The top level (cli, pipeline, and config: the run's settings schema, which
#: every stage reads) may be imported from anywhere; it validates names against the
#: registries of the stages, lazily.
LAYERS = ("primitives", "gp_proxy/core", "gp_proxy/spaces", "gp_proxy/evaluate",
          "gp_proxy/bench", "gp_proxy/plugin", "gp_proxy/baselines", "gp_proxy/report",
          "gp_proxy/evolve", "gp_proxy/search", "gp_proxy/distill", "gp_proxy")


def _layer(module: str) -> int:
    path = module.replace(".", "/")
    return max((i for i, layer in enumerate(LAYERS)
                if path == layer or path.startswith(layer + "/")), default=-1)


def _imports(path: Path) -> list[tuple[str, int]]:
    rel = path.relative_to(ROOT).with_suffix("")
    package = ".".join(rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            parts = package.split(".")
            base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module]
                                                                    if node.module else []))
        else:
            base = node.module or ""
        names = [base] if node.module else [f"{base}.{a.name}" for a in node.names]
        out += [(n, node.lineno) for n in names]
    return out


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    files = sorted(p for top in ("primitives", "gp_proxy") for p in (ROOT / top).rglob("*.py"))
    assert len(files) > 60
    upward = []
    for f in files:
        rel = f.relative_to(ROOT).with_suffix("")
        me = _layer(".".join(rel.parts))
        for target, line in _imports(f):
            there = _layer(target)
            if there > me and LAYERS[there] != "gp_proxy":
                upward.append(f"{rel}.py:{line} imports {target}")
    assert upward == []


def test_every_package_is_a_layer() -> None:
    packages = {str(p.parent.relative_to(ROOT)) for top in ("primitives", "gp_proxy")
                for p in (ROOT / top).rglob("__init__.py")}
    assert packages == set(LAYERS)
