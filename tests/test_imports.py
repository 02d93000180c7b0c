"""No bnexp module imports a module that imports it back, directly or through others.

The import graph is read from the source (every import statement, also those inside functions, which only
postpone a circle), so the test needs no import side effects and names the circle it finds.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "bnexp"


def module_files(package_dir: Path) -> dict[str, Path]:
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports. `from pkg import sub` is an import of pkg.sub when sub is a
    module, else of pkg; `import pkg.sub.x` is an import of the deepest module it names."""
    modules = module_files(package_dir)

    def deepest_module(dotted: str) -> str:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(deepest_module(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: anchored at the importing module's package
                    anchor = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.add(submodule if submodule in modules else deepest_module(base))
        graph[name] = targets - {"", name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        for target in sorted(graph.get(module, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


def test_bnexp_has_no_import_circle():
    graph = import_graph(PACKAGE_DIR)
    assert {"bnexp.report", "bnexp.report_plots", "bnexp.records", "bnexp.sweep", "bnexp.norm.layer"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_tables_and_plots_share_the_records_module():
    graph = import_graph(PACKAGE_DIR)
    assert "bnexp.records" in graph["bnexp.report"] and "bnexp.records" in graph["bnexp.report_plots"]
    assert "bnexp.report" not in graph["bnexp.report_plots"]


def test_a_circle_through_a_function_level_import_is_found(tmp_path: Path):
    package = tmp_path / "pkg"
    (package / "inner").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "inner" / "__init__.py").write_text("from .tables import table\n")
    (package / "inner" / "tables.py").write_text("def table():\n    from pkg import plots\n    return plots\n")
    (package / "plots.py").write_text("from pkg.inner.tables import table\nimport numpy\n")
    (package / "leaf.py").write_text("import pkg.inner.tables\n")
    graph = import_graph(package)
    assert graph == {"pkg": set(), "pkg.inner": {"pkg.inner.tables"}, "pkg.inner.tables": {"pkg.plots"},
                     "pkg.plots": {"pkg.inner.tables"}, "pkg.leaf": {"pkg.inner.tables"}}
    assert find_cycle(graph) == ["pkg.inner.tables", "pkg.plots", "pkg.inner.tables"]
    (package / "inner" / "tables.py").write_text("def table():\n    return 1\n")
    assert find_cycle(import_graph(package)) is None
