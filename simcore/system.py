"""A System: named device instances (from presets) and the links between them, as a networkx graph.

Built from a system YAML (`type: system`) or from a single device preset, which becomes a one-device
system. Everything is validated here, before any simulation starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import networkx as nx

import hardware  # noqa: F401  (registers the component types)
from hardware.links import Link, build_links
from simcore.component import Component, component_type
from simcore.config import Doc, apply_overrides, load_preset, merge, resolve_bases
from simcore.errors import ConfigError

SYSTEM_KEYS = ("type", "description", "source", "devices", "switches", "links")


@dataclass
class System:
    name: str
    devices: dict[str, Component]
    links: list[Link] = field(default_factory=list)
    switches: list[str] = field(default_factory=list)
    doc: Doc | None = None
    graph: nx.Graph = field(default_factory=nx.Graph)

    def __post_init__(self) -> None:
        g = self.graph
        for n in self.devices:
            g.add_node(n, kind="device")
        for s in self.switches:
            g.add_node(s, kind="switch")
        for link in self.links:
            # parallel links between the same pair are bundled into one wider edge
            if g.has_edge(link.a, link.b):
                old: Link = g.edges[link.a, link.b]["link"]
                link = replace(old, bw_Bps=old.bw_Bps + link.bw_Bps, peak_Bps=old.peak_Bps + link.peak_Bps,
                               latency_s=min(old.latency_s, link.latency_s))  # fmt: skip
            g.add_edge(link.a, link.b, link=link, weight=link.latency_s)
        self._routes: dict[tuple[str, str], list[tuple[str, str, Link]]] = {}

    def of_type(self, type_name: str) -> list[str]:
        return [n for n, c in self.devices.items() if c.type_name == type_name]

    def route(self, src: str, dst: str) -> list[tuple[str, str, Link]]:
        """Hops (from, to, link) of the lowest-latency path; ties broken by name for determinism."""
        key = (src, dst)
        if key not in self._routes:
            if src == dst:
                self._routes[key] = []
            else:
                try:
                    nodes = nx.shortest_path(self.graph, src, dst, weight="weight")
                except (nx.NetworkXNoPath, nx.NodeNotFound):
                    raise ConfigError(f"no link path from {src} to {dst} in system {self.name!r}") from None
                self._routes[key] = [
                    (a, b, self.graph.edges[a, b]["link"]) for a, b in zip(nodes, nodes[1:], strict=False)
                ]
        return self._routes[key]


def _fold_device_groups(doc: Doc) -> Doc:
    """On a system, a top-level key naming a device group (`gpu.memory.bandwidth`) overrides that
    group's entry (`devices.gpu.memory.bandwidth`)."""
    groups = doc.data.get("devices")
    stray = [k for k in doc.data if k not in SYSTEM_KEYS and isinstance(groups, Mapping) and k in groups]
    if not stray:
        return doc
    data = {k: v for k, v in doc.data.items() if k not in stray}
    origin = {q: o for q, o in doc.origin.items() if q[:1] not in [(k,) for k in stray]}
    over = Doc({"devices": {k: doc.data[k] for k in stray}},
               {("devices",) + q: o for q, o in doc.origin.items() if q[:1] in [(k,) for k in stray]}, doc.file)  # fmt: skip
    return merge(Doc(data, origin, doc.file), over)


def load_system(ref: str | Path | Doc, overrides: Iterable[str] = ()) -> System:
    """Load a system or device preset by name, path or Doc (with `base:`), apply `--set` overrides,
    validate and connect."""
    if isinstance(ref, Doc):
        base = ref.data.get("base") if isinstance(ref.data, Mapping) else None
        name, doc = str(base or Path(ref.file).stem), ref
    else:
        name, doc = Path(str(ref)).stem, load_preset("hardware", str(ref))
    doc = apply_overrides(resolve_bases("hardware", doc), overrides)
    if doc.data.get("type") == "system":
        sys_ = _build_system(_fold_device_groups(doc))
    else:
        comp = _build_component(str(doc.data.get("type", "device")), doc)
        sys_ = System(name, {comp.name: comp}, doc=doc)
    sys_.name = name
    return sys_


def _build_component(name: str, doc: Doc, path: tuple[str, ...] = ()) -> Component:
    sub = doc.sub(path) if path else doc
    if sub.get(("abstract",)):
        raise sub.error((), "is an abstract architecture base; use a concrete preset that inherits from it")
    cls = component_type(sub)
    return cls.from_doc(name, sub)


def _build_system(doc: Doc) -> System:
    data = doc.data
    for k in data:
        if k not in SYSTEM_KEYS:
            raise doc.error((k,), f"unknown key {k!r} (known: {', '.join(SYSTEM_KEYS)})")
    groups = data.get("devices")
    if not isinstance(groups, Mapping) or not groups:
        raise doc.error(("devices",), "a system needs a non-empty 'devices' mapping")
    devices: dict[str, Component] = {}
    for group, entry in groups.items():
        path = ("devices", group)
        if not isinstance(entry, Mapping) or "base" not in entry:
            raise doc.error(path, "expected a mapping with 'base: PRESET' (and optional count, overrides)")
        count = entry.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise doc.error(path + ("count",), f"must be a positive integer, got {count!r}")
        base = load_preset("hardware", str(entry["base"]), doc, path + ("base",))
        own = doc.sub(path)
        own = Doc({k: v for k, v in own.data.items() if k not in ("base", "count")},
                  {q: o for q, o in own.origin.items() if q[:1] not in (("base",), ("count",))}, doc.file)  # fmt: skip
        merged = merge(base, own)
        for i in range(count):
            name = f"{group}{i}" if count > 1 else group
            devices[name] = _build_component(name, merged)
    switches = data.get("switches") or []
    if not isinstance(switches, list) or not all(isinstance(s, str) for s in switches):
        raise doc.error(("switches",), "expected a list of switch names")
    endpoints = list(devices) + switches
    links: list[Link] = []
    raw_links = data.get("links") or []
    if not isinstance(raw_links, list):
        raise doc.error(("links",), "expected a list of links")
    for i in range(len(raw_links)):
        links.extend(build_links(doc, ("links", str(i)), endpoints))
    sys_ = System(Path(doc.file).stem, devices, links, switches, doc)
    for n in devices:
        if len(devices) > 1 and sys_.graph.degree(n) == 0:
            raise doc.error(("devices",), f"device {n!r} has no link to the rest of the system")
    return sys_
