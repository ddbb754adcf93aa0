"""A seeded fuzz of every shipped YAML and of the command-line flags, run in-process through
`simcore.cli.main`: bad input ends in exit 2 (3 for out of memory) with at most two lines on stderr, never a
traceback, a hang, or NaN/Infinity in the output, and nonsense (NaN, tags, bare numbers for a unit, alias
bombs, ...) is refused rather than simulated.

The seed is fixed (SIMCORE_FUZZ_SEED overrides it, SIMCORE_FUZZ_CASES the number of YAML cases); a failure
prints the seed and every failing case (its mutation and command line), so it replays exactly.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from simcore.cli import main
from simcore.config import CONFIG_DIRS
from simcore.errors import SimError
from simcore.units import value_kind

SEED = int(os.environ.get("SIMCORE_FUZZ_SEED", "20261201"))
YAML_CASES = int(os.environ.get("SIMCORE_FUZZ_CASES", "900"))
FLAG_CASES = 300
CASE_LIMIT_S = 5.0  # a case slower than this is a hang
TOTAL_LIMIT_S = 60.0

CONFIGS = CONFIG_DIRS[0]
HARDWARE = sorted((CONFIGS / "hardware").rglob("*.yaml"))
EXPERIMENTS = sorted((CONFIGS / "experiments").glob("*.yaml"))
SWEEPS = sorted((CONFIGS / "sweeps").glob("*.yaml"))

# ----------------------------------------------------------------------------------- mutations
#: values a key is set to (dumped as YAML); the tag says what refusing them means
NAN, INF = float("nan"), float("inf")
VALUES: list[tuple[str, Any]] = [
    ("nan", NAN), ("inf", INF), ("-inf", -INF), ("huge", 10**400), ("huge", 1e308 * 10), ("neg", -1),
    ("neg", -2.5), ("neg", "-3 TB/s"), ("bare", 2.1), ("bare", 5300), ("bare", "5300"), ("zero", 0),
    ("zero", "0 GB/s"), ("type", "garbage"), ("type", ""), ("type", None), ("type", True), ("type", [1, 2]),
    ("type", {"a": 1}), ("huge", "1e999 GHz"), ("big", "1e30 TB/s"), ("big", 2**63), ("unit", "3 parsecs"),
    ("unit", "80 GiB"), ("unit", "1.41 GHz"),
]  # fmt: skip
#: raw YAML text put where a value goes
RAW: list[tuple[str, str]] = [
    ("tag", "!!python/object/apply:os.system ['true']"), ("tag", "!!set {a, b}"), ("tag", "!foo bar"),
    ("tag", "!!binary aGVsbG8="), ("tag", "!!python/name:os.system"), ("alias", "*undefined"),
    ("nan", ".nan"), ("nan", ".NaN"), ("inf", ".inf"), ("inf", "-.inf"), ("huge", "1e999"),
    ("huge", "9" * 5000), ("deep", "[" * 400 + "]" * 400), ("deep", "{a: " * 80 + "1" + "}" * 80),
    ("broken", "[" * 3000), ("recursive", "&r [*r]"), ("text", "2001-12-14"), ("text", "12:30:00"),
    ("text", "0x1F"), ("text", "="), ("text", "<<"), ("dup", "{a: 1, a: 2}"), ("ctrl", '"\\x07"'),
]  # fmt: skip
BOMB = "".join(
    f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else 'x'] * 9)}]\n" for i in range(10)
)  # ~400 bytes, 9**9 values if expanded
NONSENSE = {"nan", "inf", "-inf", "huge", "tag", "alias", "deep", "broken", "recursive", "dup", "ctrl",
            "bomb", "merge", "bytes", "nest", "multidoc"}  # fmt: skip


def key_paths(data: Any, path: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(data, dict):
        for k, v in data.items():
            out.append(path + (k,))
            out += key_paths(v, path + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out.append(path + (i,))
            out += key_paths(v, path + (i,))
    return out


def get(data: Any, path: tuple) -> Any:
    for k in path:
        data = data[k]
    return data


def _numeric(value: Any) -> bool:
    """A number, or a number with a unit."""
    return (isinstance(value, int | float) and not isinstance(value, bool)) or value_kind(value) is not None


@dataclass
class Case:
    text: bytes
    what: str  #: a short description of the mutation, for the failure report
    kind: str  #: NONSENSE kinds must be refused
    must_refuse: bool = False


def mutate(rng: random.Random, original: str) -> Case:
    data = yaml.safe_load(original)
    paths = [p for p in key_paths(data) if p]
    op = rng.choice(["delete", "rename", "value", "value", "value", "raw", "raw", "truncate", "bytes", "ctrl",
                     "bomb", "merge", "nest", "multidoc", "dupkey", "tabs", "empty"])  # fmt: skip
    if op in ("delete", "rename", "value", "raw") and paths:
        numbers = [p for p in paths if _numeric(get(data, p))]
        path = rng.choice(numbers if numbers and op == "value" and rng.random() < 0.7 else paths)
        parent, key = get(data, path[:-1]), path[-1]
        old = parent[key]
        what = f"{op} {'.'.join(map(str, path))}"
        if op == "delete":
            del parent[key]
            return Case(yaml.safe_dump(data, sort_keys=False).encode(), what, "delete")
        if op == "rename":
            if isinstance(parent, dict):
                parent[f"{key}x"] = parent.pop(key)
            else:
                parent[key] = {"x": old}
            return Case(yaml.safe_dump(data, sort_keys=False).encode(), what, "rename")
        numeric = _numeric(old)
        if op == "value":
            kind, value = rng.choice(VALUES)
            parent[key] = value
            text = yaml.safe_dump(data, sort_keys=False)
            # no shipped number is negative, none that has a unit may be written without one
            refuse = numeric and (kind in ("nan", "inf", "-inf", "huge", "neg") or
                                  (kind == "bare" and value_kind(old) is not None))  # fmt: skip
            return Case(text.encode(), f"{what} = {value!r:.40}", kind, refuse)
        kind, raw = rng.choice(RAW)
        parent[key] = "@@RAW@@"
        text = yaml.safe_dump(data, sort_keys=False, width=10**6).replace("'@@RAW@@'", raw)
        text = text.replace("@@RAW@@", raw)
        refuse = kind in ("tag", "alias", "deep", "broken", "recursive", "dup", "ctrl") or (
            numeric and kind in ("nan", "inf", "huge"))  # fmt: skip
        return Case(text.encode(), f"{what} = {raw[:40]}", kind, refuse)
    raw = original.encode()
    at = rng.randrange(len(raw) + 1)
    if op == "truncate":
        return Case(raw[:at], f"truncate at byte {at}", "truncate")
    if op == "bytes":
        junk = rng.choice([b"\xff", b"\xc3\x28", b"\x80\x80", b"\xfe\xff"])
        return Case(raw[:at] + junk + raw[at:], f"insert {junk!r} at byte {at}", "bytes", True)
    if op == "ctrl":
        junk = rng.choice(["\x00", "\x07", "\x1b", "\x7f"]).encode()
        return Case(raw[:at] + junk + raw[at:], f"insert {junk!r} at byte {at}", "ctrl", True)
    if op == "bomb":
        return Case(BOMB.encode() + raw, "billion laughs", "bomb", True)
    if op == "merge":
        return Case(b"anchor: &m {sms: 1}\n<<: *m\n" + raw, "merge key", "merge", True)
    if op == "nest":
        n = rng.choice([65, 300, 5000])
        return Case(raw + f"\nnested: {'[' * n}{']' * n}\n".encode(), f"nesting {n} deep", "nest", True)
    if op == "multidoc":
        return Case(raw + b"\n---\nname: second\n", "second document", "multidoc", True)
    if op == "dupkey":
        first = next((ln for ln in original.splitlines() if re.match(r"^\w[\w-]*:", ln)), "x: 1")
        return Case(raw + f"\n{first}\n".encode(), f"duplicate {first.split(':')[0]!r}", "dup", True)
    if op == "tabs":
        return Case(original.replace("  ", "\t", 1).encode(), "tab indent", "tabs")
    return Case(b"", "empty file", "empty")


# ----------------------------------------------------------------------------------- running
class Hang(BaseException):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise Hang


@dataclass
class Outcome:
    rc: int | None
    out: str
    err: str
    seconds: float
    exc: str = ""  #: an exception that escaped main, formatted


def invoke(argv: list[str]) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    exc = ""
    rc: int | None = None
    t0 = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, CASE_LIMIT_S)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    except Hang:
        exc = f"hang: no answer within {CASE_LIMIT_S} s"
    except SystemExit as e:  # argparse's --help / --version
        rc = e.code if isinstance(e.code, int) else 0
    except BaseException:  # noqa: B036 - anything escaping main is what this test looks for
        exc = traceback.format_exc(limit=-3)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return Outcome(rc, out.getvalue(), err.getvalue(), time.perf_counter() - t0, exc)


def load_sweep_like_cli(path: str) -> Outcome:
    """A sweep file is loaded and its first point built the way `simcore sweep` does, without running the
    points (each would be a simulation); errors are reported as `main` reports them."""

    def run() -> int:
        from simcore.experiment import load_experiment
        from simcore.sweep.spec import load_sweep

        spec = load_sweep(path)
        points = spec.points()
        if points:
            load_experiment(spec.template().doc(spec.config(points[0])))
        return 0

    out, err = io.StringIO(), io.StringIO()
    exc, rc = "", None
    t0 = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, CASE_LIMIT_S)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = run()
            except SimError as e:
                print(f"simcore: {e}", file=err)
                rc = e.exit_code
    except Hang:
        exc = f"hang: no answer within {CASE_LIMIT_S} s"
    except BaseException:  # noqa: B036
        exc = traceback.format_exc(limit=-3)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return Outcome(rc, out.getvalue(), err.getvalue(), time.perf_counter() - t0, exc)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} in JSON output")


_NAN_WORD = re.compile(r"(?<![\w.])[-+]?(nan|inf|infinity)(?![\w])", re.IGNORECASE)


def problems(o: Outcome, argv: list[str], must_refuse: bool) -> list[str]:
    """What is wrong with one outcome (empty when the contract holds)."""
    if o.exc:
        return [o.exc.strip().splitlines()[0] if o.exc.startswith("hang") else "exception escaped main:\n"
                + o.exc.strip()]  # fmt: skip
    bad = []
    text = o.out + o.err
    if o.rc not in (0, 2, 3):
        bad.append(f"exit code {o.rc}: {o.err.strip()[:300]}")
    if "Traceback" in text:
        bad.append("traceback in output")
    if o.rc != 0 and len(o.err.strip().splitlines()) > 2:
        bad.append(f"{len(o.err.splitlines())} lines on stderr")
    if o.rc != 0 and not o.err.strip() and argv:  # no arguments at all: the help, on stdout
        bad.append("failed without a message")
    if o.seconds > CASE_LIMIT_S:
        bad.append(f"took {o.seconds:.1f} s")
    if o.rc == 0 and "--json" in argv:
        try:
            json.loads(o.out, parse_constant=_no_constant)
        except ValueError as e:
            bad.append(f"stdout is not strict JSON: {e}")
    elif o.rc == 0 and _NAN_WORD.search(o.out):
        bad.append(f"NaN/Infinity in output: {_NAN_WORD.search(o.out).group(0)!r}")
    if must_refuse and o.rc == 0:
        bad.append("nonsense accepted (exit 0)")
    return bad


def argv_for(rng: random.Random, kind: str, path: str, what: str = "") -> list[str]:
    if kind == "hardware":
        return rng.choice([
            ["hw", "show", path, "--json"],
            ["hw", "show", path],
            ["op", "gemm", "--hw", path, "-m", "64", "-n", "128", "-k", "256", "--json"],
            ["op", "attention", "--hw", path, "--heads", "8", "--q-len", "128", "--dtype", "fp16", "--json"],
        ])  # fmt: skip
    if kind == "experiment":
        # two new tokens keep a generation short, unless the mutation is about new_tokens
        return ["run", path, "--json"] + ([] if "new_tokens" in what else ["--set", "scenario.new_tokens=2"])
    return ["<sweep>", path]


@dataclass
class Report:
    cases: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    slowest: list[tuple[float, str]] = field(default_factory=list)

    def record(self, what: str, argv: list[str], o: Outcome, bad: list[str]) -> None:
        self.cases += 1
        self.slowest = sorted([*self.slowest, (o.seconds, f"{what}: {' '.join(argv)[-80:]}")])[-5:]
        key = "hang/exception" if o.exc else f"exit {o.rc}"
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        if bad:
            self.failures.append(f"[{what}] {' '.join(argv)}\n    " + "\n    ".join(bad)
                                 + (f"\n    stderr: {o.err.strip()[:300]}" if o.err.strip() else ""))  # fmt: skip


def _sources() -> list[tuple[str, Path, str]]:
    out = []
    for kind, files in (("hardware", HARDWARE), ("experiment", EXPERIMENTS), ("sweep", SWEEPS)):
        for p in files:
            # relative `base:` paths of sweeps point at the shipped experiments from the mutated copy too
            text = p.read_text().replace("../experiments/", f"{CONFIGS / 'experiments'}/")
            out.append((kind, p, text))
    return out


def _special_paths(tmp: Path) -> list[tuple[str, str]]:
    fifo = tmp / "fifo.yaml"
    with contextlib.suppress(OSError, AttributeError):
        os.mkfifo(fifo)
    big = tmp / "big.yaml"
    big.write_bytes(b"# " + b"x" * (5 * 2**20) + b"\n")
    link = tmp / "zero.yaml"
    with contextlib.suppress(OSError):
        link.symlink_to("/dev/zero")
    (tmp / "dir.yaml").mkdir(exist_ok=True)
    return [("fifo", str(fifo)), ("5 MiB file", str(big)), ("link to /dev/zero", str(link)),
            ("directory", str(tmp / "dir.yaml")), ("/dev/zero", "/dev/zero"), ("missing", str(tmp / "no.yaml"))]  # fmt: skip


FLAG_POOL: list[list[str]] = [
    [], ["--bogus"], ["run"], ["run", "--json"], ["op"], ["op", "gemm"], ["op", "gemm", "--hw"],
    ["op", "gemm", "--hw", "a100-sxm4-80gb"], ["op", "gemm", "--hw", "a100-sxm4-80gb", "-m", "-5", "-n", "1", "-k", "1"],
    ["op", "gemm", "--hw", "a100-sxm4-80gb", "-m", "0", "-n", "1", "-k", "1"],
    ["op", "gemm", "--hw", "a100-sxm4-80gb", "-m", "1e3", "-n", "1", "-k", "1"],
    ["op", "gemm", "--hw", "a100-sxm4-80gb", "-m", "nan", "-n", "1", "-k", "1"],
    ["op", "gemm", "--hw", "a100-sxm4-80gb", "-m", "4", "-n", "4", "-k", "4", "--dtype", "fp7"],
    ["op", "attention", "--hw", "h100-sxm5-80gb", "--heads", "3", "--kv-heads", "2", "--q-len", "8"],
    ["op", "attention", "--hw", "h100-sxm5-80gb", "--heads", "8", "--q-len", "-1"],
    ["op", "attention", "--hw", "h100-sxm5-80gb", "--heads", "8", "--q-len", "64", "--kv-len", "16", "--causal",
     "--json"],
    ["op", "conv2d", "--hw", "a100-sxm4-80gb"], ["op", "softmax"], ["hw"], ["hw", "show"], ["hw", "show", "a999"],
    ["hw", "params", "quantum"], ["hw", "params"], ["hw", "list", "--json"], ["hw", "show", "t4", "--set"],
    ["models", "--json"], ["models", "--bogus"], ["validate"], ["sweep"], ["sweep", "nonexistent.yaml"],
    ["--version"],
]  # fmt: skip
SET_POOL = ["=", "a", "=3", "memory.bandwidth=.nan", "memory.bandwidth=.inf", "memory.bandwidth=1e999 TB/s",
            "memory.bandwidth=5300", "clock=2.1", "clock=-1 GHz", "sms=10000000000000000000000000000000",
            "sms=0", "sms=.nan", "memory=3", "memory.bandwidth.x=1", "x.y.z=[[[[", "sms=!!python/object:os.system",
            "sms=" + "[" * 2000, "memory.capacity=-80 GiB", "efficiency.memory=1e-400", "pcie.lanes=-16",
            "sms=*a", "sms=&a [*a]"]  # fmt: skip
SET_MUST_REFUSE = {"memory.bandwidth=.nan", "memory.bandwidth=.inf", "memory.bandwidth=1e999 TB/s",
                   "memory.bandwidth=5300", "clock=2.1", "clock=-1 GHz", "sms=0", "sms=.nan",
                   "memory.capacity=-80 GiB", "efficiency.memory=1e-400", "sms=10000000000000000000000000000000"}  # fmt: skip


def flag_case(rng: random.Random) -> tuple[list[str], bool]:
    if rng.random() < 0.5:
        return list(rng.choice(FLAG_POOL)), False
    s = rng.choice(SET_POOL)
    base = rng.choice([["hw", "show", "a100-sxm4-80gb", "--json"],
                       ["op", "gemm", "--hw", "h100-sxm5-80gb", "-m", "64", "-n", "64", "-k", "64", "--json"]])  # fmt: skip
    return [*base, "--set", s], s in SET_MUST_REFUSE


@pytest.fixture
def alarm() -> Any:
    """SIGALRM interrupts a case that runs past CASE_LIMIT_S (raising Hang inside it)."""
    old = signal.signal(signal.SIGALRM, _alarm)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def test_fuzz_shipped_yaml_and_flags(tmp_path: Path, alarm: Any) -> None:
    rng = random.Random(SEED)
    report = Report()
    start = time.perf_counter()
    sources = _sources()
    for i in range(YAML_CASES):
        kind, src, text = rng.choice(sources)
        case = mutate(rng, text)
        path = tmp_path / f"c{i}_{src.name}"
        path.write_bytes(case.text)
        argv = argv_for(rng, kind, str(path), case.what)
        o = load_sweep_like_cli(str(path)) if kind == "sweep" else invoke(argv)
        what = f"case {i}: {src.relative_to(CONFIGS)}: {case.what}"
        # a sweep's mutated axis value need not be in the first point, the only one built here
        refuse = case.must_refuse and not (kind == "sweep" and case.what.startswith(("value ", "raw ")))
        report.record(what, argv, o, problems(o, argv, refuse))
    for label, path in _special_paths(tmp_path):
        for argv in (["run", path, "--json"], ["hw", "show", path], ["sweep", path]):
            o = invoke(argv)
            report.record(f"special: {label}", argv, o, problems(o, argv, True))
    for i in range(FLAG_CASES):
        argv, refuse = flag_case(rng)
        o = invoke(argv)
        report.record(f"flags {i}", argv, o, problems(o, argv, refuse))
    elapsed = time.perf_counter() - start
    summary = (f"seed {SEED}: {report.cases} cases in {elapsed:.1f} s, outcomes "
               f"{dict(sorted(report.outcomes.items()))}, {len(report.failures)} failures")  # fmt: skip
    print(summary)
    print("slowest:", *(f"{t:.2f} s {w}" for t, w in reversed(report.slowest)), sep="\n  ")
    assert report.cases >= 1000
    if report.failures:
        shown = "\n".join(report.failures[:25])
        pytest.fail(f"{summary} (rerun with SIMCORE_FUZZ_SEED={SEED}):\n{shown}", pytrace=False)
    assert elapsed < TOTAL_LIMIT_S, summary


def test_fuzz_bomb_and_deep_nesting_are_refused_fast(tmp_path: Path) -> None:
    from simcore.config import parse_yaml
    from simcore.errors import ConfigError

    for text, needle in [(BOMB, "more than"), ("a: " + "[" * 100 + "]" * 100, "nested deeper"),
                         ("a: " + "[" * 50000 + "]" * 50000, "nested deeper"), ("a: &r [*r]", "nested deeper")]:  # fmt: skip
        t0 = time.perf_counter()
        with pytest.raises(ConfigError, match=needle):
            parse_yaml(text, "x.yaml")
        assert time.perf_counter() - t0 < 2.0


def test_a_non_finite_result_is_an_internal_error_never_output(capsys: pytest.CaptureFixture) -> None:
    from simcore.commands import emit
    from simcore.errors import InternalError

    for as_json in (True, False):
        with pytest.raises(
            InternalError, match=r"internal error: energy\.gpu is nan, not a finite number"
        ) as e:
            emit({"latency_s": 1.0, "energy": {"gpu": NAN}}, as_json)
        assert e.value.exit_code == 70
    assert capsys.readouterr().out == ""
    emit({"latency_s": 1.0, "n": 2, "ok": True}, True)
    assert json.loads(capsys.readouterr().out, parse_constant=_no_constant) == {
        "latency_s": 1.0,
        "n": 2,
        "ok": True,
    }
