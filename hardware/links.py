"""Links between devices: PCIe, NVLink, Ethernet/InfiniBand-like generic links.

A link is full duplex: two flow resources, one per direction, each with the per-direction bandwidth.
Per-direction rates come from the standard (lanes × transfer rate × encoding) times a protocol
efficiency that is a documented parameter.

A link attaches to the ports its devices document (`pcie: {generation, lanes}`, `nvlink: {generation,
links}`): a PCIe link faster or wider than a device's port, or an NVLink link of another generation or
with more links than the device has, is refused. A link that omits generation, lanes or links takes them
from the ports of its ends (PCIe trains to the highest common generation and the narrowest width; NVLink
generations must agree), so `{type: pcie, between: [gpu0, pcie-sw0]}` is a Gen4 x16 link on an A100.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from simcore.config import Doc, Param, count, fraction, nonneg, positive, validate
from simcore.energy import energy_table

# PCIe: GT/s per lane and line-encoding efficiency (PCI-SIG base specifications 3.0-6.0).
PCIE_GTPS = {3: 8.0, 4: 16.0, 5: 32.0, 6: 64.0}
PCIE_ENCODING = {3: 128 / 130, 4: 128 / 130, 5: 128 / 130, 6: 242 / 256}  # 6.0: FLIT mode with FEC/CRC
# NVLink: per-link, per-direction GB/s (NVIDIA V100/A100/H100/B200 whitepapers: NVLink2 25 GB/s,
# NVLink3 25 GB/s (12 links = 600 GB/s bidirectional), NVLink4 25 GB/s (18 links = 900 GB/s), NVLink5 50 GB/s).
NVLINK_GBPS_PER_DIR = {2: 25.0, 3: 25.0, 4: 25.0, 5: 50.0}


def pcie_raw_Bps(generation: int, lanes: int) -> float:
    """Per-direction data rate after line encoding, before packet (TLP/DLLP) overhead."""
    return PCIE_GTPS[generation] * 1e9 / 8 * PCIE_ENCODING[generation] * lanes


@dataclass(frozen=True)
class Link:
    name: str
    type: str
    a: str
    b: str
    bw_Bps: float  # achievable per direction
    latency_s: float
    energy_per_bit_J: float | None
    peak_Bps: float
    generation: int | None = None
    source: str = ""  # file:line of the `links:` entry it came from
    lanes: int | None = None  # PCIe width
    nvlinks: int | None = None  # NVLink links bundled (counted against the devices' NVLink ports)

    @property
    def label(self) -> str:
        return f"{self.type}:{self.a}<->{self.b}"


def build_links(doc: Doc, path: tuple[str, ...], endpoints: list[str],
                devices: Mapping[str, Any] | None = None) -> list[Link]:  # fmt: skip
    """Validate one `links:` entry and expand wildcards into concrete point-to-point links.

    `devices` (name -> Component) gives the ports each end documents; switches have none.
    """
    p = validate(doc, LINK_SCHEMA, path)
    kind = p["type"]
    between = p["between"]
    if len(between) != 2:
        raise doc.error(path + ("between",), "expected exactly two endpoints")
    sides = []
    for i, pat in enumerate(between):
        names = _expand(str(pat), endpoints)
        if not names:
            raise doc.error(path + ("between", str(i)),
                            f"no device or switch named {pat!r} (have: {', '.join(endpoints)})")  # fmt: skip
        sides.append(names)
    lt = LINK_TYPES[kind]
    eff = p["efficiency"] if p["efficiency"] is not None else lt.efficiency
    if not 0 < eff <= 1:
        raise doc.error(path + ("efficiency",), f"must be in (0, 1], got {eff}")
    lat = p["latency"] if p["latency"] is not None else lt.latency_s
    file, line = doc.where(path)
    source = f"{file}:{line}" if line else file
    links = []
    for a in sides[0]:
        for b in sides[1]:
            if a == b:
                continue
            ends = [(i, n, devices[n]) for i, n in enumerate((a, b)) if devices and n in devices]
            for i, n, comp in ends:
                if lt.port is not None and lt.port not in comp.PORTS:
                    raise doc.error(path + ("between", str(i)), f"{comp.type_name} {n!r} has no {lt.port} port for "
                                    f"a {kind} link (its ports: {', '.join(comp.PORTS) or 'none'})")  # fmt: skip
            peak, gen, lanes, nvlinks = lt.rate(doc, path, p, ends)
            links.append(Link(f"{kind}:{a}-{b}", kind, a, b, peak * eff, lat, p["energy_per_bit"], peak, gen,
                              source, lanes, nvlinks))  # fmt: skip
    if not links:
        raise doc.error(path, "link connects nothing (both ends are the same device)")
    return links


def port(comp: Any, kind: str) -> Mapping[str, Any] | None:
    """The `pcie` or `nvlink` port block a component's type documents (None when its schema has none)."""
    if kind not in getattr(comp, "SCHEMA", {}):
        return None
    block = comp.params.get(kind)
    return block if isinstance(block, Mapping) else {}


def _where(comp: Any, key: tuple[str, ...]) -> str:
    if getattr(comp, "doc", None) is None:
        return ".".join(key)
    file, line = comp.doc.where(key)
    return f"{file}:{line}: {'.'.join(key)}" if line else f"{file}: {'.'.join(key)}"


Ends = list[tuple[int, str, Any]]  # (position in `between`, name, Component) of a link's device ends
Rate = tuple[float, int | None, int | None, int | None]  # peak B/s per direction, generation, lanes, NVLinks


class LinkType:
    """A kind of link: its documented defaults and how its per-direction rate follows from its entry and
    the ports of its device ends. A new kind is a subclass registered under its `type:` name."""

    name: ClassVar[str] = ""
    port: ClassVar[str | None] = None  # the port a device needs to attach it (None: any device)
    efficiency: ClassVar[float] = 1.0  # achievable fraction of the per-direction rate
    latency_s: ClassVar[float] = 1e-6  # one-way latency of a transfer over it

    def rate(self, doc: Doc, path: tuple[str, ...], p: dict[str, Any], ends: Ends) -> Rate:
        if p["bandwidth"] is None:
            raise doc.error(path, f"a {self.name} link needs a bandwidth")
        return p["bandwidth"], p["generation"], None, None


LINK_TYPES: dict[str, LinkType] = {}


def link_type(cls: type[LinkType]) -> type[LinkType]:
    LINK_TYPES[cls.name] = cls()
    return cls


@link_type
class Pcie(LinkType):
    """PCIe: lanes × transfer rate × line encoding. Efficiency: 256-byte max payload per TLP with ~24-30
    bytes of TLP/DLLP overhead gives ~0.9 of the encoded rate; host-pinned cudaMemcpy on A100 PCIe4 x16
    measures ~24-26 GB/s of 31.5 (shared/calibration/links_a100.csv) -> 0.8 end to end."""

    name, port, efficiency, latency_s = "pcie", "pcie", 0.8, 2e-6

    def rate(self, doc: Doc, path: tuple[str, ...], p: dict[str, Any], ends: Ends) -> Rate:
        peak, gen, lanes = p["bandwidth"], p["generation"], p["lanes"]
        ports = []
        for _, name, comp in ends:
            pp = port(comp, "pcie")
            if not pp or not pp.get("generation") or not pp.get("lanes"):
                continue  # the device does not state its PCIe port
            if gen is not None and gen > pp["generation"]:
                raise doc.error(path + ("generation",), f"a PCIe Gen{gen} link is faster than {name}'s "
                                f"Gen{pp['generation']} port ({_where(comp, ('pcie', 'generation'))})")  # fmt: skip
            if lanes is not None and lanes > pp["lanes"]:
                raise doc.error(path + ("lanes",), f"x{lanes} is wider than {name}'s x{pp['lanes']} PCIe port "
                                f"({_where(comp, ('pcie', 'lanes'))})")  # fmt: skip
            ports.append(pp)
        if gen is None and ports:
            gen = min(pp["generation"] for pp in ports)  # link training: highest common generation
        if lanes is None and ports:
            lanes = min(pp["lanes"] for pp in ports)  # ... and the narrower width
        if peak is None:
            if gen not in PCIE_GTPS or not lanes:
                raise doc.error(path, "a pcie link needs generation (3-6) and lanes, or a bandwidth "
                                "(or a device end whose pcie port states them)")  # fmt: skip
            peak = pcie_raw_Bps(gen, lanes)
        return peak, gen, lanes, None


@link_type
class NVLink(LinkType):
    """NVLink: links × the generation's per-link rate. NCCL/p2p copies reach ~0.9 of the per-direction
    rate (links_a100.csv, p2pBandwidthLatencyTest)."""

    name, port, efficiency, latency_s = "nvlink", "nvlink", 0.9, 1e-6

    def rate(self, doc: Doc, path: tuple[str, ...], p: dict[str, Any], ends: Ends) -> Rate:
        peak, gen, nvlinks = p["bandwidth"], p["generation"], p["links"]
        ports, per_link = [], []
        for i, name, comp in ends:
            pp = port(comp, "nvlink")
            if pp is None:
                continue  # the device's type documents no NVLink ports
            if not pp.get("generation") or not pp.get("links"):
                raise doc.error(path + ("between", str(i)),
                                f"{name} has no NVLink ports (its preset states no nvlink generation and links)")  # fmt: skip
            if gen is not None and gen != pp["generation"]:
                raise doc.error(path + ("generation",), f"NVLink {gen} does not match {name}'s NVLink "
                                f"{pp['generation']} ports ({_where(comp, ('nvlink', 'generation'))})")  # fmt: skip
            if nvlinks is not None and nvlinks > pp["links"]:
                raise doc.error(path + ("links",), f"{nvlinks} links but {name} has {pp['links']} NVLink links "
                                f"({_where(comp, ('nvlink', 'links'))})")  # fmt: skip
            ports.append(pp)
            if pp.get("bandwidth"):  # parts whose links run below the generation's rate (GA102 bridges)
                per_link.append(pp["bandwidth"] / pp["links"])
        if gen is None and ports:
            gens = sorted({pp["generation"] for pp in ports})
            if len(gens) > 1:
                raise doc.error(path, f"the ends have NVLink generations {gens[0]} and {gens[1]}, which do not "
                                "connect")  # fmt: skip
            gen = gens[0]
        if nvlinks is None and ports:
            nvlinks = min(pp["links"] for pp in ports)
        if peak is None:
            if gen not in NVLINK_GBPS_PER_DIR or not nvlinks:
                raise doc.error(path, "an nvlink link needs generation (2-5) and links, or a bandwidth "
                                "(or a device end whose nvlink port states them)")  # fmt: skip
            peak = min([NVLINK_GBPS_PER_DIR[gen] * 1e9] + per_link) * nvlinks
        return peak, gen, None, nvlinks


@link_type
class Ethernet(LinkType):
    name, port, efficiency, latency_s = "ethernet", "network", 0.9, 5e-6


@link_type
class InfiniBand(LinkType):
    name, port, efficiency, latency_s = "infiniband", "network", 0.9, 2e-6


@link_type
class Generic(LinkType):
    name, efficiency, latency_s = "generic", 1.0, 1e-6


LINK_SCHEMA: dict[str, Any] = {
    "type": Param("link kind", type=str, choices=tuple(LINK_TYPES)),
    "between": Param("the two endpoints (device or switch names; `gpu*` expands to all)", type=list),
    "generation": count("PCIe or NVLink generation; default: from the device ends' ports", default=None),
    "lanes": count("PCIe lanes; default: the narrower device port", default=None),
    "links": count("NVLink links bundled between the two endpoints; default: the device's", default=None),
    "bandwidth": positive(
        "per-direction bandwidth; derived from generation and width if omitted", "bandwidth", default=None
    ),  # fmt: skip
    "efficiency": fraction("achievable fraction of the per-direction rate (protocol overhead)", default=None),
    "latency": nonneg("one-way latency of a transfer (DMA setup + hop)", "time", default=None),
    "energy_per_bit": nonneg(
        "energy per bit moved; default from the energy table", "energy_per_bit", default=None
    ),  # fmt: skip
}


def _expand(pattern: str, names: list[str]) -> list[str]:
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def link_energy_per_bit_J(link: Link) -> float:
    """The link's own figure, else the energy table's for its kind and generation."""
    if link.energy_per_bit_J is not None:
        return link.energy_per_bit_J
    table = energy_table()
    key = f"{link.type}{link.generation}" if link.generation else link.type
    if key not in table.link_J_per_bit_by_type:
        key = "pcie5"  # a long-reach SerDes of today's rates stands in for links the table lacks
    return table.link_J_per_bit(key)
