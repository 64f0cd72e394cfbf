"""Import boundaries (docs/architecture.md): checked in fresh interpreters and by reading import statements."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The import table of docs/architecture.md, as allow-lists: the top-level third-party modules and the first-party
# modules (prefixes) each group of files may import; the standard library is always allowed. A file belongs to the
# first group whose path prefix matches it. Lazy imports inside functions count too.
TORCH_FREE_RESCOM = (
    "rescom.version",
    "rescom.calibration",
    "rescom.preprocess",
    "rescom.metrics",
    "rescom.model_repository",
    "rescom.label_shift",
)
IMPORT_TABLE: list[tuple[str, set[str], tuple[str, ...]]] = [
    # (path prefix, third-party top-level modules, first-party module prefixes)
    ("rescom/__init__.py", set(), TORCH_FREE_RESCOM),
    ("rescom/version.py", set(), ()),
    ("rescom/calibration.py", {"numpy"}, ()),
    ("rescom/preprocess.py", {"numpy", "PIL"}, ()),
    ("rescom/metrics.py", {"numpy"}, ()),
    ("rescom/model_repository.py", set(), ()),
    ("rescom/label_shift.py", {"numpy"}, ("rescom.calibration",)),
    ("rescom/evaluation/", {"numpy", "matplotlib"}, (*TORCH_FREE_RESCOM, "rescom.evaluation")),
    ("rescom/", {"torch", "torchvision", "numpy", "PIL", "yaml", "sklearn"}, ("rescom",)),
    ("training/", {"torch", "numpy", "yaml", "tqdm", "onnxruntime"}, ("rescom", "training")),
    ("export/", {"torch", "numpy", "onnx", "onnxruntime"}, ("rescom", "export")),
    (
        "service/",
        {
            "fastapi",
            "starlette",
            "pydantic",
            "pydantic_settings",
            "uvicorn",
            "httptools",
            "orjson",
            "prometheus_client",
            "numpy",
            "PIL",
            "onnxruntime",
            "grpc",
            "google",  # google.protobuf, for the gRPC messages
        },
        (
            "rescom.version",
            "rescom.calibration",
            "rescom.label_shift",
            "rescom.preprocess",
            "rescom.model_repository",
            "service",
        ),
    ),
    (
        "rescom_dev/",
        {"numpy", "PIL", "onnx", "httpx", "uvicorn"},
        ("rescom.model_repository", "service", "rescom_dev"),
    ),
]
FIRST_PARTY = {"rescom", "training", "export", "service", "rescom_dev", "benchmarks", "scripts", "tests"}
TORCH_FREE = [
    "rescom/__init__.py",
    "rescom/version.py",
    "rescom/calibration.py",
    "rescom/preprocess.py",
    "rescom/metrics.py",
    "rescom/model_repository.py",
    "rescom/label_shift.py",
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


def _rule(relative: str) -> tuple[str, set[str], tuple[str, ...]]:
    return next(rule for rule in IMPORT_TABLE if relative.startswith(rule[0]))


def _disallowed(relative: str, names: set[str]) -> list[str]:
    _, third_party, first_party = _rule(relative)
    bad = []
    for name in sorted(names):
        top = name.split(".")[0]
        if top == "__future__" or top in sys.stdlib_module_names:
            continue
        if top in FIRST_PARTY:
            # ``import rescom`` / ``from rescom import __version__`` is rescom/__init__.py (torch-free).
            ok = name == "rescom" or any(name == p or name.startswith(p + ".") for p in first_party)
        else:
            ok = top in third_party
        if not ok:
            bad.append(name)
    return bad


@pytest.mark.parametrize("package", ["rescom", "training", "export", "service", "rescom_dev"])
def test_packages_respect_the_import_table(package):
    bad = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        found = _disallowed(relative, _imports(path))
        if found:
            bad[relative] = found
    assert bad == {}, "imports outside docs/architecture.md's table"


def test_the_import_table_rejects_what_it_should():
    assert _disallowed("service/x.py", {"torch", "rescom.models", "training.train", "numpy"}) == [
        "rescom.models",
        "torch",
        "training.train",
    ]
    assert _disallowed("rescom/calibration.py", {"torch", "numpy"}) == ["torch"]
    assert _disallowed("rescom/evaluation/x.py", {"rescom.models", "matplotlib.pyplot"}) == ["rescom.models"]
    assert _disallowed("export/x.py", {"training.engine", "service.main", "onnx.helper"}) == [
        "service.main",
        "training.engine",
    ]


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
