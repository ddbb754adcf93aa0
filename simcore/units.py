"""Unit strings parsed once, at the boundary, into SI floats.

Rates are decimal ("3.35 TB/s" = 3.35e12 B/s); capacities say what they mean ("80 GiB" vs "80 GB").
Each quantity kind has its own table, so "80 GB/s" is never accepted where a capacity is expected.
"""

from __future__ import annotations

import math
import re
from typing import Any

_DEC = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_BIN = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}
_SMALL = {"": 1.0, "m": 1e-3, "u": 1e-6, "µ": 1e-6, "n": 1e-9, "p": 1e-12, "f": 1e-15}


def _table(prefixes: dict[str, float], units: dict[str, float]) -> dict[str, float]:
    return {p + u: pv * uv for p, pv in prefixes.items() for u, uv in units.items()}


#: kind -> {unit symbol: multiplier to the SI base of that kind}
UNITS: dict[str, dict[str, float]] = {
    "bytes": {**_table(_DEC, {"B": 1.0}), **_table(_BIN, {"B": 1.0})},
    "bandwidth": {**_table(_DEC, {"B/s": 1.0}), **_table(_DEC, {"bit/s": 0.125, "b/s": 0.125})},
    "frequency": _table(_DEC, {"Hz": 1.0}),
    "time": {**_table(_SMALL, {"s": 1.0}), "min": 60.0, "h": 3600.0},
    "flops": _table(_DEC, {"FLOP/s": 1.0, "FLOPS": 1.0, "OP/s": 1.0, "OPS": 1.0}),
    "power": _table({**_SMALL, **_DEC}, {"W": 1.0}),
    "energy": _table({**_SMALL, **_DEC}, {"J": 1.0}),
    "energy_per_bit": _table(_SMALL, {"J/bit": 1.0, "J/b": 1.0}),
    "energy_per_byte": {**_table(_SMALL, {"J/B": 1.0}), **_table(_SMALL, {"J/bit": 8.0})},
    "energy_per_op": _table(_SMALL, {"J/FLOP": 1.0, "J/op": 1.0, "J/MAC": 0.5}),
    "length": _table({**_SMALL, "c": 1e-2}, {"m": 1.0}),
}

_NUM = re.compile(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([^\s\d].*)?")


class UnitError(ValueError):
    """A value that is not a number with a unit of the expected kind."""


def split_unit(text: str) -> tuple[float, str] | None:
    """ "3.35 TB/s" -> (3.35, "TB/s"), "12" -> (12.0, ""); None when `text` does not start with a number."""
    m = _NUM.fullmatch(text.strip())  # stripped first: no backtracking over long runs of blanks
    if not m:
        return None
    return float(m.group(1)), (m.group(2) or "").strip()


class SI(float):
    """A number already in the SI base unit of whatever kind it is given for: values a program computes
    (a sweep's `set:` expressions) rather than a person writes. `parse` takes it as it is; a plain
    number written without a unit is refused, so `clock: 2.1` is never silently read as 2.1 Hz."""

    __slots__ = ()

    def __repr__(self) -> str:
        return float.__repr__(self)


def _what(kind: str) -> str:
    return f"a {kind.replace('_', ' ')}"


def parse(value: object, kind: str) -> float:
    """Parse `value` ("3.35 TB/s", "80 GiB", SI(1.41e9)) into the SI base unit of `kind`.

    A bare number (`2.1`, `"5300"`) is refused, naming the unit expected: a parameter with a unit needs
    one written. Only `SI` numbers (computed values already in base units) pass as they are. The result
    is always finite: `.nan`, `.inf`, `1e999 GHz` and numbers that overflow are refused.
    """
    table = UNITS[kind]
    if isinstance(value, SI):
        out = float(value)
        if not math.isfinite(out):
            raise UnitError(f"expected a finite {kind.replace('_', ' ')}, got {float(value)!r}")
        return out
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UnitError(f"expected {_what(kind)} like {example(kind)!r}, got {short_repr(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UnitError(f"expected a finite {kind.replace('_', ' ')} like {example(kind)!r}, got {value!r}")
    if isinstance(value, int | float):
        raise UnitError(f"expected {_what(kind)} with a unit, e.g. {example(kind)!r}, got a bare number "
                        f"{short_repr(value)}")  # fmt: skip
    parts = split_unit(value)
    if parts is None:
        raise UnitError(f"expected {_what(kind)} like {example(kind)!r}, got {short_repr(value)}")
    number, unit = parts
    if unit == "":
        raise UnitError(
            f"expected {_what(kind)} with a unit, e.g. {example(kind)!r}, got {short_repr(value)}"
        )
    if unit not in table:
        raise UnitError(f"unknown unit {short_repr(unit)} for {_what(kind)} (e.g. {example(kind)!r})")
    out = number * table[unit]
    if not math.isfinite(out):
        raise UnitError(f"{short_repr(value)} is out of range (not a finite number)")
    return out


def short_repr(value: object, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters, so that an error message stays one short line."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unit_kind(unit: str) -> str | None:
    """The quantity kind a unit symbol belongs to ("TB/s" -> "bandwidth"), or None.

    The only symbols in two tables are the `J/bit` ones, read as energy per bit (listed first in UNITS).
    """
    for kind, table in UNITS.items():
        if unit in table:
            return kind
    return None


def to_number(value: Any) -> Any:
    """A number for values like "3.35 TB/s" or "80 GiB" (SI base units), the kind read off the unit;
    a numeric string without a unit becomes a float; anything else is returned unchanged."""
    if isinstance(value, str):
        parts = split_unit(value)
        if parts:
            number, unit = parts
            if not unit:
                return number
            kind = unit_kind(unit)
            if kind:
                return number * UNITS[kind][unit]
    return value


def value_kind(value: Any) -> str | None:
    """The quantity kind of a value written with a unit ("3.35 TB/s" -> "bandwidth"), else None."""
    if isinstance(value, str):
        parts = split_unit(value)
        if parts and parts[1]:
            return unit_kind(parts[1])
    return None


def example(kind: str) -> str:
    return {
        "bytes": "80 GiB",
        "bandwidth": "3.35 TB/s",
        "frequency": "1.98 GHz",
        "time": "5 us",
        "flops": "989 TFLOP/s",
        "power": "700 W",
        "energy": "1 mJ",
        "energy_per_bit": "5 pJ/bit",
        "energy_per_byte": "40 pJ/B",
        "energy_per_op": "0.4 pJ/FLOP",
        "length": "7 nm",
    }[kind]


DISPLAY_SCALES = {
    "bytes": [(2.0**40, "TiB"), (2.0**30, "GiB"), (2.0**20, "MiB"), (2.0**10, "KiB"), (1.0, "B")],
    "bandwidth": [(1e12, "TB/s"), (1e9, "GB/s"), (1e6, "MB/s"), (1e3, "kB/s"), (1.0, "B/s")],
    "frequency": [(1e9, "GHz"), (1e6, "MHz"), (1e3, "kHz"), (1.0, "Hz")],
    "time": [(1.0, "s"), (1e-3, "ms"), (1e-6, "us"), (1e-9, "ns"), (1e-12, "ps")],
    "flops": [(1e15, "PFLOP/s"), (1e12, "TFLOP/s"), (1e9, "GFLOP/s"), (1e6, "MFLOP/s"), (1.0, "FLOP/s")],
    "power": [(1e3, "kW"), (1.0, "W"), (1e-3, "mW")],
    "energy": [(1e3, "kJ"), (1.0, "J"), (1e-3, "mJ"), (1e-6, "uJ"), (1e-9, "nJ"), (1e-12, "pJ")],
    "energy_per_bit": [(1e-12, "pJ/bit")],
    "energy_per_byte": [(1e-12, "pJ/B")],
    "energy_per_op": [(1e-12, "pJ/FLOP")],
    "length": [(1.0, "m"), (1e-3, "mm"), (1e-9, "nm")],
}


def fmt(value: float, kind: str, digits: int = 4) -> str:
    """Human-readable string for an SI value of `kind` (inverse of `parse`, up to rounding)."""
    if value == 0:
        return f"0 {DISPLAY_SCALES[kind][-1][1]}"
    for scale, sym in DISPLAY_SCALES[kind]:
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g} {sym}"
    scale, sym = DISPLAY_SCALES[kind][-1]
    return f"{value / scale:.{digits}g} {sym}"


#: name suffix -> unit kind, for figures named the project's way (`latency_s`, `peak_memory_B`, ...);
#: "rate" (per second) and "percent" (fractions) are display kinds with no parse table.
NAME_SUFFIX_KINDS = (("_per_s", "rate"), ("_Bps", "bandwidth"), ("_s", "time"), ("_j", "energy"),
                     ("_J", "energy"), ("_B", "bytes"), ("_W", "power"), ("_flops", "flops"),
                     ("utilization", "percent"), ("_frac", "percent"))  # fmt: skip


def kind_from_name(name: str) -> str | None:
    """The unit kind a figure's name declares by its suffix, if any."""
    for suffix, kind in NAME_SUFFIX_KINDS:
        if name.endswith(suffix):
            return kind
    return None


def column_kind(df: Any, col: str) -> str | None:
    """The display unit kind of a result or sweep column: the units recorded in `df.attrs["units"]` (a
    pandas DataFrame's, e.g. a sweep's axes) first, else the name's suffix; None for rates and fractions,
    which are shown as plain numbers."""
    if df is not None:
        k = getattr(df, "attrs", {}).get("units", {}).get(col)
        if k:
            return k
    k = kind_from_name(col)
    return k if k in DISPLAY_SCALES else None
