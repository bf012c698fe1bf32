"""The dependency direction of the house style, enforced by import-linter (see pyproject.toml),
and, for the imports import-linter cannot see (by name, through importlib), by reading the source."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path


def test_import_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([exe], capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_importing_edgegen_loads_no_backend():
    code = "import sys, edgegen; print(any(m.split('.')[0] in ('mlx', 'onnxruntime', 'torch') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "False"


def _lookups_by_name(path: Path) -> list[tuple[int, str]]:
    """(line, source) of each `import_module(...)` call in `path` whose name is not
    f"{__name__}.<something>", i.e. that may import a module outside the caller's own package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                "import_module", "__import__"):
            name = node.args[0] if node.args else None
            own = (isinstance(name, ast.JoinedStr) and len(name.values) >= 2
                   and isinstance(name.values[0], ast.FormattedValue)
                   and getattr(name.values[0].value, "id", None) == "__name__"
                   and isinstance(name.values[1], ast.Constant) and str(name.values[1].value).startswith("."))
            if not own:
                found.append((node.lineno, ast.unparse(node)))
    return found


def test_lookups_by_name_stay_inside_their_package():
    """An architecture or runtime model found by name is imported by its own package
    (`edgegen.archs.arch_module`, `edgegen.runtimes.mlx.models.model_module`): a lookup in
    `edgegen.core` naming `edgegen.archs.<t>` would import upward where import-linter cannot see."""
    package = Path(__file__).parents[1] / "edgegen"
    upward = {str(p.relative_to(package)): calls for p in sorted(package.rglob("*.py")) if (calls := _lookups_by_name(p))}
    assert upward == {}


def test_the_by_name_check_sees_an_upward_lookup(tmp_path):
    bad = tmp_path / "registry.py"
    bad.write_text('import importlib\n'
                   'def arch(t):\n    return importlib.import_module(f"edgegen.archs.{t}")\n'
                   'def own(t):\n    return importlib.import_module(f"{__name__}.{t}")\n')
    assert [line for line, _ in _lookups_by_name(bad)] == [3]
