"""Rows for `simcore hw show`: every resolved parameter with its unit and where its value came from."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from simcore.config import ABSENT, MapOf, Param, Path_, walk_schema
from simcore.system import System
from simcore.units import fmt


def _value(spec: Param | None, v: Any) -> str:
    if v is None:
        return "-"
    if spec is not None and spec.unit and isinstance(v, int | float):
        return fmt(float(v), spec.unit)
    return str(v)


def _leaves(schema: Mapping[str, Any], params: Mapping[str, Any]) -> Iterator[tuple[Path_, Param, Any]]:
    """(key path, Param, value) of every resolved parameter, a MapOf's entries one by one."""
    for path, spec, v in walk_schema(schema, params):
        if "abstract" in path:
            continue
        v = None if v is ABSENT else v
        if isinstance(spec, Param):
            yield path, spec, v
        elif isinstance(spec, MapOf):
            for k, item in (v or {}).items():
                yield path + (k,), spec.item, item


def show_rows(system: System) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, comp in system.devices.items():
        rows.append((name, "type", comp.type_name, ""))
        for path, spec, v in _leaves(comp.SCHEMA, comp.params):
            src = "default"
            if comp.doc is not None and path in comp.doc.origin:
                file, line = comp.doc.origin[path]
                src = f"{file}:{line}" if line else file
            rows.append((name, ".".join(path), _value(spec, v), src))
        for key, (v, kind, how) in comp.derived().items():
            rows.append((name, key, fmt(v, kind) if kind else f"{v:.4g}", f"derived: {how}"))
    for link in system.links:
        rows.append((link.name, "bandwidth_per_direction", fmt(link.bw_Bps, "bandwidth"),
                     f"derived: {fmt(link.peak_Bps, 'bandwidth')} x efficiency ({link.source})"))  # fmt: skip
        rows.append((link.name, "latency", fmt(link.latency_s, "time"), link.source))
    return rows
