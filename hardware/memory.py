"""Memory descriptions shared by every device that owns DRAM (HBM, GDDR, DDR, LPDDR).

A `memory:` block states capacity, bandwidth and type, or names a DRAM preset (`dram: hbm3e, count: 6`)
from which those three derive: capacity and peak bandwidth times the count of parts, type from the part's
technology. Keys written in the same file as `dram:`, or set on the command line, win over the derived
ones; values inherited from a `base:` preset do not (a derived preset that names a DRAM part gets its
numbers).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from hardware.dram import DRAM
from simcore.component import DOC_EXPANDERS
from simcore.config import MAX_INT, Doc, Param, Schema, count, load_preset, nonneg, positive, resolve_ref
from simcore.units import SI

MEMORY_TYPES = ("hbm2", "hbm2e", "hbm3", "hbm3e", "gddr6", "gddr6x", "lpddr4", "lpddr5", "ddr4", "ddr5",
                "lpddr5x", "gddr7")  # fmt: skip

MEMORY_SCHEMA = {
    "type": Param("DRAM technology (selects energy per bit)", type=str, choices=MEMORY_TYPES),
    "capacity": positive("capacity usable for tensors", "bytes"),
    "bandwidth": positive("peak bandwidth (spec sheet)", "bandwidth"),
    "latency": nonneg("load-to-use latency of a DRAM access", "time", default=500e-9),
    "dram": Param(
        "DRAM preset (or YAML path) the memory is built from; capacity, bandwidth and type "
        "derive from it unless written here",
        type=str,
        default=None,
    ),  # fmt: skip
    "count": count("parts of that DRAM preset: HBM stacks, GDDR chips, DIMMs", default=None),
}

PCIE_SCHEMA = {
    "generation": Param("PCIe generation", type=int, choices=(3, 4, 5, 6)),
    "lanes": positive("lane count", type=int),
}

POWER_SCHEMA = {
    "tdp": positive("thermal design power", "power", default=None),
    "idle": nonneg("idle (static) power drawn whenever the device is on", "power", default=0.0),
}


def load_dram(ref: object, doc: Doc, path: tuple[str, ...]) -> DRAM:
    """The DRAM part a document names at `path` (a preset name or a YAML path), validated; anything else
    is a ConfigError at that key."""
    if not isinstance(ref, str) or not ref:
        raise doc.error(path, f"expected a DRAM preset name or a YAML path, got {ref!r}")
    part = load_preset("hardware", resolve_ref("hardware", ref, doc, path))
    kind = part.data.get("type") if isinstance(part.data, Mapping) else None
    if kind != "dram":
        raise doc.error(path, f"{ref!r} is a {kind or 'untyped'} preset, not a DRAM part (type: dram)")
    if part.data.get("abstract"):
        raise doc.error(path, f"{ref!r} is an abstract DRAM base; name a concrete part")
    return DRAM.from_doc(ref, part)


def parts_count(mem: Mapping[str, Any], doc: Doc, path: tuple[str, ...]) -> int:
    """The `count` next to a `dram:` key: an integer in [1, MAX_INT] (1 when absent)."""
    n = mem.get("count", 1)
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_INT:
        raise doc.error(path, f"expected a count of DRAM parts from 1 to {MAX_INT}, got {n!r}")
    return n


def expand_dram_memory(schema: Schema, doc: Doc) -> Doc:
    """Fill a `memory: {dram: NAME, count: N}` block's capacity, bandwidth (spec peak: the device applies
    its own efficiency) and type from the DRAM preset, unless written beside it (see the module doc);
    their origin is the `dram:` line. Documents of
    types whose memory block is not MEMORY_SCHEMA, and blocks without `dram:`, pass unchanged."""
    if schema.get("memory") is not MEMORY_SCHEMA or not isinstance(doc.data, Mapping):
        return doc
    mem = doc.data.get("memory")
    if not isinstance(mem, Mapping) or mem.get("dram") is None:
        return doc
    part = load_dram(mem["dram"], doc, ("memory", "dram"))
    n = parts_count(mem, doc, ("memory", "count"))
    tech = part.params["technology"]
    if tech not in MEMORY_TYPES:
        raise doc.error(("memory", "dram"), f"DRAM technology {tech!r} has no energy entry (known: "
                        f"{', '.join(MEMORY_TYPES)})")  # fmt: skip
    derived = {"capacity": SI(part.memory_capacity_B * n), "bandwidth": SI(part.peak_Bps * n), "type": tech}
    data = copy.deepcopy(dict(doc.data))
    data["memory"] = dict(mem)
    origin = dict(doc.origin)
    at = doc.where(("memory", "dram"))
    for key, value in derived.items():
        written = doc.where(("memory", key))[0]
        if key not in mem or (written != at[0] and not written.startswith("--")):
            data["memory"][key] = value
            origin[("memory", key)] = at
    return Doc(data, origin, doc.file)


DOC_EXPANDERS.append(expand_dram_memory)
