"""Design-space sweeps: the sweep file contract, sampling, safe expressions, the crash-safe store,
the local / Dask / Ray backends, Pareto fronts and sensitivity."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

import simcore
from simcore.errors import ConfigError
from simcore.sweep import Store, load_sweep, pareto_front, pareto_mask, run_sweep, sensitivity
from simcore.sweep import store as store_mod
from simcore.sweep.expr import Expr, ExprError, MissingName
from simcore.sweep.store import point_key

ROOT = Path(__file__).resolve().parent.parent
BASE = {"name": "t", "hardware": "a100-sxm4-80gb", "model": "llama-2-7b",
        "scenario": {"kind": "decode", "batch": 1, "context_len": 512}}  # fmt: skip


def spec_dict(**over) -> dict:
    d = {"name": "t", "base": BASE, "axes": {"scenario.batch": [1, 4]}}
    d.update(over)
    return d


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------------ expressions
def test_expressions_read_dotted_names_and_do_arithmetic():
    e = Expr("scenario.batch * scenario.prompt_len <= 65536 and max(a, 2) ** 2 == 9")
    assert e.names == {"scenario.batch", "scenario.prompt_len", "a"}
    assert e({"scenario.batch": 64, "scenario.prompt_len": 1024, "a": 3}) is True
    assert e({"scenario.batch": 65, "scenario.prompt_len": 1024, "a": 3}) is False
    assert Expr("x if y > 1 else -x")({"x": 2, "y": 0}) == -2
    assert Expr("hardware == 'h100-sxm5-80gb'")({"hardware": "h100-sxm5-80gb"})


@pytest.mark.parametrize("text", ["__import__('os').system('true')", "().__class__", "x[0]", "lambda: 1",
                                  "open('f')", "[i for i in x]", "f'{x}'", "x.y()", "2 ** 9 ** 9"])  # fmt: skip
def test_expressions_reject_anything_but_arithmetic(text):
    try:
        e = Expr(text)
    except ExprError:
        return
    with pytest.raises(ValueError):  # only the exponent guard is a run-time refusal
        e({"x": 1})


def test_a_missing_name_is_reported_by_name():
    with pytest.raises(MissingName) as info:
        Expr("prefill_time_s < 1")({})
    assert info.value.name == "prefill_time_s"


# -------------------------------------------------------------------------------------- sampling
def test_grid_is_the_cartesian_product_and_ranges_take_steps():
    s = load_sweep(spec_dict(axes={"scenario.batch": [1, 2, 4],
                                   "hardware.memory.bandwidth": {"low": "1 TB/s", "high": "4 TB/s", "steps": 4, "log": True}}))  # fmt: skip
    pts = s.points()
    assert len(pts) == 12
    assert sorted({p["hardware.memory.bandwidth"] for p in pts}) == [
        "1 TB/s",
        "1.5874 TB/s",
        "2.51984 TB/s",
        "4 TB/s",
    ]


def test_zip_pairs_axes_and_needs_equal_lengths(tmp_path):
    s = load_sweep(
        spec_dict(sampling="zip", axes={"scenario.batch": [1, 2], "scenario.context_len": [128, 256]})
    )
    assert s.points() == [{"scenario.batch": 1, "scenario.context_len": 128},
                          {"scenario.batch": 2, "scenario.context_len": 256}]  # fmt: skip
    with pytest.raises(ConfigError, match="equal length"):
        load_sweep(spec_dict(sampling="zip", axes={"scenario.batch": [1, 2], "scenario.context_len": [128]}))


@pytest.mark.parametrize("method", ["random", "lhs", "sobol"])
def test_random_designs_are_seeded_and_stay_in_range(method):
    axes = {"scenario.batch": {"low": 1, "high": 64, "integer": True, "log": True},
            "hardware.memory.bandwidth": {"low": "1.5 TB/s", "high": "3 TB/s"},
            "model": ["llama-2-7b", "llama-3-8b"]}  # fmt: skip

    def mk(seed: int):
        return load_sweep(spec_dict(axes=axes, sampling={"method": method, "samples": 16, "seed": seed}))

    a, b, c = mk(3).points(), mk(3).points(), mk(4).points()
    assert a == b and a != c and len(a) == 16
    for p in a:
        assert isinstance(p["scenario.batch"], int) and 1 <= p["scenario.batch"] <= 64
        num, unit = p["hardware.memory.bandwidth"].split()
        assert unit == "TB/s" and 1.5 <= float(num) <= 3.0
    assert {p["model"] for p in a} == {"llama-2-7b", "llama-3-8b"}


def test_lhs_puts_one_sample_in_every_stratum_of_each_axis():
    axes = {"scenario.context_len": {"low": 0, "high": 10}, "scenario.prompt_len": {"low": 0, "high": 10}}
    s = load_sweep(spec_dict(axes=axes, sampling={"method": "lhs", "samples": 10, "seed": 0}), check=False)
    for axis in axes:
        assert sorted(int(p[axis]) for p in s.points()) == list(range(10))


# ------------------------------------------------------------------------------ sweep file errors
BROKEN = [
    ("axes:\n  scenario.batch: [1]\n", "s.yaml:1: missing required key 'base'"),
    ("base: {hardware: a100-sxm4-80gb, model: llama-2-7b, scenario: {kind: decode}}\naxis: {}\n",
     "s.yaml:2: axis: unknown key 'axis'"),
    ("base: {hardware: a100-sxm4-80gb, model: llama-2-7b, scenario: {kind: decode}}\naxes:\n  hardware.memroy.bandwidth: [1 TB/s]\n",
     "s.yaml:3: axes.hardware.memroy.bandwidth: unknown key 'memroy'"),
    ("base: {hardware: a100-sxm4-80gb, model: llama-2-7b, scenario: {kind: decode}}\naxes:\n  hardware: [a100-sxm4-80gb, h1OO]\n",
     "s.yaml:3: axes.hardware: unknown hardware preset 'h1OO'"),
    ("base: {hardware: a100-sxm4-80gb, model: llama-2-7b, scenario: {kind: decode}}\naxes:\n  scenario.batch: [1]\nconstraints:\n  - __import__('os').getcwd()\n",
     "s.yaml:5: constraints.0: only plain calls"),
    ("base: {hardware: a100-sxm4-80gb, model: llama-2-7b, scenario: {kind: decode}}\naxes:\n  scenario.batch: [1]\nconstraints:\n  - scenario.bacth < 4\n",
     "s.yaml:5: constraints.0: unknown name 'scenario.bacth'"),
    ("base: {hardware: a100-sxm4-80gb, model: llama-2-7b, scenario: {kind: decode}}\naxes:\n  scenario.batch: {low: 1, high: 8}\n",
     "s.yaml:3: axes.scenario.batch: grid sampling needs 'steps'"),
    ("base: {hardware: a100-sxm4-80gb, model: llama-2-7b, scenario: {kind: decode}}\naxes:\n  scenario.batch: [1]\nsampling: {method: lhs}\n",
     "s.yaml:4: sampling: lhs sampling needs 'samples'"),
    ("base: {hardware: a100-sxm4-80gb, model: llama-2-7b, scenario: {kind: decode}}\naxes:\n  scenario.batch: [1]\nsampling: lhs\nsamples: -3\n",
     "s.yaml:5: samples: lhs sampling needs 'samples', a positive integer"),
    ("base: {hardware: a100-sxm4-80gb, model: llama-2-7b, scenario: {kind: decode}}\naxes:\n  scenario.batch: [1]\nobjectives:\n  latency_s: fastest\n",
     "s.yaml:5: objectives.latency_s: goal must be min or max"),
    ("base: {hardware: a100-sxm4-80gb, model: llama-2-7b, scenario: {kind: decode, bacth: 3}}\naxes:\n  scenario.batch: [1]\n",
     "s.yaml:1: scenario.bacth: unknown key 'bacth'"),
    ("base: nothere.yaml\n", "s.yaml:1: base: no such experiment file"),
    ("base: {hardware: a100-sxm4-80gb, model: llama-2-7b, scenario: {kind: decode}}\naxes:\n  scenario.batch: [1, 2\n",
     "s.yaml:4: malformed YAML"),
    ("base: {hardware: a100-sxm4-80gb, model: llama-2-7b, scenario: {kind: decode}}\naxes:\n  hardware.memory.bandwidth: {low: 1 TB/s, high: 2 GHz}\n",
     "s.yaml:3: axes.hardware.memory.bandwidth.high: unit 'GHz' does not match"),
    ("base: {hardware: a100-sxm4-80gb, model: llama-2-7b, scenario: {kind: decode}}\naxes:\n  model: [llama-2-7b, llama-9]\n",
     "s.yaml:3: axes.model: unknown model 'llama-9'"),
    ("base: {hardware: a100-sxm4-80gb, model: llama-2-7b, scenario: {kind: decode}}\naxes:\n  foo.bar: [1]\n",
     "s.yaml:3: axes.foo.bar: an axis sets an experiment key"),
    ("base: {hardware: a100-sxm4-80gb, model: llama-2-7b, scenario: {kind: decode}}\naxes:\n  hardware.sms: [66]\nset:\n  hardware.tensor_peak.bf16: 1e12 * latency_s\n",
     "s.yaml:5: set.hardware.tensor_peak.bf16: unknown name 'latency_s'"),
]  # fmt: skip


@pytest.mark.parametrize("text,expected", BROKEN, ids=[e.split(": ", 2)[1] for _, e in BROKEN])
def test_every_sweep_file_error_is_one_line_with_file_line_and_key(tmp_path, monkeypatch, text, expected):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_sweep("s.yaml")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(expected), msg


def test_cli_reports_a_broken_sweep_in_one_line(tmp_path):
    p = write(tmp_path, "base: {hardware: a100-sxm4-80gb, model: llama-2-7b, scenario: {kind: decode}}\n"
                        "axes:\n  scenario.batch: [1]\nsampling: halton\n")  # fmt: skip
    r = subprocess.run(
        [sys.executable, "-m", "simcore", "sweep", str(p)], capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "s.yaml:4: sampling: unknown sampling 'halton'" in r.stderr


# ---------------------------------------------------------------------------------- running sweeps
def test_a_sweep_records_constraints_oom_and_objectives(tmp_path):
    spec = load_sweep(spec_dict(
        axes={"scenario.batch": [1, 8, 4096], "hardware.memory.capacity": ["80 GiB", "8 GiB"]},
        constraints=["scenario.batch * scenario.context_len <= 4096 * 512", "time_per_output_token_s < 1"],
        derived={"kv_tokens": "scenario.batch * scenario.context_len"},
        objectives={"tokens_per_s": "max", "cost": {"expr": "hardware.memory.capacity / 2**30 + latency_s", "goal": "min"}},
    ))  # fmt: skip
    df = run_sweep(spec, workers=1, out=tmp_path / "st")
    assert list(df.columns[:5]) == [
        "scenario.batch",
        "hardware.memory.capacity",
        "tokens_per_s",
        "cost",
        "pareto",
    ]
    assert len(df) == 6 and df.attrs["stats"]["computed"] == 6
    ok = df[df.status == "ok"]
    assert set(ok["scenario.batch"]) == {1, 8} and set(ok["hardware.memory.capacity"]) == {80 * 2**30}
    weights = df[(df["hardware.memory.capacity"] == 8 * 2**30)]
    assert (weights.status == "infeasible").all() and weights.reason.str.startswith("out of memory").all()
    kv = df[(df["scenario.batch"] == 4096) & (df["hardware.memory.capacity"] == 80 * 2**30)].iloc[0]
    assert kv.status == "infeasible" and "kv_cache" in kv.reason
    np.testing.assert_allclose(ok.cost, 80 + ok.latency_s)
    assert (ok.kv_tokens == ok["scenario.batch"] * 512).all()
    assert ok.pareto.all() and not df[df.status != "ok"].pareto.any()
    # the second run finds everything in the store and gives the same numbers
    again = run_sweep(spec, workers=1, out=tmp_path / "st")
    assert again.attrs["stats"]["cached"] == 6 and again.attrs["stats"]["computed"] == 0
    assert again.cached.all()
    np.testing.assert_array_equal(again.tokens_per_s.fillna(-1), df.tokens_per_s.fillna(-1))
    assert (tmp_path / "st" / "results.csv").exists()


def test_constraints_on_point_values_skip_before_running(tmp_path):
    df = run_sweep(load_sweep(spec_dict(axes={"scenario.batch": [1, 2, 3]}, constraints=["scenario.batch != 2"])),
                   out=tmp_path)  # fmt: skip
    row = df[df["scenario.batch"] == 2].iloc[0]
    assert (
        row.status == "infeasible"
        and row.reason == "violates `scenario.batch != 2`"
        and not isinstance(row.key, str)
    )
    assert df.attrs["stats"]["skipped"] == 1 and df.attrs["stats"]["computed"] == 2


def test_set_computes_keys_from_the_axes(tmp_path):
    spec = load_sweep(spec_dict(axes={"hardware.sms": [54, 108], "scenario.batch": [256]},
                                set={"hardware.tensor_peak.bf16": "312e12 * hardware.sms / 108"}))  # fmt: skip
    assert (
        spec.config({"hardware.sms": 54, "scenario.batch": 256})["hardware"]["tensor_peak"]["bf16"] == 156e12
    )
    df = run_sweep(spec, out=tmp_path)
    slow, fast = df.sort_values("hardware.sms").latency_s
    assert slow > fast  # half the SMs, half the tensor peak: a batch-256 decode step is slower


def test_simcore_sweep_is_a_function_and_the_module(tmp_path):
    import importlib

    mod = importlib.import_module("simcore.sweep")
    df = simcore.sweep(spec_dict(), out=tmp_path)
    assert list(df["scenario.batch"]) == [1, 4] and (df.status == "ok").all()
    assert mod.pareto_front is pareto_front
    assert simcore.__version__


def test_the_key_covers_config_version_code_and_input_files(tmp_path, monkeypatch):
    preset = tmp_path / "gpu.yaml"
    preset.write_text((ROOT / "configs/hardware/gpus/a100-sxm4-80gb.yaml").read_text())
    cfg = {**BASE, "hardware": {"base": str(preset)}}
    k1, inputs = point_key(cfg, "<x>")
    assert any(p.endswith("gpu.yaml") for p in inputs) and any("arch-ampere" in p for p in inputs)
    assert any("llama-2-7b.json" in p for p in inputs)
    assert point_key(cfg, "<x>")[0] == k1
    assert point_key({**cfg, "scenario": {**BASE["scenario"], "batch": 2}}, "<x>")[0] != k1
    preset.write_text(preset.read_text() + "\n# recalibrated\n")
    k2 = point_key(cfg, "<x>")[0]
    assert k2 != k1
    monkeypatch.setattr(simcore, "__version__", "9.9.9")
    k3 = point_key(cfg, "<x>")[0]
    assert k3 != k2
    monkeypatch.setattr(store_mod, "code_fingerprint", lambda: "edited engine")
    assert point_key(cfg, "<x>")[0] != k3


def test_an_edited_preset_invalidates_cached_points(tmp_path):
    preset = tmp_path / "gpu.yaml"
    preset.write_text((ROOT / "configs/hardware/gpus/a100-sxm4-80gb.yaml").read_text())
    spec = spec_dict(base={**BASE, "hardware": str(preset)})
    run_sweep(load_sweep(spec), out=tmp_path / "st")
    assert run_sweep(load_sweep(spec), out=tmp_path / "st").attrs["stats"]["cached"] == 2
    preset.write_text(preset.read_text().replace("bandwidth: 2.039 TB/s", "bandwidth: 3 TB/s"))
    df = run_sweep(load_sweep(spec), out=tmp_path / "st")
    assert df.attrs["stats"]["computed"] == 2


# ------------------------------------------------------------------------------------------ store
def test_store_writes_atomically_and_tolerates_debris(tmp_path):
    st = Store(tmp_path)
    st.put({"key": "ab" + "0" * 62, "status": "ok", "summary": {"x": 1.0}})
    assert st.get("ab" + "0" * 62)["summary"] == {"x": 1.0}
    torn = st.path("cd" + "0" * 62)
    torn.parent.mkdir(parents=True)
    torn.write_text('{"key": "cd')  # cannot come from put(); an unreadable record is recomputed
    assert st.get("cd" + "0" * 62) is None
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    tmp = torn.parent / f".{'cd' + '0' * 62}.{int(dead.stdout)}.tmp"
    tmp.write_text("{")
    live = torn.parent / f".x.{os.getpid()}.tmp"
    live.write_text("{")
    assert st.clean() == 1 and not tmp.exists() and live.exists()
    assert st.keys() == {"ab" + "0" * 62, "cd" + "0" * 62}


def _running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and PR_SET_PDEATHSIG")
def test_a_sweep_killed_with_sigkill_resumes_without_losing_or_repeating_points(tmp_path):
    sweep_file = write(tmp_path, yaml.safe_dump({
        "name": "killme", "base": BASE,
        "axes": {"scenario.batch": list(range(1, 41)), "scenario.context_len": [128, 256, 384, 512, 640, 768]},
    }))  # fmt: skip
    out = tmp_path / "store"
    cmd = [
        sys.executable,
        "-m",
        "simcore",
        "sweep",
        str(sweep_file),
        "--workers",
        "2",
        "--out",
        str(out),
        "--json",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    store = Store(out)
    workers: list[int] = []
    while len(store.keys()) < 10:  # wait until the pool is writing results, then kill mid-run
        assert proc.poll() is None, proc.stderr.read().decode()
        workers = _children(proc.pid) or workers
        time.sleep(0.005)
    workers = _children(proc.pid) or workers
    proc.send_signal(signal.SIGKILL)
    assert workers, "the sweep should be running a process pool"
    proc.wait()
    for w in workers:  # the pool dies with the sweep (PR_SET_PDEATHSIG); wait until it has
        while _running(w):
            time.sleep(0.005)
    before = {k: (store.path(k).stat().st_mtime_ns, store.get(k)["run_id"]) for k in store.keys()}
    assert 10 <= len(before) < 240, "the sweep should have been killed mid-run"
    assert len({run for _, run in before.values()}) == 1

    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert (
        stats["points"] == 240 and stats["cached"] == len(before) and stats["computed"] == 240 - len(before)
    )
    after = {k: (store.path(k).stat().st_mtime_ns, store.get(k)["run_id"]) for k in store.keys()}
    assert len(after) == 240  # every point exactly once
    assert all(after[k] == v for k, v in before.items())  # finished points untouched, not recomputed
    new_runs = {run for k, (_, run) in after.items() if k not in before}
    assert len(new_runs) == 1 and new_runs.isdisjoint(run for _, run in before.values())
    assert not list(out.glob("points/*/.*.tmp"))


# --------------------------------------------------------------------------------------- backends
def test_the_local_pool_gives_the_same_results_as_in_process(tmp_path):
    spec = load_sweep(spec_dict(axes={"scenario.batch": list(range(1, 33))}))
    inline = run_sweep(spec, workers=1, out=tmp_path / "a")
    pooled = run_sweep(spec, workers=2, out=tmp_path / "b")
    assert pooled.attrs["stats"]["workers"] == 2
    np.testing.assert_array_equal(inline.latency_s, pooled.latency_s)
    assert len(Store(tmp_path / "b").keys()) == 32


def test_the_dask_backend_runs_on_a_local_cluster(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    spec = load_sweep(spec_dict(axes={"scenario.batch": [1, 2, 3, 4]}))
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        df = run_sweep(spec, backend="dask", scheduler=cluster.scheduler_address, out=tmp_path / "d")
    assert df.attrs["stats"]["backend"] == "dask" and (df.status == "ok").all()
    local = run_sweep(spec, out=tmp_path / "l")
    np.testing.assert_array_equal(df.latency_s, local.latency_s)
    assert len(Store(tmp_path / "d").keys()) == 4  # written by the sweep process, not the workers


def test_the_ray_backend_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ConfigError) as info:
        run_sweep(load_sweep(spec_dict()), backend="ray", out=tmp_path)
    assert (
        str(info.value)
        == "--backend ray: the ray backend needs Ray, which is not installed: pip install ray (from a clone: pip "
        "install -e '.[ray]')"
    )


def test_cli_json_and_progress_line(tmp_path):
    p = write(tmp_path, yaml.safe_dump(spec_dict(objectives={"latency_s": "min", "tokens_per_s": "max"})))
    cmd = [sys.executable, "-m", "simcore", "sweep", str(p), "--out", str(tmp_path / "o")]
    r = subprocess.run([*cmd, "--json"], capture_output=True, text=True)
    d = json.loads(r.stdout)
    assert d["points"] == 2 and d["pareto_size"] == len(d["pareto"]) == 2 and r.stderr == ""
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0
    assert r.stderr.startswith("sweep t: 2 points, 0 computed, 2 cached") and r.stderr.count("\n") == 1
    assert "Pareto front: 2 of 2 feasible points (latency_s min, tokens_per_s max)" in r.stdout
    assert "scenario.batch" in r.stdout and "latency_s (min)" in r.stdout


# --------------------------------------------------------------------------------------- analysis
def test_pareto_mask_matches_brute_force():
    rng = np.random.default_rng(0)
    costs = np.round(rng.random((300, 3)) * 10)  # ties on purpose
    brute = [not any((o <= c).all() and (o < c).any() for o in costs) for c in costs]
    np.testing.assert_array_equal(pareto_mask(costs), brute)


def test_pareto_front_honours_min_and_max():
    import pandas as pd

    df = pd.DataFrame({"t": [1.0, 2.0, 3.0, 2.0, math.nan], "q": [1.0, 5.0, 4.0, 1.0, 9.0],
                       "status": ["ok", "ok", "ok", "ok", "ok"]})  # fmt: skip
    assert list(pareto_front(df, {"t": "min", "q": "max"})) == [True, True, False, False, False]
    assert list(pareto_front(df, {"t": "max", "q": "max"})) == [False, True, True, False, False]


def test_sensitivity_varies_one_axis_at_a_time(tmp_path):
    spec = load_sweep(spec_dict(axes={"scenario.batch": [1, 8, 64], "hardware.memory.bandwidth":
                                      {"low": "1 TB/s", "high": "4 TB/s", "log": True}},
                                sampling={"method": "lhs", "samples": 8}, objectives={"latency_s": "min"}))  # fmt: skip
    df = sensitivity(spec, steps=3, out=tmp_path)
    assert list(df.axis) == ["center"] + ["scenario.batch"] * 3 + ["hardware.memory.bandwidth"] * 3
    center = df.iloc[0]
    assert center["scenario.batch"] == 8 and center["hardware.memory.bandwidth"] == 2e12
    bw = df[df.axis == "hardware.memory.bandwidth"]
    assert (bw["scenario.batch"] == 8).all() and list(bw.value) == [1e12, 2e12, 4e12]
    assert bw.latency_s_rel.iloc[0] > 0 > bw.latency_s_rel.iloc[2]  # less bandwidth, slower decode
    assert df.attrs["stats"]["unique"] == 5  # the center is computed once


def test_progress_draws_a_bar_on_a_terminal_and_only_a_final_line_otherwise():
    import io

    from simcore.sweep.runner import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Terminal(), io.StringIO()
    for stream in (tty, pipe):
        bar = Progress(4, "sweep x", "auto", stream)
        bar.update(2)
        bar.update(2, infeasible=1)
        bar.close("sweep x: done")
    assert f"\rsweep x [{'#' * 28}] 4/4 100%" in tty.getvalue() and ", 1 infeasible" in tty.getvalue()
    assert tty.getvalue().endswith("sweep x: done\n")
    assert pipe.getvalue() == "sweep x: done\n"


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_sweep_files_load(path):
    spec = load_sweep(path)
    assert spec.points() and spec.objectives


# ------------------------------------------------------------------------------- failures and exit codes
def _cli(capsys, *args: str) -> tuple[int, str, str]:
    from simcore.cli import main

    rc = main(["sweep", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def _failing_batch(monkeypatch, bad: set[int]) -> None:
    """Points with scenario.batch in `bad` hit a bug (a plain exception) while they run."""
    import simcore.experiment
    from simcore.sweep import runner

    real = runner.run_point

    def boom(*args, **kwargs):
        raise RuntimeError("a bug on this point")

    def run_point(task, key, config, inputs):
        with pytest.MonkeyPatch.context() as m:
            if config["scenario"]["batch"] in bad:
                m.setattr(simcore.experiment, "load_experiment", boom)
            return real(task, key, config, inputs)

    monkeypatch.setattr(runner, "run_point", run_point)


def test_points_that_fail_make_the_sweep_exit_1_with_one_line_and_python_gets_the_frame(
    tmp_path, monkeypatch, capsys
):
    p = write(tmp_path, yaml.safe_dump(spec_dict(axes={"scenario.batch": [1, 2, 3, 4]})))
    _failing_batch(monkeypatch, {2, 3})
    rc, out, err = _cli(capsys, p, "--workers", "1", "--out", tmp_path / "st")
    assert rc == 1 and "first error: " in out
    lines = err.splitlines()
    assert lines[-1] == (f"simcore: sweep t: 2 of 4 points failed with an error; reasons in the 'reason' column "
                         f"of {tmp_path / 'st'}/results.csv")  # fmt: skip
    assert "Traceback" not in err
    df = simcore.sweep(spec_dict(axes={"scenario.batch": [1, 2, 3, 4]}), out=tmp_path / "st", workers=1)
    assert list(df.status) == ["ok", "error", "error", "ok"] and df.reason[1]  # no exception from Python
    assert df.attrs["stats"]["computed"] == 2 and df.attrs["stats"]["cached"] == 2  # errors are retried

    _failing_batch(monkeypatch, {1, 2, 3, 4})
    rc, _, err = _cli(capsys, p, "--workers", "1", "--out", tmp_path / "st2", "--json")
    assert rc == 1 and err.count("\n") == 1
    assert "4 of 4 points failed with an error, and no point is feasible" in err


def test_a_sweep_without_a_feasible_point_exits_1_but_infeasible_points_alone_do_not(tmp_path, capsys):
    axes = {"scenario.batch": [1, 4], "hardware.memory.capacity": ["80 GiB", "8 GiB"]}
    p = write(tmp_path, yaml.safe_dump(spec_dict(axes=axes, constraints=["scenario.batch < 4"])))
    rc, out, err = _cli(capsys, p, "--workers", "1", "--out", tmp_path / "a")
    assert rc == 0 and err.count("\n") == 1  # one OOM point and two skipped ones are results, not failures
    axes["hardware.memory.capacity"] = ["8 GiB"]
    p = write(tmp_path, yaml.safe_dump(spec_dict(axes=axes)))
    rc, out, err = _cli(capsys, p, "--workers", "1", "--out", tmp_path / "b")
    assert rc == 1 and err.splitlines()[-1].startswith(
        "simcore: sweep t: no feasible point: all 2 points are infeasible; reasons in the 'reason' column"
    )


# ------------------------------------------------------------------------------------ damaged store
def _stored(out: Path) -> dict[int, Path]:
    """The record file of each batch in a store."""
    return {json.loads(f.read_text())["config"]["scenario"]["batch"]: f for f in out.glob("points/*/*.json")}


def test_damaged_store_entries_are_recomputed_with_a_warning_never_served(tmp_path):
    p = write(tmp_path, yaml.safe_dump(spec_dict(axes={"scenario.batch": [1, 2, 3, 4, 5, 6]})))
    out = tmp_path / "st"
    cmd = [sys.executable, "-m", "simcore", "sweep", str(p), "--workers", "1", "--out", str(out), "--json"]
    first = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    files = _stored(out)
    good = {b: json.loads(f.read_text()) for b, f in files.items()}
    assert all(r["checksum"] == store_mod.checksum(r) for r in good.values())
    # records sit in directories named by their key's first two hex digits: the directory replaced by a
    # file below must hold one record only (else two points go at once, with one warning)
    per_dir = Counter(f.parent for f in files.values())
    lone = next(b for b in sorted(files) if per_dir[files[b].parent] == 1)
    b1, b2, b3, b4, b5 = (b for b in sorted(files) if b != lone)
    files[b1].write_text(files[b1].read_text()[:100])  # truncated
    files[b2].write_text(files[b3].read_text())  # another point's record
    files[b3].unlink()
    files[b3].mkdir()  # a directory where the record should be
    (files[b3] / "x").write_text("")
    tampered = json.loads(files[b4].read_text())
    tampered["summary"]["tokens_per_s"] *= 10  # a tampered value with the old checksum
    files[b4].write_text(json.dumps(tampered))
    del tampered["checksum"]  # and one without a checksum at all
    files[b5].write_text(json.dumps({**tampered, "key": good[b5]["key"]}))
    sub = files[lone].parent
    shutil.rmtree(sub)
    sub.write_text("")  # a file where a record directory should be

    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    warnings = r.stderr.splitlines()
    assert len(warnings) == 6 and all(w.startswith("simcore: warning: store entry ") for w in warnings)
    assert "is not valid JSON" in r.stderr and "holds key" in r.stderr and "was a directory" in r.stderr
    assert "fails its checksum" in r.stderr and "has no checksum" in r.stderr and "was a file" in r.stderr
    stats = json.loads(r.stdout)
    assert stats["computed"] == 6 and stats["cached"] == 0
    assert stats["pareto"] == first["pareto"]
    again = _stored(out)
    for b, rec in good.items():
        now = json.loads(again[b].read_text())
        assert now["summary"] == rec["summary"]  # the tampered value was recomputed, not served
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "" and json.loads(r.stdout)["cached"] == 6


def test_an_unreadable_record_is_recomputed_and_an_unwritable_one_only_warned_about(tmp_path, monkeypatch):
    spec = spec_dict(axes={"scenario.batch": [1, 2]})
    out = tmp_path / "st"
    run_sweep(load_sweep(spec), workers=1, out=out)
    files = _stored(out)
    files[1].chmod(0)
    real = store_mod._read

    def read(path):  # as root, chmod does not stop reading: refuse as the kernel would for anyone else
        if Path(path) == files[1]:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(store_mod, "_read", read)
    with pytest.warns(store_mod.StoreWarning, match="cannot be read"):
        df = run_sweep(load_sweep(spec), workers=1, out=out)
    assert df.attrs["stats"]["computed"] == 1 and (df.status == "ok").all()
    monkeypatch.setattr(store_mod, "_read", real)

    def put(self, record):
        raise PermissionError(13, "Permission denied", str(self.path(record["key"])))

    monkeypatch.setattr(store_mod.Store, "put", put)
    with pytest.warns(store_mod.StoreWarning, match=r"could not store point .* \(Permission denied\)"):
        df = run_sweep(load_sweep(spec), workers=1, out=out, cache=False)
    assert (df.status == "ok").all()


@pytest.mark.parametrize("where", ["points", "root"])
def test_a_store_that_is_a_file_is_a_one_line_error(tmp_path, where):
    p = write(tmp_path, yaml.safe_dump(spec_dict()))
    out = tmp_path / "st"
    if where == "points":
        out.mkdir()
        (out / "points").write_text("not a directory")
    else:
        out.write_text("not a directory")
    r = subprocess.run([sys.executable, "-m", "simcore", "sweep", str(p), "--out", str(out)],
                       capture_output=True, text=True)  # fmt: skip
    bad = out / "points" if where == "points" else out
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1
    assert r.stderr.startswith(
        f"simcore: {bad}: the results store needs a directory here, and this is a file"
    )


# ------------------------------------------------------------------------------- concurrent sweeps
def test_a_point_claimed_by_another_sweep_is_waited_for_not_computed(tmp_path):
    import threading

    spec = load_sweep(spec_dict(axes={"scenario.batch": [1, 2, 3]}))
    store = Store(tmp_path)
    key = point_key(spec.config({"scenario.batch": 2}), spec.base.file, spec.base_file)[0]
    stale = store.claim_path(point_key(spec.config({"scenario.batch": 3}), spec.base.file, spec.base_file)[0])
    stale.parent.mkdir(parents=True)
    stale.write_text("pid 999999999 started 1\n")  # left by a runner that died: taken over
    claim = store.claim(key)
    assert claim is not None and store.claim(key) is None  # held: nobody else gets it

    def other_sweep_finishes() -> None:
        time.sleep(0.5)
        store.put(
            {"key": key, "status": "ok", "reason": None, "run_id": "other", "summary": {"latency_s": 42.0}}
        )
        claim.release()

    t = threading.Thread(target=other_sweep_finishes)
    t.start()
    df = run_sweep(spec, workers=1, out=tmp_path)
    t.join()
    assert list(df.latency_s)[1] == 42.0 and list(df.cached) == [False, True, False]
    assert df.attrs["stats"]["computed"] == 2 and df.attrs["stats"]["cached"] == 1
    assert not list(tmp_path.glob("points/*/.*.claim"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock claims")
def test_two_sweeps_on_one_store_share_the_work_and_compute_every_point_once(tmp_path):
    import collections

    sweep_file = write(tmp_path, yaml.safe_dump({
        "name": "twice", "base": BASE,
        "axes": {"scenario.batch": list(range(1, 41)), "scenario.context_len": [128, 256, 384]},
    }))  # fmt: skip
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "simcore", "sweep", str(sweep_file), "--out", str(out), "--json"]
    procs = [subprocess.Popen([*cmd, "--workers", w], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in ("2", "1")]  # fmt: skip
    results = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in results]
    stats = [json.loads(o) for o, _ in results]
    assert all(s["points"] == 120 and s["computed"] + s["cached"] == 120 for s in stats)
    assert stats[0]["computed"] + stats[1]["computed"] == 120  # every point computed exactly once
    runs = collections.Counter(json.loads(f.read_text())["run_id"] for f in out.glob("points/*/*.json"))
    assert sum(runs.values()) == 120 and sorted(runs.values()) == sorted(
        s["computed"] for s in stats if s["computed"]
    )
    assert stats[0]["pareto"] == stats[1]["pareto"]
    assert not list(out.glob("points/*/.*.claim")) and not list(out.glob("points/*/.*.tmp"))


# ------------------------------------------------------------------------------------------ Ctrl-C
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
@pytest.mark.parametrize("workers", ["2", "1"])
def test_ctrl_c_stops_cleanly_keeps_finished_points_and_resumes(tmp_path, workers):
    sweep_file = write(tmp_path, yaml.safe_dump({
        "name": "ctrlc", "base": BASE,
        "axes": {"scenario.batch": list(range(1, 41)), "scenario.context_len": [128, 256, 384, 512, 640, 768]},
    }))  # fmt: skip
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "simcore", "sweep", str(sweep_file), "--workers", workers, "--out", str(out),
           "--json"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    store = Store(out)
    kids: list[int] = []
    while len(store.keys()) < 10:
        assert proc.poll() is None, proc.stderr.read()
        kids = _children(proc.pid) or kids
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and stdout == "" and "Traceback" not in stderr
    import re

    m = re.fullmatch(r"simcore: interrupted: (\d+) of 240 points stored; re-run to resume\n", stderr)
    assert m, stderr
    stored = len(store.keys())
    assert int(m.group(1)) == stored and 10 <= stored < 240
    assert not any(_running(k) for k in kids)  # the pool went with it
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["cached"] == stored and stats["computed"] == 240 - stored
