"""Rows for `simcore hw show`: every resolved parameter with its unit and where its value came from."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from simcore.config import ABSENT, MapOf, Param, Path_, walk_schema
from simcore.errors import ConfigError
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


def _group_label(names: list[str]) -> str:
    """`gpu0..gpu7 (8 identical)` for a run of identical devices or links, the name alone for one."""
    return names[0] if len(names) == 1 else f"{names[0]}..{names[-1]} ({len(names)} identical)"


def show_rows(system: System, device: str | None = None) -> list[tuple[str, str, str, str]]:
    """Every resolved parameter of every device (identical devices collapsed into one group, or only
    `device`), then every link (identical links collapsed)."""
    if device is not None and device not in system.devices:
        raise ConfigError(f"no device {device!r} in {system.name!r} (have: {', '.join(system.devices)})",
                          key="--device")  # fmt: skip
    groups: dict[object, list[str]] = {}
    for name, comp in system.devices.items():
        if device is None or name == device:
            origin = tuple(sorted(comp.doc.origin.items())) if comp.doc is not None else ()
            groups.setdefault((comp.config_key, origin), []).append(name)
    rows = []
    for names in groups.values():
        comp, label = system.devices[names[0]], _group_label(names)
        rows.append((label, "type", comp.type_name, ""))
        for path, spec, v in _leaves(comp.SCHEMA, comp.params):
            src = "default"
            if comp.doc is not None and path in comp.doc.origin:
                file, line = comp.doc.origin[path]
                src = f"{file}:{line}" if line else file
            rows.append((label, ".".join(path), _value(spec, v), src))
        for key, (v, kind, how) in comp.derived().items():
            rows.append((label, key, fmt(v, kind) if kind else f"{v:.4g}", f"derived: {how}"))
    if device is not None:
        return rows
    links: dict[tuple, list[str]] = {}
    for link in system.links:
        links.setdefault((link.type, link.bw_Bps, link.peak_Bps, link.latency_s, link.source), []).append(
            link.name
        )
    for (_, bw, peak, lat, source), names in links.items():
        label = _group_label(names)
        rows.append((label, "bandwidth_per_direction", fmt(bw, "bandwidth"),
                     f"derived: {fmt(peak, 'bandwidth')} x efficiency ({source})"))  # fmt: skip
        rows.append((label, "latency", fmt(lat, "time"), source))
    return rows
