"""Packaging: a built wheel carries the presets, energy tables, experiments, sweeps, model configs and kernel
source, and an installed copy finds them from any directory; `make run` installs runtime dependencies only;
the command line has --version, complete help, and light start-up for `op` and `hw`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import simcore
from simcore.cli import COMMAND_MODULES, build_parser, summary

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "configs", "simcore", "hardware", "models", "traces")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_is_listed() -> None:
    """pyproject lists packages explicitly (to map configs/ into simcore/configs): none may be missing."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("simcore", "hardware", "models", "traces")
        for p in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert listed == found | {"simcore.configs"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of a copy of the sources (so the build writes nothing into the checkout)."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(src), "-w", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = out.glob("simcore-*.whl")
    return whl


def test_wheel_carries_the_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"simcore/configs/{p.relative_to(ROOT / 'configs').as_posix()}" for p in
                (ROOT / "configs").rglob("*") if p.is_file()}  # fmt: skip
    expected |= {f"models/configs/{p.name}" for p in (ROOT / "models" / "configs").glob("*.json")}
    expected |= {"simcore/native/refkernels.c", "simcore/cli.py", "hardware/gpu.py", "traces/__init__.py"}
    assert expected <= names, sorted(expected - names)
    assert any(n.startswith("simcore/configs/hardware/gpus/") for n in names)
    assert any(n.startswith("simcore/configs/energy/") for n in names)
    assert not any(n.endswith(".so") for n in names)  # the kernels are compiled on the user's machine
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert f"Version: {simcore.__version__}" in zipfile.ZipFile(wheel).read(meta).decode()


def test_installed_copy_works_from_any_directory(wheel: Path, tmp_path: Path) -> None:
    """The wheel's files (unzipped as pip would) run `hw list` and the quickstart from an unrelated cwd,
    reading the package's own configs, with the same numbers as this checkout."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    quickstart = ROOT / "configs" / "experiments" / "quickstart.yaml"
    script = (
        "import sys, json, io, contextlib\n"
        f"sys.path.insert(0, {str(site)!r})\n"
        "import simcore, simcore.config as c, simcore.energy as e\n"
        "from simcore.cli import main\n"
        f"assert simcore.__file__.startswith({str(site)!r}), simcore.__file__\n"
        f"assert c.CONFIG_ROOT == c.Path({str(site)!r}) / 'simcore' / 'configs', c.CONFIG_ROOT\n"
        "assert e.ENERGY_DIR.is_dir()\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    assert main(['hw', 'list', '--json']) == 0\n"
        "    assert main(['models', '--json']) == 0\n"
        f"    assert main(['run', {str(quickstart)!r}, '--json']) == 0\n"
        "print(out.getvalue())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=work, capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    presets, models, result = proc.stdout.strip().splitlines()
    import json

    from simcore.config import preset_names

    assert len(json.loads(presets)) >= len([n for n in preset_names("hardware") if not n.startswith("arch-")])
    assert {m["name"] for m in json.loads(models)} >= {"llama-2-7b", "gpt3-175b"}
    mine = subprocess.run([sys.executable, "-m", "simcore", "run", str(quickstart), "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert json.loads(result) == json.loads(mine.stdout)


def test_installed_kernels_build_in_the_cache(wheel: Path, tmp_path: Path) -> None:
    """Installed, the native library goes to the user cache dir, never into site-packages."""
    if not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = (
        f"import sys; sys.path.insert(0, {str(site)!r})\n"
        "import numpy as np\nfrom simcore import native\n"
        "print(native.build())\n"
        "assert np.allclose(native.gemm(np.eye(3), np.ones((3, 2))), np.ones((3, 2)))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "SIMCORE_CACHE_DIR": str(tmp_path / "c")
    }
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Path(proc.stdout.strip()).parent == tmp_path / "c"
    assert not list((site / "simcore" / "native").glob("*.so"))


@pytest.mark.skipif(not shutil.which("make"), reason="no make")
def test_make_run_installs_runtime_dependencies_only() -> None:
    def plan(target: str) -> str:
        return subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True).stdout

    run, test = plan("run"), plan("test")
    assert "pip install -q -e .\n" in run and "[dev]" not in run
    assert "simcore run configs/experiments/quickstart.yaml" in run
    assert "pip install -q -e '.[dev]'" in test and "pytest" in test


# ---------------------------------------------------------------------------------------------- CLI


def _simcore(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simcore", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_version() -> None:
    proc = _simcore("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"simcore {simcore.__version__}"
    assert _pyproject()["project"]["dynamic"] == ["version"]  # one source: simcore.__version__


def test_help_is_complete() -> None:
    """Every command is listed with the whole first paragraph of its docstring, none cut mid-sentence."""
    from simcore.cli import COMMANDS

    build_parser()
    text = " ".join(_simcore("--help").stdout.split())
    assert set(COMMAND_MODULES) <= set(COMMANDS)
    for name, (_, fn) in COMMANDS.items():
        assert summary(fn) in text, name
        assert summary(fn).endswith((".", ")")), name
        sub = _simcore(name, "--help")
        assert sub.returncode == 0 and summary(fn) in " ".join(sub.stdout.split())


@pytest.mark.parametrize(
    "argv",
    [
        ["op", "gemm", "--hw", "h100-sxm5-80gb", "-m", "256", "-n", "256", "-k", "256"],
        ["hw", "show", "h100-sxm5-80gb"],
        ["hw", "list"],
    ],
)
def test_light_commands_import_only_what_they_use(argv: list[str]) -> None:
    """`op` and `hw` never import the sweep or validation stack, nor pandas, matplotlib or scipy."""
    script = (
        "import sys, io, contextlib\nfrom simcore.cli import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n    assert main({argv!r}) == 0\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    heavy = {"simcore.sweep", "simcore.validate", "pandas", "matplotlib", "scipy", "dask", "ray", "onnx"}
    assert not heavy & loaded
