"""pyproject.toml: the `mini-llm` command, the module list, the dependency pins, a real wheel."""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

tomllib = pytest.importorskip("tomllib")   # Python >= 3.11, as pyproject.toml requires


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def listed_modules() -> list[str]:
    return pyproject()["tool"]["setuptools"]["py-modules"]


def top_level_modules() -> set[str]:
    return {p.stem for p in ROOT.glob("*.py")}


def test_console_command_resolves_to_main():
    target = pyproject()["project"]["scripts"]["mini-llm"]
    module_name, _, attr = target.partition(":")
    assert (module_name, attr) == ("main", "main")
    module = importlib.import_module(module_name)
    assert Path(module.__file__).resolve() == ROOT / "main.py"
    assert callable(getattr(module, attr))


def test_every_top_level_module_is_packaged():
    missing = top_level_modules() - set(listed_modules())
    assert not missing, f"add {sorted(missing)} to py-modules in pyproject.toml"


def test_every_packaged_module_exists():
    listed = listed_modules()
    assert len(listed) == len(set(listed)), "py-modules lists a module twice"
    absent = set(listed) - top_level_modules()
    assert not absent, f"py-modules lists modules with no .py file: {sorted(absent)}"


def _requirement_lines(path: Path) -> list[str]:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def test_dependencies_come_from_the_requirement_files():
    project = pyproject()["project"]
    assert "dependencies" in project["dynamic"]
    assert pyproject()["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
    assert "torch==2.13.0" in _requirement_lines(ROOT / "requirements.txt")
    # The `dev` extra repeats requirements-dev.txt's own lines (its `-r requirements.txt` aside).
    assert project["optional-dependencies"]["dev"] == _requirement_lines(ROOT / "requirements-dev.txt")


def _can_build_wheels_offline() -> bool:
    """setuptools >= 70.1 builds wheels by itself; older ones need the `wheel` package."""
    import importlib.metadata
    import importlib.util
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    major_minor = tuple(int(x) for x in version.split(".")[:2] if x.isdigit())
    return major_minor >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.mark.skipif(not _can_build_wheels_offline(),
                    reason="building a wheel without network needs setuptools>=70.1 (or the `wheel` "
                           "package) in this environment; a fresh venv ships an older setuptools")
def test_wheel_installs_a_working_mini_llm_command(tmp_path):
    """Build a wheel from a copy of the tree, install it into a folder, run `mini-llm`.

    Modules that other stages have not written yet are stubbed in the copy (the tests
    above name them), so this checks the packaging itself: the build, the module list,
    the dependency pins, and that the command's exit code is main()'s return value.
    """
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "requirements.txt", "requirements-dev.txt"):
        shutil.copy(ROOT / name, src / name)
    for module in listed_modules():
        if (ROOT / f"{module}.py").exists():
            shutil.copy(ROOT / f"{module}.py", src / f"{module}.py")
        else:
            (src / f"{module}.py").write_text('"""Not written yet."""\n', encoding="utf-8")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(wheels), str(src)],
                           capture_output=True, text=True, timeout=120, env=env)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("mini_llm-*.whl")

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert {f"{m}.py" for m in listed_modules()} <= names
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(meta).decode()
        entry_points = zf.read(meta.replace("METADATA", "entry_points.txt")).decode()
    assert "mini-llm = main:main" in entry_points
    assert "Requires-Dist: torch==2.13.0" in metadata
    assert not any(n.startswith(("tests/", "bench/")) for n in names)

    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                              "--target", str(target), str(wheel)],
                             capture_output=True, text=True, timeout=120, env=env)
    assert install.returncode == 0, install.stdout + install.stderr
    command = target / "bin" / "mini-llm"
    assert command.is_file()
    # Run the installed command from elsewhere, so it imports the installed modules.
    run_env = {**env, "PYTHONPATH": str(target)}
    ok = subprocess.run([str(command), "--help"], capture_output=True, text=True,
                        timeout=60, env=run_env, cwd=tmp_path)
    assert ok.returncode == 0 and "report" in ok.stdout, ok.stderr
    bad = subprocess.run([str(command), "report", str(tmp_path / "no-such-run"), "--out",
                          str(tmp_path / "r.html")], capture_output=True, text=True,
                         timeout=60, env=run_env, cwd=tmp_path)
    assert bad.returncode == 2, (bad.returncode, bad.stderr)
    assert bad.stderr.startswith("error: run folder not found")
