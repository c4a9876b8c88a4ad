"""One import namespace: npinfer's packages are `npinfer.*`, and nothing of it shadows another
distribution's top-level package, installed or run from this checkout.

transformers (5.25 and later) imports Hugging Face's `kernels` package; npinfer's folder of the same
name must never be what `import kernels` finds, from any working directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("kernels", "tokenizer", "mistral_np", "jamba_np", "engine")


def run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -c code` in `cwd` (which Python puts first on sys.path, as `python -m pytest` does)."""
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("cwd", [ROOT, ROOT / "tests"], ids=["checkout root", "tests folder"])
def test_transformers_imports_its_own_kernels_beside_npinfer(cwd):
    proc = run("import transformers.integrations.hub_kernels, kernels, npinfer.engine.cli, npinfer.kernels.ops as ops\n"
               "from kernels import CUDAProperties\n"
               "assert 'site-packages' in kernels.__file__, kernels.__file__\n"
               "assert ops.__file__.endswith('kernels/ops.py')\n"
               "print('ok')", cwd)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_the_top_level_folders_are_no_packages_of_their_own():
    """No __init__.py at the top of the five folders: run from the checkout, `import engine` (or
    kernels, tokenizer, ...) can only find a namespace portion, which any real package of that
    name outranks; npinfer itself is reached as npinfer.engine."""
    for folder in FOLDERS:
        assert not (ROOT / folder / "__init__.py").exists(), folder


def test_the_wheel_lists_every_package_folder():
    """Every folder of the five that holds Python code is a package of the distribution, under
    npinfer (a `data/` folder is package data). A folder missing from the list would be absent
    from a non-editable install."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"npinfer": "."}
    listed = set(config["packages"])
    found = {"npinfer." + ".".join(d.relative_to(ROOT).parts) for folder in FOLDERS
             for d in [ROOT / folder, *(ROOT / folder).rglob("*")]
             if d.is_dir() and d.name not in ("__pycache__", "data") and any(d.rglob("*.py"))}
    assert listed == found


def test_an_installed_npinfer_adds_no_generic_top_level_name(tmp_path):
    """From a folder outside the checkout: `npinfer` imports, the generic names do not come from it."""
    proc = run("import importlib.util, npinfer.engine.cli\n"
               "for name in ('engine', 'tokenizer', 'mistral_np', 'jamba_np'):\n"
               "    assert importlib.util.find_spec(name) is None, name\n"
               "spec = importlib.util.find_spec('kernels')\n"
               "assert spec is None or 'site-packages' in (spec.origin or ''), spec\n"
               "print('ok')", tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
