"""The README is a contract: every code block in it runs here, so an example that stops working fails CI.

- `sh` blocks: each command runs with bash in a scratch directory that sees the project's `configs/` (and
  `../shared`, when the calibration data is beside the project), and must exit 0.
- `python` blocks: each runs in a fresh interpreter in that directory.
- `yaml` blocks name their file in a first comment line (`# my-gpu.yaml: ...`); they are written there, then a
  hardware description is shown with `simcore hw show FILE` and an experiment is run with `simcore run FILE`.

A block preceded by an HTML comment starting `<!-- not run` is skipped, with the reason in that comment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```(\w*)\s*$")


def blocks() -> list[tuple[int, str, str, str]]:
    """(line, language, text, what precedes it since the previous block) of every fenced block."""
    out, lines = [], (ROOT / "README.md").read_text().splitlines()
    i, before = 0, []
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m and m.group(1):
            start, body = i + 1, []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            out.append((start, m.group(1), "\n".join(body), "\n".join(before)))
            before = []
        else:
            before.append(lines[i])
        i += 1
    return out


BLOCKS = blocks()


def commands(text: str) -> list[str]:
    """The block's commands, continuation lines joined."""
    out, cur = [], ""
    for line in text.splitlines():
        cur += line.rstrip("\\") + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            if cur.strip() and not cur.strip().startswith("#"):
                out.append(cur.strip())
            cur = ""
    return out


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A scratch directory laid out like a checkout: `configs/` here, `../shared` beside it."""
    w = tmp_path / "work"
    w.mkdir()
    (w / "configs").symlink_to(ROOT / "configs")
    if SHARED.exists():
        (tmp_path / "shared").symlink_to(SHARED)
    return w


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "MPLBACKEND": "Agg"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("line", "lang", "text", "before"), BLOCKS, ids=[f"line{b[0]}-{b[1]}" for b in BLOCKS]
)
def test_readme_block_runs(line: int, lang: str, text: str, before: str, work: Path) -> None:
    if "<!-- not run" in before:
        pytest.skip(before[before.index("<!-- not run") :].split("-->")[0])
    if lang == "sh":
        for cmd in commands(text):
            if "../shared" in cmd and not SHARED.exists():
                pytest.skip("the calibration data is not beside the project")
            p = _run(["bash", "-o", "pipefail", "-c", cmd], work)
            assert p.returncode == 0, f"README line {line}: `{cmd}` exited {p.returncode}: {p.stderr[-800:]}"
    elif lang == "python":
        p = _run([sys.executable, "-c", text], work)
        assert p.returncode == 0, f"README line {line}: python block failed: {p.stderr[-1500:]}"
    elif lang == "yaml":
        named = [b for b in BLOCKS if b[1] == "yaml" and re.match(r"#\s*[\w.-]+\.yaml", b[2])]
        for _, _, other, _ in named:  # every named file, so one can refer to another
            (work / re.match(r"#\s*([\w.-]+\.yaml)", other).group(1)).write_text(other + "\n")
        m = re.match(r"#\s*([\w.-]+\.yaml)", text)
        assert m, f"README line {line}: a yaml block must name its file in its first line (# NAME.yaml: ...)"
        data = yaml.safe_load(text)
        cmd = (
            ["simcore", "run", m.group(1), "--json"]
            if "scenario" in data
            else ["simcore", "hw", "show", m.group(1)]
        )
        p = _run(cmd, work)
        assert p.returncode == 0, (
            f"README line {line}: `{' '.join(cmd)}` exited {p.returncode}: {p.stderr[-800:]}"
        )
    else:
        pytest.fail(f"README line {line}: a {lang!r} block: teach tests/test_readme.py how to run it")


def test_the_quickstart_that_make_run_ends_with(work: Path) -> None:
    makefile = (ROOT / "Makefile").read_text()
    run = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    cmd = next(line.strip() for line in run.splitlines() if "simcore" in line)
    cmd = cmd.replace("$(VENV)/bin/", "")
    p = _run(["bash", "-c", cmd], work)
    assert p.returncode == 0 and "latency_s" in p.stdout, p.stderr[-800:]
