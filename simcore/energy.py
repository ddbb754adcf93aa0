"""Energy per action, Accelergy-style: an op's action counts times a table of joules per action.

The tables live in `configs/energy/*.yaml`, each number with its published source. They are stated
at one technology node (45 nm, Horowitz ISSCC'14) and rescaled to the node a component states, so a
7 nm accelerator and a 45 nm textbook example share one set of numbers.

Action names used across the project (counts in an `OpCost.actions` mapping):
`mac.<dtype>`, `flop.<dtype>`, `dram.byte`, `l2.byte`, `smem.byte`, `sram.read.byte`,
`sram.write.byte`, `regfile.byte`, `link.bit`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

from simcore import units
from simcore.config import CONFIG_ROOT, Doc, load_yaml
from simcore.errors import ConfigError

ENERGY_DIR = CONFIG_ROOT / "energy"
PJ = 1e-12

#: action names (besides `mac.<dtype>` / `flop.<dtype>`) that the energy model knows.
ACTIONS = (
    "dram.byte",
    "l2.byte",
    "smem.byte",
    "sram.read.byte",
    "sram.write.byte",
    "regfile.byte",
    "link.bit",
)


def _frozen(d: Mapping) -> Mapping:
    return MappingProxyType(dict(d))


def _num(doc: Doc, path: tuple[str, ...], positive: bool = True, value: object = None) -> float:
    v = doc.get(path) if value is None else value
    if isinstance(v, bool) or not isinstance(v, int | float) or (positive and v <= 0):
        raise doc.error(path, f"expected a positive number, got {v!r}")
    return float(v)


# ------------------------------------------------------------------------------------ node scaling


def _node_energy_factors(doc: Doc) -> dict[float, float]:
    """Relative energy per op at each tabulated node (unnormalized; only ratios matter)."""
    out: dict[float, float] = {}
    for node, row in (doc.get(("stillmaker_baas_2017",)) or {}).items():
        p = ("stillmaker_baas_2017", str(node))
        a = row.get("a") if isinstance(row, Mapping) else None
        if not (isinstance(a, list) and len(a) == 3):
            raise doc.error(p, "expected {a: [a2, a1, a0], vdd: V}")
        v = _num(doc, p + ("vdd",))
        e = a[0] * v * v + a[1] * v + a[2]
        if e <= 0:
            raise doc.error(p, f"energy factor {e:g} <= 0 at {v} V")
        out[float(node)] = e
    steps = doc.get(("foundry_steps",)) or {}
    pending = dict(steps)
    while pending:  # resolve chains (3 nm relative to 5 nm relative to 7 nm) in any order
        progressed = False
        for node, row in list(pending.items()):
            ref = float(row["relative_to"])
            if ref in out:
                out[float(node)] = out[ref] * _num(doc, ("foundry_steps", str(node), "factor"))
                del pending[node]
                progressed = True
        if not progressed:
            node = next(iter(pending))
            raise doc.error(("foundry_steps", str(node), "relative_to"), "refers to an unknown node")
    return out


def _loglog(x: float, xs: list[float], ys: list[float]) -> float:
    """Piecewise-linear interpolation in log-log space, extending the end segments outside."""
    if len(xs) == 1:
        return ys[0]
    lx = math.log(x)
    i = 1
    while i < len(xs) - 1 and lx > math.log(xs[i]):
        i += 1
    x0, x1, y0, y1 = math.log(xs[i - 1]), math.log(xs[i]), math.log(ys[i - 1]), math.log(ys[i])
    return math.exp(y0 + (y1 - y0) * (lx - x0) / (x1 - x0))


# ----------------------------------------------------------------------------------------- table


@dataclass(frozen=True)
class EnergyTable:
    """Joules per action at one technology node. Built by `energy_table()`; immutable."""

    node_nm: float
    mac_J_by_dtype: Mapping[str, float]
    #: (size_B, read J/B, write J/B), ascending by size
    sram_anchors: tuple[tuple[float, float, float], ...]
    regfile_J_per_B: float
    dram_J_per_bit_by_type: Mapping[str, float]
    link_J_per_bit_by_type: Mapping[str, float]
    #: node (nm) -> relative energy per op, from node_scaling.yaml
    node_factors: Mapping[float, float] = field(repr=False, default_factory=dict)
    #: energy of a clocked but idle PE-cycle, as a fraction of a MAC of the same dtype
    pe_idle_fraction: float = 0.0

    # compute -----------------------------------------------------------------------------------
    def mac_J(self, dtype: str) -> float:
        """One multiply-accumulate (multiply + add into the accumulator) in `dtype`."""
        try:
            return self.mac_J_by_dtype[dtype]
        except KeyError:
            known = ", ".join(self.mac_J_by_dtype)
            raise ConfigError(f"no MAC energy for dtype {dtype!r} (known: {known})") from None

    def flop_J(self, dtype: str) -> float:
        """A MAC is two FLOPs."""
        return self.mac_J(dtype) / 2.0

    def pe_idle_J(self, dtype: str) -> float:
        """A PE clocked for a cycle without doing a MAC (systolic fill/drain, unused rows/columns)."""
        return self.pe_idle_fraction * self.mac_J(dtype)

    # memories ----------------------------------------------------------------------------------
    def sram_J_per_byte(self, size_B: float, write: bool = False) -> float:
        """Per-byte access energy of an SRAM array of `size_B` bytes (log-log between anchors)."""
        if size_B <= 0:
            raise ValueError(f"SRAM size must be > 0, got {size_B!r}")
        xs = [a[0] for a in self.sram_anchors]
        ys = [a[2] if write else a[1] for a in self.sram_anchors]
        return _loglog(size_B, xs, ys)

    def regfile_J_per_byte(self) -> float:
        return self.regfile_J_per_B

    def dram_J_per_byte(self, mem_type: str) -> float:
        return 8.0 * self.dram_J_per_bit(mem_type)

    def dram_J_per_bit(self, mem_type: str) -> float:
        key = mem_type.lower().replace("-", "").replace("_", "")
        try:
            return self.dram_J_per_bit_by_type[key]
        except KeyError:
            known = ", ".join(self.dram_J_per_bit_by_type)
            raise ConfigError(f"no energy for memory type {mem_type!r} (known: {known})") from None

    def link_J_per_bit(self, link_type: str) -> float:
        key = link_type.lower().replace("-", "_")
        key = {"nvlinkc2c": "nvlink_c2c", "onpackage": "on_package"}.get(key.replace("_", ""), key)
        try:
            return self.link_J_per_bit_by_type[key]
        except KeyError:
            known = ", ".join(self.link_J_per_bit_by_type)
            raise ConfigError(f"no energy for link type {link_type!r} (known: {known})") from None

    # node scaling ------------------------------------------------------------------------------
    def node_factor(self, node_nm: float) -> float:
        """Energy per op at `node_nm` relative to this table's node (log-log between nodes)."""
        return self._rel(node_nm) / self._rel(self.node_nm)

    def _rel(self, node_nm: float) -> float:
        if node_nm <= 0:
            raise ValueError(f"technology node must be > 0 nm, got {node_nm!r}")
        nodes = sorted(self.node_factors)
        if node_nm in self.node_factors:
            return self.node_factors[node_nm]
        if not nodes[0] <= node_nm <= nodes[-1]:
            raise ConfigError(
                f"technology node {node_nm:g} nm outside the scaling table ({nodes[0]:g}-{nodes[-1]:g} nm)"
            )
        return _loglog(node_nm, nodes, [self.node_factors[n] for n in nodes])

    def scaled(self, node_nm: float) -> EnergyTable:
        """The table moved to `node_nm`: logic and SRAM energies scale, DRAM and links do not
        (those are set by the memory / link generation, not by the accelerator's process)."""
        if node_nm == self.node_nm:
            return self
        f = self.node_factor(node_nm)
        return replace(
            self,
            node_nm=float(node_nm),
            mac_J_by_dtype=_frozen({k: v * f for k, v in self.mac_J_by_dtype.items()}),
            sram_anchors=tuple((s, r * f, w * f) for s, r, w in self.sram_anchors),
            regfile_J_per_B=self.regfile_J_per_B * f,
        )

    # convenience -------------------------------------------------------------------------------
    def compute_actions(self) -> dict[str, float]:
        """`mac.<dtype>` and `flop.<dtype>` prices for every dtype in the table."""
        out: dict[str, float] = {}
        for dt, j in self.mac_J_by_dtype.items():
            out[f"mac.{dt}"] = j
            out[f"flop.{dt}"] = j / 2.0
        return out


def load_energy_table(directory: str | Path = ENERGY_DIR) -> EnergyTable:
    """Read compute/sram/dram/links/node_scaling YAMLs from `directory` (errors name file and key)."""
    d = Path(directory)
    compute, sram = load_yaml(d / "compute.yaml"), load_yaml(d / "sram.yaml")
    dram, links, scaling = (
        load_yaml(d / "dram.yaml"),
        load_yaml(d / "links.yaml"),
        load_yaml(d / "node_scaling.yaml"),
    )
    node = _num(compute, ("node_nm",))
    if _num(sram, ("node_nm",)) != node:
        raise sram.error(("node_nm",), f"SRAM table node must match compute.yaml ({node:g} nm)")
    mac = {}
    for dt in compute.get(("mac",)) or {}:
        p = ("mac", dt)
        mac[dt] = (_num(compute, p + ("mult_pJ",)) + _num(compute, p + ("add_pJ",))) * PJ
    anchors = []
    for i, a in enumerate(sram.get(("anchors",)) or []):
        p = ("anchors", str(i))
        try:
            size = units.parse(a.get("size"), "bytes")
        except (ValueError, AttributeError) as e:
            raise sram.error(p + ("size",), str(e)) from None
        rd = _num(sram, p + ("read_pJ_per_byte",), value=a.get("read_pJ_per_byte", "missing"))
        wr = _num(sram, p + ("write_pJ_per_byte",), value=a.get("write_pJ_per_byte", "missing"))
        anchors.append((size, rd * PJ, wr * PJ))
    if not anchors:
        raise sram.error(("anchors",), "need at least one SRAM anchor")
    anchors.sort()
    return EnergyTable(
        node_nm=node,
        mac_J_by_dtype=_frozen(mac),
        sram_anchors=tuple(anchors),
        regfile_J_per_B=_num(compute, ("regfile_pJ_per_byte",)) * PJ,
        dram_J_per_bit_by_type=_frozen({k: _num(dram, (k,)) * PJ for k in dram.data}),
        link_J_per_bit_by_type=_frozen({k: _num(links, (k,)) * PJ for k in links.data}),
        node_factors=_frozen(_node_energy_factors(scaling)),
        pe_idle_fraction=_num(compute, ("pe_idle_fraction_of_mac",), positive=False),
    )


def energy_table(node_nm: float | None = None) -> EnergyTable:
    """The shipped table, at its own node (None) or rescaled to `node_nm`; cached."""
    return _base_table() if node_nm is None else _scaled_table(float(node_nm))


@lru_cache(maxsize=32)
def _scaled_table(node_nm: float) -> EnergyTable:
    return _base_table().scaled(node_nm)


@lru_cache(maxsize=1)
def _base_table() -> EnergyTable:
    return load_energy_table(ENERGY_DIR)


# ------------------------------------------------------------------------------------- breakdown


@dataclass(frozen=True)
class EnergyBreakdown:
    """Joules per action plus static energy; `unpriced` lists counted actions that had no price."""

    by_action_J: Mapping[str, float]
    static_J: float = 0.0
    unpriced: tuple[str, ...] = ()

    @property
    def dynamic_J(self) -> float:
        return sum(self.by_action_J.values())

    @property
    def total_J(self) -> float:
        return self.dynamic_J + self.static_J


def energy_breakdown(actions: Mapping[str, float], per_action_J: Mapping[str, float],
                     static_W: float = 0.0, duration_s: float = 0.0) -> EnergyBreakdown:  # fmt: skip
    """Action counts x joules per action (+ static power x time): Accelergy's energy rule."""
    by: dict[str, float] = {}
    unpriced = []
    for name, count in actions.items():
        price = per_action_J.get(name)
        if price is None:
            if count:
                unpriced.append(name)
            continue
        by[name] = count * price
    return EnergyBreakdown(_frozen(by), static_W * duration_s, tuple(sorted(unpriced)))
