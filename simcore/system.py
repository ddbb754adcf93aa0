"""A System: named device instances (from presets) and the links between them, as a networkx graph.

Built from a system YAML (`type: system`) or from a single device preset, which becomes a one-device
system. Everything is validated here, before any simulation starts.

A system preset can itself be a device group of another system (`node: {base: dgx-a100-8, count: 2}`):
its members get hierarchical names (`node0.gpu3`, `node1.nvswitch`; with count 1 the bare group name,
`node.gpu3`), its links are kept, renamed, and the outer `links:` may name inner endpoints or patterns
that reach into the nodes (`node*.nic*`). The elaborated System is flat: `devices`, `switches` and
`links` list every member of every level.

Traffic is forwarded only by switches and by devices that forward: by default those whose component type
says so (`FORWARDS`: a CPU's root complex routes peer traffic between its root ports and over the socket
link), as changed by a system's `forwarding:` key. `route()` never passes through any other device.
A NIC is such a forwarding node (a switch entry next to the PCIe switch it hangs off): it has no memory,
compute or ops, so it is not a device, and the engine's per-device accounting does not change.

Links are checked against the ports their devices document (hardware/links.py). Every device memory is a
`MemoryPort` (`memories`, `memory_of()`); `memory_of: DEVICE` in a device entry makes the device use that
device's memory instead of its own (a processing-in-memory unit on a GPU's HBM). A component whose
declared energy `ACTIONS` lack a price is refused here, at the entry that declares it.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import networkx as nx

import hardware  # noqa: F401  (registers the component types)
from hardware.links import Link, build_links, port
from simcore.component import Component, component_type
from simcore.config import Doc, apply_overrides, load_preset, merge, resolve_bases
from simcore.errors import ConfigError

SYSTEM_KEYS = ("type", "description", "source", "devices", "switches", "links", "forwarding")
#: keys of a `devices:` entry that belong to the system, not to the component's parameters
ENTRY_KEYS = ("base", "count", "memory_of")
#: levels of systems inside a system (a cluster of racks of nodes nests 2 deep)
MAX_DEPTH = 4
#: devices in one elaborated system (routes are computed per pair of devices)
MAX_DEVICES = 4096


@dataclass(frozen=True)
class MemoryPort:
    """A memory as a flow resource: who owns it, how much it holds, how fast it reads and writes."""

    name: str  # "<owner>.mem"
    owner: str  # the device whose memory it is
    capacity_B: float
    read_Bps: float
    write_Bps: float


@dataclass
class System:
    name: str
    devices: dict[str, Component]
    links: list[Link] = field(default_factory=list)
    switches: list[str] = field(default_factory=list)
    doc: Doc | None = None
    #: devices that forward traffic besides switches; None: those whose type `FORWARDS` (CPUs)
    forwarding: frozenset[str] | None = None
    #: every `devices:` entry at every level (`gpu`, `node`, `node0.gpu`) -> its instances, in order
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: device -> device whose memory it uses as its own (`memory_of:` in its entry)
    shared_memory: dict[str, str] = field(default_factory=dict)
    #: "<device>.mem" -> MemoryPort, for every device with memory that does not use another's
    memories: dict[str, MemoryPort] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.forwarding is None:
            self.forwarding = frozenset(n for n, c in self.devices.items() if getattr(c, "FORWARDS", False))
        self._forwarders = frozenset(self.switches) | self.forwarding
        self._routes: dict[tuple[str, str], list[tuple[str, str, Link]]] = {}
        self._memory_of: dict[str, MemoryPort] = {}
        for n, c in self.devices.items():
            if n not in self.shared_memory and c.memory_bandwidth_Bps > 0:
                mp = MemoryPort(
                    f"{n}.mem", n, c.memory_capacity_B, c.memory_bandwidth_Bps, c.write_bandwidth_Bps
                )
                self.memories[mp.name] = self._memory_of[n] = mp
        for n, owner in self.shared_memory.items():
            if owner not in self._memory_of:
                raise ConfigError(f"device {n!r} shares the memory of {owner!r}, which has none")
            self._memory_of[n] = self._memory_of[owner]

    # ------------------------------------------------------------------------------------ queries
    def of_type(self, type_name: str) -> list[str]:
        return [n for n, c in self.devices.items() if c.type_name == type_name]

    def forwards(self, node: str) -> bool:
        """Whether traffic between two other endpoints may pass through `node` (a switch or a
        forwarding device)."""
        return node in self._forwarders

    def members(self, instance: str) -> list[str]:
        """The devices of one nested-system instance (`node0` -> `node0.gpu0`, ..., `node0.nvme3`), in
        their inner order; instances are what `groups` lists for a nested-system entry."""
        if instance in self.devices or not any(instance in insts for insts in self.groups.values()):
            raise ConfigError(f"no nested system {instance!r} in system {self.name!r} "
                              f"(groups: {', '.join(self.groups) or 'none'})")  # fmt: skip
        return [n for n in self.devices if n.startswith(instance + ".")]

    def memory_of(self, device: str) -> MemoryPort | None:
        """The memory `device` computes from and DMAs into: its own, or the one it shares
        (`memory_of:`); None for a device without memory."""
        if device not in self.devices:
            raise ConfigError(f"no device {device!r} in system {self.name!r}")
        return self._memory_of.get(device)

    @cached_property
    def graph(self) -> nx.Graph:
        """Devices and switches as nodes, links as edges (networkx, built on first use)."""
        import networkx as nx

        g = nx.Graph()
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
        return g

    def route(self, src: str, dst: str) -> list[tuple[str, str, Link]]:
        """Hops (from, to, link) of the lowest-latency path through switches and forwarding devices only.
        Among equally short paths the rail-aligned one wins: the path whose hops carry the endpoints'
        index (gpu3 leaves a node through nic3, as NCCL pairs GPUs and NICs on DGX systems); further ties
        go to the path that names its hops first (deterministic)."""
        key = (src, dst)
        if key not in self._routes:
            if src == dst:
                self._routes[key] = []
            else:
                for n in (src, dst):
                    if n not in self.graph:
                        raise ConfigError(f"no device or switch {n!r} in system {self.name!r}")
                ok = self._forwarders | {src, dst}

                def weight(u: str, v: str, d: Mapping[str, Any]) -> float | None:
                    return d["weight"] if u in ok and v in ok else None

                import networkx as nx

                try:
                    paths = list(nx.all_shortest_paths(self.graph, src, dst, weight=weight))
                except nx.NetworkXNoPath:
                    raise self._no_route(src, dst) from None
                nodes = min(paths, key=lambda path: _rail_rank(path))
                self._routes[key] = [
                    (a, b, self.graph.edges[a, b]["link"]) for a, b in zip(nodes, nodes[1:], strict=False)
                ]
        return self._routes[key]

    def _no_route(self, src: str, dst: str) -> ConfigError:
        import networkx as nx

        try:
            nodes = nx.shortest_path(self.graph, src, dst, weight="weight")
        except nx.NetworkXNoPath:
            msg = f"no link path from {src} to {dst} in system {self.name!r}"
        else:
            stuck = next(n for n in nodes[1:-1] if n not in self._forwarders)
            msg = (f"no route from {src} to {dst} in system {self.name!r}: every path passes through a device "
                   f"that does not forward (e.g. {stuck}); link them through a switch, or name it under "
                   "`forwarding:`")  # fmt: skip
        if self.doc is not None and "links" in (self.doc.data or {}):
            return self.doc.error(("links",), msg)
        return ConfigError(msg)


# ---------------------------------------------------------------------------------------- loading
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
        sys_ = _build_system(doc)
    else:
        comp = _build_component(str(doc.data.get("type", "device")), doc)
        _check_priced(doc, (), comp)
        sys_ = System(name, {comp.name: comp}, doc=doc)
    sys_.name = name
    return sys_


def _build_component(name: str, doc: Doc, path: tuple[str, ...] = ()) -> Component:
    sub = doc.sub(path) if path else doc
    if sub.get(("abstract",)):
        raise sub.error((), "is an abstract architecture base; use a concrete preset that inherits from it")
    cls = component_type(sub)
    return cls.from_doc(name, sub)


@dataclass
class _Parts:
    """One level of a system, every name local to that level (`gpu3`, `node0.gpu3`)."""

    devices: dict[str, Component] = field(default_factory=dict)
    switches: list[str] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    forwarding: set[str] = field(default_factory=set)
    shared: dict[str, str] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def absorb(self, inner: _Parts, instance: str) -> None:
        """Add a nested instance's parts under the prefix `instance.`."""
        pre = instance + "."
        self.devices.update({pre + n: c for n, c in inner.devices.items()})
        self.switches += [pre + s for s in inner.switches]
        self.links += [replace(lk, name=f"{lk.type}:{pre}{lk.a}-{pre}{lk.b}", a=pre + lk.a, b=pre + lk.b)
                       for lk in inner.links]  # fmt: skip
        self.forwarding |= {pre + n for n in inner.forwarding}
        self.shared.update({pre + n: pre + o for n, o in inner.shared.items()})
        self.groups.update({pre + g: tuple(pre + m for m in ms) for g, ms in inner.groups.items()})


def _build_system(doc: Doc) -> System:
    parts = _elaborate(doc, "", (str(doc.file),))
    sys_ = System(Path(doc.file).stem, parts.devices, parts.links, parts.switches, doc,
                  forwarding=frozenset(parts.forwarding), groups=parts.groups, shared_memory=parts.shared)  # fmt: skip
    return sys_


def _elaborate(doc: Doc, prefix: str, stack: tuple[str, ...]) -> _Parts:
    """Build one level of a system (recursing into nested systems); `prefix` names its components."""
    doc = _fold_device_groups(doc)
    data = doc.data
    for k in data:
        if k not in SYSTEM_KEYS:
            raise doc.error((k,), f"unknown key {k!r} (known: {', '.join(SYSTEM_KEYS)})")
    groups = data.get("devices")
    if not isinstance(groups, Mapping) or not groups:
        raise doc.error(("devices",), "a system needs a non-empty 'devices' mapping")
    parts = _Parts()
    instances: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}  # nested instance -> (entry, members)
    share_at: dict[str, tuple[str, ...]] = {}  # device -> key path of its memory_of
    for group, entry in groups.items():
        path = ("devices", str(group))
        if not isinstance(entry, Mapping) or "base" not in entry:
            raise doc.error(path, "expected a mapping with 'base: PRESET' (and optional count, overrides)")
        if "." in str(group) or not str(group):
            raise doc.error(path, f"a group name cannot be empty or contain '.', got {group!r}")
        count = entry.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise doc.error(path + ("count",), f"must be a positive integer, got {count!r}")
        if count > MAX_DEVICES:  # before building names: a huge count must not hang
            raise doc.error(path + ("count",), f"must be at most {MAX_DEVICES}, got {count}")
        base = load_preset("hardware", str(entry["base"]), doc, path + ("base",))
        own = doc.sub(path)
        own = Doc({k: v for k, v in own.data.items() if k not in ENTRY_KEYS},
                  {q: o for q, o in own.origin.items() if q[:1] not in [(k,) for k in ENTRY_KEYS]}, doc.file)  # fmt: skip
        merged = merge(base, own)
        names = tuple(f"{group}{i}" if count > 1 else str(group) for i in range(count))
        parts.groups[str(group)] = names
        if merged.data.get("type") == "system":
            if "memory_of" in entry:
                raise doc.error(path + ("memory_of",), "a nested system has no memory of its own to share")
            ref = str(base.file)
            if ref in stack:
                raise doc.error(path + ("base",), f"system {entry['base']!r} contains itself "
                                f"({' -> '.join(stack + (ref,))})")  # fmt: skip
            if len(stack) > MAX_DEPTH:
                raise doc.error(path + ("base",), f"systems nest at most {MAX_DEPTH} deep "
                                f"({' -> '.join(stack + (ref,))})")  # fmt: skip
            for i, inst in enumerate(names):
                inner = _elaborate(merged, f"{prefix}{inst}.", stack + (ref,))
                if i == 0:
                    _check_size(doc, path, len(parts.devices) + count * len(inner.devices))
                parts.absorb(inner, inst)
                instances[inst] = (path, tuple(f"{inst}.{n}" for n in inner.devices))
            continue
        _check_size(doc, path, len(parts.devices) + count)
        for i, name in enumerate(names):
            if name in parts.devices:
                raise doc.error(path, f"device name {name!r} is used twice")
            parts.devices[name] = _build_component(prefix + name, merged)
            if i == 0:  # the instances of a group share their parameters
                _check_priced(doc, path, parts.devices[name])
            if "memory_of" in entry:
                target = entry["memory_of"]
                if not isinstance(target, str):
                    raise doc.error(path + ("memory_of",), f"expected a device name, got {target!r}")
                parts.shared[name] = target.replace("{i}", str(i))
                share_at[name] = path + ("memory_of",)
    switches = data.get("switches") or []
    if not isinstance(switches, list) or not all(isinstance(s, str) for s in switches):
        raise doc.error(("switches",), "expected a list of switch names")
    for s in switches:
        if s in parts.devices or s in parts.switches:
            raise doc.error(("switches",), f"switch name {s!r} is already used")
    parts.switches += switches
    parts.forwarding |= {n for n, c in parts.devices.items() if getattr(c, "FORWARDS", False)
                         and not any(n.startswith(inst + ".") for inst in instances)}  # fmt: skip
    _read_forwarding(doc, parts)
    _resolve_shared(doc, parts, share_at)
    endpoints = list(parts.devices) + parts.switches
    raw_links = data.get("links") or []
    if not isinstance(raw_links, list):
        raise doc.error(("links",), "expected a list of links")
    used = Counter()  # NVLink links in use per device, against its nvlink.links
    for lk in parts.links:
        _count_nvlinks(used, lk)
    for i in range(len(raw_links)):
        path = ("links", str(i))
        new = build_links(doc, path, endpoints, parts.devices)
        for lk in new:
            _count_nvlinks(used, lk)
        for lk in new:
            for n in (lk.a, lk.b):
                have = _nvlink_ports(parts.devices.get(n))
                if have is not None and used[n] > have:
                    raise doc.error(path + ("links",), f"{n} would use {used[n]} NVLink links in all, "
                                    f"but has {have}")  # fmt: skip
        parts.links += new
    edges = [(lk.a, lk.b) for lk in parts.links]
    linked = {n for edge in edges for n in edge}
    for n in parts.devices:
        if len(parts.devices) > 1 and n not in linked:
            raise doc.error(("devices",), f"device {n!r} has no link to the rest of the system")
    for inst, (path, members) in instances.items():
        inside = set(members) | {s for s in parts.switches if s.startswith(inst + ".")}
        if len(inside) < len(endpoints) and not any((a in inside) != (b in inside) for a, b in edges):
            raise doc.error(path, f"nested system {inst!r} has no link to the rest of the system")
    return parts


def actions_of(comp: Component) -> list[str]:
    """The energy actions a component declares it may emit (`ACTIONS`), `{dtype}` expanded over the dtypes
    its `ACTION_DTYPES` parameters name."""
    dtypes: list[str] = []
    for key in comp.ACTION_DTYPES:
        v = comp.params.get(key)
        for d in v if isinstance(v, Mapping) else [v] if v else []:
            if d not in dtypes:
                dtypes.append(d)
    out: list[str] = []
    for a in comp.ACTIONS:
        out += [a.replace("{dtype}", d) for d in dtypes] if "{dtype}" in a else [a]
    return out


def _check_priced(doc: Doc, path: tuple[str, ...], comp: Component) -> None:
    """Refuse a component that can emit an energy action it has no price for (it would cost 0 J)."""
    if not comp.ACTIONS:
        return

    def error(msg: str) -> ConfigError:
        return doc.error(path, msg) if path else ConfigError(msg, file=doc.file)

    try:
        prices = comp.energy_per_action_J()
    except ConfigError as e:
        if e.file:
            raise
        raise error(f"{comp.type_name} {comp.name!r}: {e.message}") from None
    missing = [a for a in actions_of(comp) if a not in prices]
    if missing:
        hint = "its energy block, or a power.tdp" if missing[0].startswith("flop.") else "its energy block"
        raise error(f"{comp.type_name} {comp.name!r} can emit energy action {missing[0]!r} but has no price "
                    f"for it (give one in {hint})")  # fmt: skip


def _check_size(doc: Doc, path: tuple[str, ...], n: int) -> None:
    if n > MAX_DEVICES:
        raise doc.error(path + ("count",), f"the system would have {n} devices, more than the {MAX_DEVICES} "
                        "one system may hold")  # fmt: skip


def _nvlink_ports(comp: Component | None) -> int | None:
    pp = port(comp, "nvlink") if comp is not None else None
    return pp.get("links") if pp else None


def _count_nvlinks(used: Counter, lk: Link) -> None:
    if lk.type == "nvlink" and lk.nvlinks:
        used[lk.a] += lk.nvlinks
        used[lk.b] += lk.nvlinks


def _read_forwarding(doc: Doc, parts: _Parts) -> None:
    """`forwarding: [pattern, ...]` adds forwarding devices; `forwarding: {pattern: true|false}` also
    takes it away (a CPU that should not route peer traffic)."""
    raw = doc.data.get("forwarding")
    if raw is None:
        return
    if isinstance(raw, list):
        raw = {p: True for p in raw}
    if not isinstance(raw, Mapping):
        raise doc.error(
            ("forwarding",), "expected a list of device names or patterns (or pattern: true|false)"
        )
    for i, (pat, on) in enumerate(raw.items()):
        key = ("forwarding", str(pat) if isinstance(doc.data["forwarding"], Mapping) else str(i))
        if not isinstance(on, bool):
            raise doc.error(key, f"expected true or false, got {on!r}")
        names = [n for n in parts.devices if fnmatch.fnmatchcase(n, str(pat))]
        if not names:
            sw = [s for s in parts.switches if fnmatch.fnmatchcase(s, str(pat))]
            what = "names only switches, which always forward" if sw else "matches no device"
            raise doc.error(key, f"{pat!r} {what} (devices: {', '.join(parts.devices)})")
        parts.forwarding = (parts.forwarding | set(names)) if on else (parts.forwarding - set(names))


def _resolve_shared(doc: Doc, parts: _Parts, share_at: Mapping[str, tuple[str, ...]]) -> None:
    """`memory_of: DEVICE` (`{i}` = the instance's index): the device uses that device's memory as its own;
    chains resolve to the owner."""
    for n, path in share_at.items():
        owner, seen = parts.shared[n], [n]
        while owner in parts.shared:
            if owner in seen:
                raise doc.error(path, f"memory_of forms a cycle ({' -> '.join(seen + [owner])})")
            seen.append(owner)
            owner = parts.shared[owner]
        comp = parts.devices.get(owner)
        if comp is None:
            raise doc.error(path, f"no device named {parts.shared[n]!r} (have: {', '.join(parts.devices)})")
        if comp.memory_bandwidth_Bps <= 0:
            raise doc.error(path, f"{owner!r} has no memory to share")
        parts.shared[n] = owner


def _index(name: str) -> str:
    """The instance index a name ends with (`node1.gpu3` -> '3'), or ''."""
    leaf = name.rsplit(".", 1)[-1]
    digits = leaf[len(leaf.rstrip("0123456789")) :]
    return digits


def _rail_rank(path: list[str]) -> tuple[int, list[str]]:
    """Sort key of an equal-latency path: more hops sharing an endpoint's index first, then by names."""
    ends = {_index(path[0]), _index(path[-1])} - {""}
    return (-sum(_index(n) in ends for n in path[1:-1]), path)
