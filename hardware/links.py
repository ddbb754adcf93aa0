"""Links between devices: PCIe, NVLink, Ethernet/InfiniBand-like generic links.

A link is full duplex: two flow resources, one per direction, each with the per-direction bandwidth.
Per-direction rates come from the standard (lanes × transfer rate × encoding) times a protocol
efficiency that is a documented parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simcore.config import Doc, Param, nonneg, positive, validate

# PCIe: GT/s per lane and line-encoding efficiency (PCI-SIG base specifications 3.0-6.0).
PCIE_GTPS = {3: 8.0, 4: 16.0, 5: 32.0, 6: 64.0}
PCIE_ENCODING = {3: 128 / 130, 4: 128 / 130, 5: 128 / 130, 6: 242 / 256}  # 6.0: FLIT mode with FEC/CRC
# NVLink: per-link, per-direction GB/s (NVIDIA V100/A100/H100/B200 whitepapers: NVLink2 25 GB/s,
# NVLink3 25 GB/s (12 links = 600 GB/s bidirectional), NVLink4 25 GB/s (18 links = 900 GB/s), NVLink5 50 GB/s).
NVLINK_GBPS_PER_DIR = {2: 25.0, 3: 25.0, 4: 25.0, 5: 50.0}


def pcie_raw_Bps(generation: int, lanes: int) -> float:
    """Per-direction data rate after line encoding, before packet (TLP/DLLP) overhead."""
    return PCIE_GTPS[generation] * 1e9 / 8 * PCIE_ENCODING[generation] * lanes


LINK_SCHEMA: dict[str, Any] = {
    "type": Param("link kind", type=str, choices=("pcie", "nvlink", "ethernet", "infiniband", "generic")),
    "between": Param("the two endpoints (device or switch names; `gpu*` expands to all)", type=list),
    "generation": Param("PCIe or NVLink generation", default=None, type=int),
    "lanes": Param("PCIe lanes", default=None, type=int),
    "links": Param("NVLink links bundled between the two endpoints", default=None, type=int),
    "bandwidth": positive(
        "per-direction bandwidth; derived from generation and width if omitted", "bandwidth", default=None
    ),  # fmt: skip
    "efficiency": Param(
        "achievable fraction of the per-direction rate (protocol overhead)", default=None, minimum=0
    ),  # fmt: skip
    "latency": nonneg("one-way latency of a transfer (DMA setup + hop)", "time", default=None),
    "energy_per_bit": nonneg(
        "energy per bit moved; default from the energy table", "energy_per_bit", default=None
    ),  # fmt: skip
}

# Documented defaults per link kind. PCIe efficiency: 256-byte max payload per TLP with ~24-30 bytes
# of TLP/DLLP overhead gives ~0.9 of the encoded rate; host-pinned cudaMemcpy on A100 PCIe4 x16
# measures ~24-26 GB/s of 31.5 (shared/calibration/links_a100.csv) -> 0.8 used as the end-to-end figure.
# NVLink: NCCL/p2p copies reach ~0.9 of the per-direction rate (links_a100.csv, p2pBandwidthLatencyTest).
LINK_DEFAULTS = {
    "pcie": {"efficiency": 0.8, "latency": 2e-6},
    "nvlink": {"efficiency": 0.9, "latency": 1e-6},
    "ethernet": {"efficiency": 0.9, "latency": 5e-6},
    "infiniband": {"efficiency": 0.9, "latency": 2e-6},
    "generic": {"efficiency": 1.0, "latency": 1e-6},
}


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

    @property
    def label(self) -> str:
        return f"{self.type}:{self.a}<->{self.b}"


def build_links(doc: Doc, path: tuple[str, ...], endpoints: list[str]) -> list[Link]:
    """Validate one `links:` entry and expand wildcards into concrete point-to-point links."""
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
    peak = p["bandwidth"]
    if peak is None:
        if kind == "pcie":
            if p["generation"] not in PCIE_GTPS or not p["lanes"]:
                raise doc.error(path, "a pcie link needs generation (3-6) and lanes, or a bandwidth")
            peak = pcie_raw_Bps(p["generation"], p["lanes"])
        elif kind == "nvlink":
            if p["generation"] not in NVLINK_GBPS_PER_DIR or not p["links"]:
                raise doc.error(path, "an nvlink link needs generation (2-5) and links, or a bandwidth")
            peak = NVLINK_GBPS_PER_DIR[p["generation"]] * 1e9 * p["links"]
        else:
            raise doc.error(path, f"a {kind} link needs a bandwidth")
    dflt = LINK_DEFAULTS[kind]
    eff = p["efficiency"] if p["efficiency"] is not None else dflt["efficiency"]
    if not 0 < eff <= 1:
        raise doc.error(path + ("efficiency",), f"must be in (0, 1], got {eff}")
    lat = p["latency"] if p["latency"] is not None else dflt["latency"]
    file, line = doc.where(path)
    source = f"{file}:{line}" if line else file
    links = []
    for a in sides[0]:
        for b in sides[1]:
            if a == b:
                continue
            links.append(
                Link(
                    f"{kind}:{a}-{b}",
                    kind,
                    a,
                    b,
                    peak * eff,
                    lat,
                    p["energy_per_bit"],
                    peak,
                    p["generation"],
                    source,
                )
            )
    if not links:
        raise doc.error(path, "link connects nothing (both ends are the same device)")
    return links


def _expand(pattern: str, names: list[str]) -> list[str]:
    import fnmatch

    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def link_energy_per_bit_J(link: Link) -> float:
    """The link's own figure, else the energy table's for its kind and generation."""
    if link.energy_per_bit_J is not None:
        return link.energy_per_bit_J
    from simcore.energy import energy_table

    table = energy_table()
    key = f"{link.type}{link.generation}" if link.generation else link.type
    if key not in table.link_J_per_bit_by_type:
        key = "pcie5"  # a long-reach SerDes of today's rates stands in for links the table lacks
    return table.link_J_per_bit(key)
