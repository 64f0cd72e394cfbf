"""Import boundaries (docs/architecture.md): checked in fresh interpreters and by reading import statements."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "service": {
        "torch",
        "torchvision",
        "training",
        "export",
        "rescom.models",
        "rescom.losses",
        "rescom.data",
        "rescom.queue",
        "rescom.mining",
        "rescom.checkpoint",
        "rescom.distributed",
    },
    "rescom": {"fastapi", "onnxruntime", "training", "export", "service"},
    "training": {"export", "service"},
    "export": {"training", "service"},
}
TORCH_FREE = [
    "rescom/__init__.py",
    "rescom/version.py",
    "rescom/calibration.py",
    "rescom/preprocess.py",
    "rescom/metrics.py",
    "rescom/model_repository.py",
]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _violations(names: set[str], forbidden: set[str]) -> set[str]:
    return {n for n in names for f in forbidden if n == f or n.startswith(f + ".")}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_respect_the_import_table(package):
    files = sorted((ROOT / package).rglob("*.py"))
    if not files:
        pytest.skip(f"{package}/ has no modules yet")
    bad = {str(f.relative_to(ROOT)): sorted(_violations(_imports(f), FORBIDDEN[package])) for f in files}
    assert {k: v for k, v in bad.items() if v} == {}


@pytest.mark.parametrize("module", TORCH_FREE)
def test_shared_modules_import_no_torch_statically(module):
    assert not _violations(_imports(ROOT / module), {"torch", "torchvision"})


def test_torch_free_modules_load_without_torch():
    code = (
        "import sys, rescom, rescom.calibration, rescom.preprocess, rescom.metrics, rescom.model_repository\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_service_loads_without_torch():
    if not (ROOT / "service" / "main.py").exists():
        pytest.skip("service/main.py not written yet")
    code = "import sys, service.main\nassert 'torch' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
