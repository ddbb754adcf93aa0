"""Sweep files: a base experiment, axes over its dotted keys, a sampling plan, constraints, objectives.

Everything is checked when the file is loaded, before any point runs: unknown keys, malformed axes,
expressions outside the safe whitelist, names no point or result defines, and axis values the
simulator does not know (an unknown preset, model or hardware key). Each problem is one line naming
the file, the line and the key.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simcore import units
from simcore.config import (
    HARDWARE_BASE,
    Doc,
    expand_hardware_shorthand,
    load_yaml,
    parse_yaml,
    schema_defaults,
)
from simcore.errors import ConfigError
from simcore.sweep.expr import Expr, ExprError, MissingName
from simcore.units import to_number, unit_kind

SAMPLING_METHODS = ("grid", "zip", "random", "lhs", "sobol")
SWEEP_KEYS = ("name", "description", "base", "axes", "set", "sampling", "samples", "seed", "constraints",
              "derived", "objectives")  # fmt: skip
EXPERIMENT_KEYS = ("hardware", "model", "dtype", "parallelism", "scenario")
AXIS_KEYS = ("values", "low", "high", "log", "integer", "steps")
GOALS = ("min", "max")

#: Figures every Result.summary may carry (see simcore.experiment), usable in constraints and objectives.
METRICS = ("latency_s", "time_per_output_token_s", "tokens_per_s", "prefill_time_s", "prefill_tokens_per_s",
           "time_to_first_token_s", "decode_time_s", "output_tokens", "energy_j", "energy_per_token_j", "events", "ops", "params", "tp",
           "peak_memory_max_B", "experiment", "model", "dtype")  # fmt: skip
#: Summary entries that are per-device mappings, flattened to `prefix.device...`.
METRIC_PREFIXES = ("peak_memory_B.", "utilization.", "energy_by_component_j.")
Where = tuple[str, int | None]


# ------------------------------------------------------------------------------------------ values
def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            node[part] = nxt = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])} is {nxt!r}, not a mapping, so {key} cannot be set")
        node = nxt
    node[parts[-1]] = copy.deepcopy(value)


# -------------------------------------------------------------------------------------------- axes
@dataclass(frozen=True)
class Axis:
    """One swept key: a list of values, or a continuous range [low, high] (optionally log/integer)."""

    name: str  #: as written in the sweep file; the DataFrame column
    key: str  #: the dotted experiment key it sets (`hardware` with preset names sets `hardware.base`)
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    steps: int | None = None
    unit: str = ""  #: unit symbol of low/high ("TB/s"); sampled values are written back with it
    where: Where = ("<input>", None)

    @property
    def continuous(self) -> bool:
        return self.low is not None

    def at(self, u: float) -> Any:
        """The value at position `u` in [0, 1): an index for a list, the inverse CDF for a range."""
        if not self.continuous:
            return self.values[min(int(u * len(self.values)), len(self.values) - 1)]
        assert self.low is not None and self.high is not None
        if self.log:
            x = self.low * (self.high / self.low) ** u
        else:
            x = self.low + (self.high - self.low) * u
        return self._finish(x)

    def levels(self) -> list[Any]:
        """The values a grid or zip walks: the list, or `steps` evenly (or log-evenly) spaced values."""
        if not self.continuous:
            return list(self.values)
        n = self.steps or 0
        out: list[Any] = []
        for i in range(n):
            v = self.at(i / (n - 1)) if i < n - 1 else self._finish(self.high or 0.0)
            if v not in out:
                out.append(v)
        return out

    def _finish(self, x: float) -> Any:
        lo, hi = sorted((self.low or 0.0, self.high or 0.0))
        x = min(max(x, lo), hi)
        v: int | float = int(round(x)) if self.integer else float(f"{x:.6g}")  # stable keys across platforms
        return f"{v:g} {self.unit}" if self.unit else v


def _axis(doc: Doc, name: str) -> Axis:
    path = ("axes", name)
    where = doc.where(path)
    raw = doc.get(path)
    top = name.split(".")[0]
    if top not in EXPERIMENT_KEYS:
        raise doc.error(
            path, f"an axis sets an experiment key under {', '.join(EXPERIMENT_KEYS)}, not {top!r}"
        )
    key = name
    if isinstance(raw, Mapping) and "values" in raw:
        extra = [k for k in raw if k != "values"]
        if extra:
            raise doc.error(path + (extra[0],), f"unknown key {extra[0]!r} next to 'values'")
        raw = raw["values"]
        path = path + ("values",)
    if isinstance(raw, list):
        if not raw:
            raise doc.error(path, "an axis needs at least one value")
        for i, v in enumerate(raw):
            if v is None:
                raise doc.error(path + (str(i),), "empty value in an axis")
        if name == HARDWARE_BASE[0] and all(isinstance(v, str) for v in raw):
            key = ".".join(HARDWARE_BASE)  # swapping presets keeps the base experiment's hardware overrides
        return Axis(name, key, tuple(raw), where=where)
    if not isinstance(raw, Mapping):
        raise doc.error(path, f"expected a list of values or a range {{low, high}}, got {raw!r}")
    unknown = [k for k in raw if k not in AXIS_KEYS]
    if unknown:
        raise doc.error(path + (unknown[0],), f"unknown key {unknown[0]!r} (known: {', '.join(AXIS_KEYS)})")
    for k in ("low", "high"):
        if k not in raw:
            raise doc.error(path, "a range axis needs 'low' and 'high' (or give a list of values)")
    lo_num, lo_unit = _split_number(doc, path + ("low",), raw["low"])
    hi_num, hi_unit = _split_number(doc, path + ("high",), raw["high"])
    if lo_unit != hi_unit:
        kind = unit_kind(lo_unit) if lo_unit else None
        if kind is None or not hi_unit or hi_unit not in units.UNITS[kind]:
            raise doc.error(path + ("high",), f"unit {hi_unit!r} does not match low's unit {lo_unit!r}")
        hi_num = units.UNITS[kind][hi_unit] * hi_num / units.UNITS[kind][lo_unit]
    flags = {}
    for k in ("log", "integer"):
        v = raw.get(k, False)
        if not isinstance(v, bool):
            raise doc.error(path + (k,), f"expected true or false, got {v!r}")
        flags[k] = v
    steps = raw.get("steps")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 2):
        raise doc.error(path + ("steps",), f"expected an integer >= 2, got {steps!r}")
    if hi_num < lo_num:
        raise doc.error(path + ("high",), f"high ({raw['high']!r}) is below low ({raw['low']!r})")
    if flags["log"] and lo_num <= 0:
        raise doc.error(path + ("low",), f"a log axis needs low > 0, got {raw['low']!r}")
    return Axis(name, key, low=lo_num, high=hi_num, log=flags["log"], integer=flags["integer"], steps=steps,
                unit=lo_unit, where=where)  # fmt: skip


def _split_number(doc: Doc, path: tuple[str, ...], value: Any) -> tuple[float, str]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise doc.error(path, f"expected a finite number, got {value!r}")
        return float(value), ""
    parts = units.split_unit(value) if isinstance(value, str) else None
    if parts is None:
        raise doc.error(path, f"expected a number or a number with a unit (like '3.35 TB/s'), got {value!r}")
    number, unit = parts
    if not math.isfinite(number):
        raise doc.error(path, f"expected a finite number, got {value!r}")
    if unit and unit_kind(unit) is None:
        raise doc.error(path, f"unknown unit {unit!r} in {value!r}")
    return number, unit


# ---------------------------------------------------------------------------------------- sampling
@dataclass(frozen=True)
class Sampling:
    method: str = "grid"
    samples: int | None = None
    seed: int = 0


def _unit_cube(method: str, n: int, d: int, seed: int) -> Any:
    import numpy as np

    if method == "random":
        return np.random.default_rng(seed).random((n, d))
    from scipy.stats import qmc

    cls = qmc.LatinHypercube if method == "lhs" else qmc.Sobol
    kwargs: dict[str, Any] = {} if method == "lhs" else {"scramble": True}
    try:
        engine = cls(d, rng=np.random.default_rng(seed), **kwargs)
    except TypeError:  # scipy < 1.15 names it `seed`
        engine = cls(d, seed=seed, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Sobol balance warning for n not a power of two: the user chose n
        return engine.random(n)


# ------------------------------------------------------------------------------------- objectives
@dataclass(frozen=True)
class Objective:
    name: str
    goal: str  #: "min" or "max"
    expr: Expr


@dataclass
class PointTemplate:
    """What a worker needs to rebuild a point's located Doc: picklable, no expressions."""

    base_origin: dict[tuple[str, ...], Where]
    file: str
    axis_where: dict[str, Where]  #: dotted key -> where the axis is written

    def doc(self, config: dict[str, Any]) -> Doc:
        """The point's experiment as a Doc whose swept keys point at the sweep file's axis lines."""
        keys = [tuple(k.split(".")) for k in self.axis_where]
        origin = {q: o for q, o in self.base_origin.items() if not any(q[: len(k)] == k for k in keys)}
        for k, where in self.axis_where.items():
            parts = tuple(k.split("."))
            for i in range(1, len(parts) + 1):  # parents the axis creates point at it too
                if i == len(parts) or parts[:i] not in origin:
                    origin[parts[:i]] = where
        return Doc(config, origin, self.file)


# ------------------------------------------------------------------------------------------- spec
@dataclass
class SweepSpec:
    """A loaded, checked sweep file."""

    name: str
    file: str
    base: Doc  #: the base experiment, `hardware: NAME` written out (config.expand_hardware_shorthand)
    base_file: str | None  #: the experiment YAML `base:` names, None when inline
    axes: list[Axis]
    sampling: Sampling
    constraints: list[tuple[Expr, tuple[str, ...]]] = field(default_factory=list)
    derived: dict[str, Expr] = field(default_factory=dict)
    objectives: dict[str, Objective] = field(default_factory=dict)
    #: keys computed from the axes per point (`hardware.tensor_peak.bf16: 989.4e12 * hardware.sms / 132`)
    sets: dict[str, tuple[Expr, Where]] = field(default_factory=dict)
    doc: Doc | None = None
    config_names: set[str] = field(default_factory=set)
    defaults: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------- points
    def points(self) -> list[dict[str, Any]]:
        """Axis values of every design point the sampling plan asks for, in a stable order."""
        axes, s = self.axes, self.sampling
        if not axes:
            return [{}]
        if s.method == "grid":
            return [dict(zip([a.name for a in axes], combo, strict=True))
                    for combo in itertools.product(*(a.levels() for a in axes))]  # fmt: skip
        if s.method == "zip":
            levels = [a.levels() for a in axes]
            return [
                dict(zip([a.name for a in axes], combo, strict=True)) for combo in zip(*levels, strict=True)
            ]
        cube = _unit_cube(s.method, s.samples or 0, len(axes), s.seed)
        return [{a.name: a.at(float(u)) for a, u in zip(axes, row, strict=True)} for row in cube]

    def config(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """The fully resolved experiment mapping of a point: the base with the axis values set."""
        data = copy.deepcopy(self.base.data)
        for a in self.axes:
            set_dotted(data, a.key, point[a.name])
        if self.sets:
            env = self.point_env(point, data)
            for key, (expr, where) in self.sets.items():
                try:
                    value = expr(env)
                except (MissingName, ArithmeticError, ValueError, TypeError) as e:
                    raise ConfigError(
                        f"cannot compute `{expr.text}`: {e}", where[0], where[1], f"set.{key}"
                    ) from None
                if isinstance(value, float):
                    value = units.SI(
                        value
                    )  # computed in SI base units: taken as such where a unit is expected
                set_dotted(data, key, value)
                env[key] = to_number(value)
        return data

    def template(self) -> PointTemplate:
        where = {a.key: a.where for a in self.axes}
        where.update({k: w for k, (_, w) in self.sets.items()})
        return PointTemplate(dict(self.base.origin), self.base.file, where)

    def point_env(self, point: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
        """Names a constraint may read before the point runs: config keys (SI numbers), axis names."""
        env = dict(self.defaults)
        env.update({k: to_number(v) for k, v in flatten(config).items()})
        env[HARDWARE_BASE[0]] = env.get(".".join(HARDWARE_BASE))
        env.update({k: to_number(v) for k, v in point.items()})
        for name, expr in self.derived.items():
            if expr.names <= self.config_names | set(self.derived):
                try:
                    env[name] = expr(env)
                except (MissingName, ArithmeticError, ValueError, TypeError):
                    pass
        return env

    def pre_constraints(self) -> list[tuple[Expr, tuple[str, ...]]]:
        return [(e, p) for e, p in self.constraints if self._is_pre(e)]

    def post_constraints(self) -> list[tuple[Expr, tuple[str, ...]]]:
        return [(e, p) for e, p in self.constraints if not self._is_pre(e)]

    def _is_pre(self, e: Expr) -> bool:
        pre = {n for n, d in self.derived.items() if d.names <= self.config_names}
        return e.names <= self.config_names | pre


def _load_doc(ref: str | Path | Mapping[str, Any] | Doc) -> Doc:
    if isinstance(ref, Doc):
        return ref
    if isinstance(ref, Mapping):
        return parse_yaml(yaml.safe_dump(dict(ref), sort_keys=False), "<sweep>")
    return load_yaml(ref)


def _schema_defaults() -> dict[str, Any]:
    from simcore.experiment import EXPERIMENT_SCHEMA  # the simulator, loaded when a sweep is, not by the CLI

    return schema_defaults(EXPERIMENT_SCHEMA)


def load_sweep(ref: str | Path | Mapping[str, Any] | Doc, check: bool = True) -> SweepSpec:
    """Parse and check a sweep file (or mapping); `check` also loads every axis value once."""
    doc = _load_doc(ref)
    if not isinstance(doc.data, Mapping):
        raise doc.error((), "a sweep file must be a mapping with base, axes, sampling, ...")
    unknown = [k for k in doc.data if k not in SWEEP_KEYS]
    if unknown:
        raise doc.error((unknown[0],), f"unknown key {unknown[0]!r} (known: {', '.join(SWEEP_KEYS)})")
    name = doc.data.get("name") or (Path(doc.file).stem if not doc.file.startswith("<") else "sweep")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
        raise doc.error(("name",), f"expected a name of letters, digits, '-', '_' or '.', got {name!r}")

    # base experiment
    if "base" not in doc.data:
        raise doc.error(
            (), "missing required key 'base' (an experiment mapping or a path to an experiment YAML)"
        )
    base_ref, base_file = doc.data["base"], None
    if isinstance(base_ref, str):
        p = Path(base_ref)
        if not p.is_absolute() and not p.exists() and not doc.file.startswith("<"):
            p = Path(doc.file).parent / p
        if not p.exists():
            raise doc.error(("base",), f"no such experiment file {base_ref!r}")
        base = load_yaml(p)
        base_file = str(p)
    elif isinstance(base_ref, Mapping):
        base = doc.sub(("base",))
    else:
        raise doc.error(("base",), f"expected an experiment mapping or a YAML path, got {base_ref!r}")
    base = expand_hardware_shorthand(base)

    # axes
    raw_axes = doc.data.get("axes") or {}
    if not isinstance(raw_axes, Mapping):
        raise doc.error(("axes",), "expected a mapping of dotted experiment keys to values or ranges")
    axes = [_axis(doc, str(k)) for k in raw_axes]
    keys = [a.key for a in axes]
    for a in axes:
        clash = [k for k in keys if k != a.key and (k.startswith(a.key + ".") or a.key.startswith(k + "."))]
        if clash or keys.count(a.key) > 1:
            raise doc.error(("axes", a.name), f"axis overlaps axis {(clash or [a.key])[0]!r}")

    sampling = _sampling(doc, axes)

    spec = SweepSpec(name, doc.file, base, base_file, axes, sampling, doc=doc)
    spec.defaults = _schema_defaults()
    spec.config_names = set(spec.defaults) | set(flatten(base.data)) | {"hardware"}
    spec.config_names |= {a.key for a in axes} | {a.name for a in axes}
    known_metrics = set(METRICS)

    def check_names(expr: Expr, path: tuple[str, ...], extra: Iterable[str] = ()) -> None:
        known = spec.config_names | known_metrics | set(extra)
        for n in sorted(expr.names):
            if n not in known and not n.startswith(METRIC_PREFIXES):
                sample = ", ".join(sorted({a.name for a in axes} | {"latency_s", "tokens_per_s", "energy_j"}))
                raise doc.error(path, f"unknown name {n!r} in {expr.text!r} (axes, experiment keys and result "
                                      f"figures such as {sample}, ...)")  # fmt: skip

    def compile_expr(text: Any, path: tuple[str, ...]) -> Expr:
        if isinstance(text, bool) or not isinstance(text, str | int | float):
            raise doc.error(path, f"expected an expression, got {text!r}")
        try:
            return Expr(str(text))
        except ExprError as e:
            raise doc.error(path, str(e)) from None

    # keys computed from the axes, in order
    raw_set = doc.data.get("set") or {}
    if not isinstance(raw_set, Mapping):
        raise doc.error(("set",), "expected a mapping of dotted experiment key: expression over the axes")
    for k, text in raw_set.items():
        path = ("set", str(k))
        key = str(k)
        if key.split(".")[0] not in EXPERIMENT_KEYS:
            raise doc.error(
                path, f"set names an experiment key under {', '.join(EXPERIMENT_KEYS)}, not {key!r}"
            )
        clash = [
            a.name for a in axes if a.key == key or key.startswith(a.key + ".") or a.key.startswith(key + ".")
        ]
        if clash:
            raise doc.error(path, f"{key} is also set by axis {clash[0]!r}")
        expr = compile_expr(text, path)
        unknown = sorted(expr.names - spec.config_names)
        if unknown:
            raise doc.error(path, f"unknown name {unknown[0]!r} in {expr.text!r} (a set value may use the axes "
                                  "and the base experiment's keys, not results)")  # fmt: skip
        spec.sets[key] = (expr, doc.where(path))
        spec.config_names.add(key)

    # derived figures, in order (each may use the ones before it)
    raw_derived = doc.data.get("derived") or {}
    if not isinstance(raw_derived, Mapping):
        raise doc.error(("derived",), "expected a mapping of name: expression")
    for k, text in raw_derived.items():
        path = ("derived", str(k))
        if not re.fullmatch(r"[A-Za-z_]\w*", str(k)):
            raise doc.error(path, f"a derived name must be an identifier, got {k!r}")
        expr = compile_expr(text, path)
        check_names(expr, path, spec.derived)
        spec.derived[str(k)] = expr

    # constraints
    raw_c = doc.data.get("constraints") or []
    if isinstance(raw_c, str):
        raw_c = [raw_c]
        cpaths: list[tuple[str, ...]] = [("constraints",)]
    elif isinstance(raw_c, list):
        cpaths = [("constraints", str(i)) for i in range(len(raw_c))]
    else:
        raise doc.error(("constraints",), "expected a list of expressions")
    for text, path in zip(raw_c, cpaths, strict=True):
        expr = compile_expr(text, path)
        check_names(expr, path, spec.derived)
        spec.constraints.append((expr, path))

    # objectives
    raw_o = doc.data.get("objectives") or {}
    if not isinstance(raw_o, Mapping):
        raise doc.error(("objectives",), "expected a mapping like {latency_s: min, tokens_per_s: max}")
    for k, v in raw_o.items():
        path = ("objectives", str(k))
        if isinstance(v, str):
            goal, text = v, str(k)
        elif isinstance(v, Mapping):
            bad = [x for x in v if x not in ("expr", "goal")]
            if bad:
                raise doc.error(path + (bad[0],), f"unknown key {bad[0]!r} (known: expr, goal)")
            if "expr" not in v:
                raise doc.error(path, "an objective mapping needs 'expr' (and 'goal': min or max)")
            goal, text = v.get("goal", "min"), v["expr"]
            path = path + ("expr",)
        else:
            raise doc.error(path, f"expected min, max or {{expr: ..., goal: min|max}}, got {v!r}")
        if goal not in GOALS:
            raise doc.error(("objectives", str(k)), f"goal must be min or max, got {goal!r}")
        expr = compile_expr(text, path)
        check_names(expr, path, spec.derived)
        spec.objectives[str(k)] = Objective(str(k), goal, expr)

    if check:
        _check_values(spec)
    return spec


def _sampling(doc: Doc, axes: list[Axis]) -> Sampling:
    raw = doc.data.get("sampling", "grid")
    spath: tuple[str, ...] = ("sampling",)
    if isinstance(raw, Mapping):
        bad = [k for k in raw if k not in ("method", "samples", "seed")]
        if bad:
            raise doc.error(spath + (bad[0],), f"unknown key {bad[0]!r} (known: method, samples, seed)")
        method, samples, seed = raw.get("method", "grid"), raw.get("samples"), raw.get("seed")
        where = {"samples": spath + ("samples",), "seed": spath + ("seed",), "method": spath + ("method",)}
        for k in ("samples", "seed"):
            if k in doc.data:
                raise doc.error((k,), f"give {k!r} either at the top level or under 'sampling', not both")
    else:
        method, samples, seed = raw, doc.data.get("samples"), doc.data.get("seed")
        where = {"samples": ("samples",), "seed": ("seed",), "method": spath}
    if method not in SAMPLING_METHODS:
        raise doc.error(
            where["method"], f"unknown sampling {method!r} (known: {', '.join(SAMPLING_METHODS)})"
        )
    if seed is None:
        seed = 0
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise doc.error(where["seed"], f"expected a non-negative integer seed, got {seed!r}")
    if method in ("grid", "zip"):
        if samples is not None:
            raise doc.error(where["samples"], f"'samples' applies to random, lhs and sobol, not {method}")
        for a in axes:
            if a.continuous and not a.steps:
                raise doc.error(("axes", a.name), f"{method} sampling needs 'steps' on a range axis")
        if method == "zip" and axes:
            n = {a.name: len(a.levels()) for a in axes}
            if len(set(n.values())) > 1:
                raise doc.error(spath, "zip sampling needs axes of equal length, got "
                                       + ", ".join(f"{k}: {v}" for k, v in n.items()))  # fmt: skip
    else:
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise doc.error(where["samples"] if samples is not None else spath,
                            f"{method} sampling needs 'samples', a positive integer (got {samples!r})")  # fmt: skip
    return Sampling(str(method), samples, seed)


def _check_values(spec: SweepSpec) -> None:
    """Load the base with each axis value once: a typo (unknown key, preset, model, unit) stops the sweep
    here, naming the axis; value-specific problems are left to each point, which records them."""
    from simcore.experiment import load_experiment

    first = {a.name: a.levels()[0] if (a.values or a.steps) else a.at(0.0) for a in spec.axes}
    tmpl = spec.template()
    try:
        cfg = spec.config(first)
    except ConfigError as e:
        raise _axis_error(spec, spec.axes[0] if spec.axes else None, e) from None
    try:
        load_experiment(tmpl.doc(cfg))
    except ConfigError as e:
        axis = _blame(spec, e)
        if axis is None:  # the base experiment itself is wrong
            raise
        if _is_typo(e):
            raise _axis_error(spec, axis, e) from None
    for a in spec.axes:
        vals = a.levels() if (a.values or a.steps) else [a.at(0.0), a.at(math.nextafter(1.0, 0.0))]
        for v in vals:
            try:
                cfg = spec.config({**first, a.name: v})
                load_experiment(tmpl.doc(cfg))
            except ConfigError as e:
                if _is_typo(e):
                    culprit = _blame(spec, e)
                    if culprit is None:
                        raise
                    raise _axis_error(spec, culprit, e, v if culprit is a else None) from None


def _is_typo(e: ConfigError) -> bool:
    return e.message.startswith(("unknown", "no such file", "malformed", "missing required"))


def _blame(spec: SweepSpec, e: ConfigError) -> Axis | None:
    for a in spec.axes:
        if e.file == a.where[0] and e.line == a.where[1]:
            return a
    return None


def _axis_error(spec: SweepSpec, axis: Axis | None, e: ConfigError, value: Any = None) -> ConfigError:
    if axis is None:  # the base experiment itself is wrong
        return e
    detail = f" (value {value!r})" if value is not None and str(value) not in e.message else ""
    return ConfigError(f"{e.message}{detail}", axis.where[0], axis.where[1], f"axes.{axis.name}")
