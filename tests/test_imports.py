"""No import cycles among harness/ and plugins/, and the core never imports a plugin (scripts/check_imports.py)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import check_imports  # noqa: E402

def test_no_import_cycles_and_no_core_import_of_plugins():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_imports.py")], capture_output=True,
                          text=True, timeout=120)
    graph = check_imports.import_graph()
    found = check_imports.components(graph)
    assert found == [], proc.stdout
    assert check_imports.core_imports_of_plugins(graph) == []
    assert proc.returncode == (1 if found else 0) and f" {len(found)} cycle(s), 0 core import(s)" in proc.stdout
    # nor by name (importlib, entry-point strings): the core never names the built-in plugins' package
    named = [str(p.relative_to(ROOT)) for p in (ROOT / "harness").rglob("*.py") if "harness_plugins" in p.read_text()]
    assert named == []


def _engine_imports(path) -> list[str]:
    """The ``harness._engine`` modules a file imports (absolute imports: these files live outside ``harness``)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return sorted({n for n in names if n == "harness._engine" or n.startswith("harness._engine.")})


def test_plugins_examples_and_studies_import_only_the_public_api():
    # The layout is the contract: what a plugin may import sits at the top of `harness`; the engine is private.
    # The study's code and tests count as a third party's (they read runs through harness.results and drive the
    # engine through harness.cli, as a user would).
    files = [p for d in ("plugins", "examples", "studies") for p in sorted((ROOT / d).rglob("*.py"))]
    assert files
    private = {str(p.relative_to(ROOT)): found for p in files if (found := _engine_imports(p))}
    assert private == {}


def test_checker_sees_function_level_and_type_checking_imports(tmp_path, monkeypatch):
    # A two-module package whose circle is closed only by a deferred import and a TYPE_CHECKING one.
    pkg = tmp_path / "harness"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "loop.py").write_text("def plan():\n    from .cost import estimate\n    return estimate()\n")
    (pkg / "cost.py").write_text(textwrap.dedent("""
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from .loop import plan
        def estimate():
            return 0
        """))
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "__init__.py").write_text("")
    (plugins / "thing.py").write_text("from harness import loop\n")
    (pkg / "core.py").write_text("import harness_plugins.thing\n")
    monkeypatch.setattr(check_imports, "PACKAGES", {"harness": pkg, "harness_plugins": plugins})
    graph = check_imports.import_graph()
    assert graph["harness.loop"] == {"harness.cost"} and graph["harness.cost"] == {"harness.loop"}
    assert graph["harness_plugins.thing"] == {"harness.loop"}  # `from pkg import module` names the module
    assert check_imports.components(graph) == [["harness.cost", "harness.loop"]]
    assert check_imports.cycles(graph) == [["harness.cost", "harness.loop", "harness.cost"]]
    assert check_imports.core_imports_of_plugins(graph) == [("harness.core", "harness_plugins.thing")]
