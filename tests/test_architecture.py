"""The layout's rules, checked: imports point down the layers (import-linter's contracts in
pyproject.toml), report/ never reaches torch, modules and functions stay small, and the layers'
__init__ files stay empty (a cold start measures exactly what a child process imports)."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "src" / "gpt2bench"
LINT = Path(sys.executable).with_name("lint-imports")
LAYERS = ("cli", "sweep", "report", "measure", "machine", "backends", "models", "core")


def lint_imports(src: Path) -> subprocess.CompletedProcess:
    """lint-imports with the project's contracts over the package found under `src`."""
    return subprocess.run(
        [str(LINT), str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=src,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(src)},
        timeout=120,
    )


def test_the_tree_keeps_every_import_contract():
    proc = lint_imports(ROOT / "src")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout


@pytest.fixture
def copy_of_the_package(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "gpt2bench", ignore=shutil.ignore_patterns("__pycache__", "assets"))
    return tmp_path


@pytest.mark.parametrize("layer", ["measure.harness", "report.store", "sweep.driver", "cli.options"])
def test_a_backend_importing_from_a_layer_above_breaks_the_contract(copy_of_the_package, layer):
    hf = copy_of_the_package / "gpt2bench" / "backends" / "hf.py"
    # Even a lazy import inside a function: it still ties the backend to the layer above.
    hf.write_text(hf.read_text() + f"\n\ndef _upward():\n    import gpt2bench.{layer}  # noqa: F401\n")
    proc = lint_imports(copy_of_the_package)
    assert proc.returncode == 1 and "layers: imports point down" in proc.stdout and "BROKEN" in proc.stdout
    assert f"gpt2bench.backends.hf -> gpt2bench.{layer}" in proc.stdout


def test_report_reaching_torch_through_another_module_breaks_the_contract(copy_of_the_package):
    plot = copy_of_the_package / "gpt2bench" / "report" / "plot.py"
    # quality computes its reference with hf-eager, importing torch: plot would reach it too.
    plot.write_text(plot.read_text() + "\n\ndef _heavy():\n    from gpt2bench.measure import quality  # noqa: F401\n")
    proc = lint_imports(copy_of_the_package)
    assert proc.returncode == 1 and "report/ never reaches torch" in proc.stdout


def _sources():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_over_400_lines_and_no_function_over_60():
    long_modules = [
        f"{p.relative_to(PACKAGE)}: {n}" for p in _sources() if (n := len(p.read_text().splitlines())) > 400
    ]
    long_functions = [
        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1}"
        for path in _sources()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert not long_modules and not long_functions, long_modules + long_functions


def test_every_layer_is_a_package_with_an_empty_init():
    for layer in LAYERS:
        init = PACKAGE / layer / "__init__.py"
        assert init.is_file(), layer
        if layer != "backends":  # importing backends registers the built-in ones (its docstring says why)
            assert init.read_text() == "", layer
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "__main__.py"]
