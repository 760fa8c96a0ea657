"""The package as pip installs it: pins that agree, console scripts that resolve, no sys.path edits."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def _canonical(requirement: str) -> str:
    name, _, version = requirement.partition("==")
    return f"{re.sub(r'[-_.]+', '-', name).lower()}=={version}"


def test_requirements_txt_and_pyproject_pin_the_same_versions():
    project = PYPROJECT["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["test"]
    listed = _requirement_lines(ROOT / "requirements.txt")
    assert sorted(map(_canonical, declared)) == sorted(map(_canonical, listed))
    unpinned = [r for r in declared if not re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][0-9A-Za-z.+\-]*", r)]
    assert not unpinned, f"pin every requirement with ==: {unpinned}"


def test_pins_are_the_versions_installed_here():
    from importlib.metadata import version

    for requirement in PYPROJECT["project"]["dependencies"]:
        name, _, pinned = requirement.partition("==")
        assert version(name) == pinned, f"{name}: installed {version(name)}, pinned {pinned}"


@pytest.mark.parametrize("script", sorted(PYPROJECT["project"]["scripts"]))
def test_console_scripts_resolve_to_callables(script):
    module_name, _, attr = PYPROJECT["project"]["scripts"][script].partition(":")
    assert callable(getattr(importlib.import_module(module_name), attr))


def test_no_file_outside_tests_edits_sys_path():
    sources = [p for folder in ("hirl_like", "tools", "eval_common") for p in (ROOT / folder).rglob("*.py")]
    sources.append(ROOT / "launch.py")
    offenders = [str(p.relative_to(ROOT)) for p in sources if re.search(r"sys\.path\.(insert|append)|sys\.path\s*=", p.read_text())]
    assert not offenders


def test_package_imports_from_another_directory(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "import hirl_like, hirl_like.evaluation, hirl_like.cli.train; print(hirl_like.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).resolve() == (ROOT / "hirl_like" / "__init__.py").resolve()
