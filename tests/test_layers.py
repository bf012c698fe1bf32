"""The dependency direction of the house style, enforced by import-linter (see pyproject.toml)."""

from __future__ import annotations

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
