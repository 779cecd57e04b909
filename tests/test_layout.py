"""The import direction of docs/architecture.md: workflow -> methods -> evaluation -> core, nothing pointing back."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# each layer and the packages it must never import
FORBIDDEN = {"evaluation": {"methods", "workflow"}, "core": {"methods", "evaluation", "workflow"}}


def imported_packages(path: Path) -> set[str]:
    """Top-level packages a module imports, at module level or inside functions alike."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_imports_run_one_way():
    wrong = [
        f"{path.relative_to(ROOT)} imports {sorted(imported_packages(path) & banned)}"
        for layer, banned in FORBIDDEN.items()
        for path in sorted((ROOT / layer).rglob("*.py"))
        if imported_packages(path) & banned
    ]
    assert not wrong, wrong


def test_the_checker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from methods.common.rewards import Reward\n")
    assert imported_packages(module) == {"os", "methods"}
