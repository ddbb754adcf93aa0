"""The component protocol: the base class, the type registry, and the cost record every hardware model returns.

A component is a pure cost function of an op: `op_cost(op) -> OpCost`, unit-testable without SimPy.
New hardware is one new file in `hardware/` with a `@register("type-name")` class; the engine never branches on type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from simcore.config import Doc, Schema, validate
from simcore.errors import ConfigError
from simcore.ops import Chain, Op

COMPONENT_TYPES: dict[str, type[Component]] = {}
#: rewrites of a component's document before it is validated, registered by hardware modules: each takes
#: the component type's schema and the document (e.g. `memory: {dram: hbm3, count: 5}` filled in from the
#: DRAM preset, hardware/memory.py)
DOC_EXPANDERS: list[Callable[[Schema, Doc], Doc]] = []


def register(type_name: str) -> Callable[[type[Component]], type[Component]]:
    def deco(cls: type[Component]) -> type[Component]:
        cls.type_name = type_name
        COMPONENT_TYPES[type_name] = cls
        return cls

    return deco


@dataclass(frozen=True, slots=True, eq=False)  # identity-hashed: cached costs are shared objects
class OpCost:
    """What running one op on one component costs.

    `dram_bytes` is the traffic to the component's main memory; the engine shares that memory's
    bandwidth among concurrent ops and transfers. `actions` are counts for the energy model
    (e.g. {"mac.bf16": 1e9, "dram.byte": 4e6}). `detail` carries model-specific figures (tiles, waves,
    cycles, utilization).
    """

    duration_s: float
    bound: str
    dram_bytes: float = 0.0
    actions: Mapping[str, float] = field(default_factory=dict)
    detail: Mapping[str, Any] = field(default_factory=dict)


class Component:
    """A piece of hardware built from validated parameters (SI floats)."""

    type_name: ClassVar[str] = ""
    SCHEMA: ClassVar[Schema] = {}
    #: op kind -> method name computing its OpCost; subclasses extend.
    COSTS: ClassVar[dict[str, str]] = {}
    #: whether traffic between two other endpoints may pass through this device (a CPU's root complex);
    #: a system's `forwarding:` key overrides it per device (simcore/system.py)
    #: the kinds of link it has ports for (pcie, nvlink, network); a `generic` link attaches to anything
    PORTS: ClassVar[tuple[str, ...]] = ()
    FORWARDS: ClassVar[bool] = False
    #: energy actions the costs may emit, `{dtype}` standing for each dtype named by the parameters in
    #: ACTION_DTYPES (the keys of a per-dtype map, or a dtype value); building a system refuses a
    #: component that has no `energy_per_action_J` price for one of them
    ACTIONS: ClassVar[tuple[str, ...]] = ()
    ACTION_DTYPES: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, params: dict[str, Any], doc: Doc | None = None) -> None:
        self.name = name
        self.params = params
        self.doc = doc
        self._cache: dict[Op, OpCost] = {}
        #: equal for components built from identical parameters (they cost every op identically)
        self.config_key = (type(self).__name__, repr(sorted(params.items())))

    @classmethod
    def from_doc(cls, name: str, doc: Doc) -> Component:
        ignore = ("type", "name", "description", "source", "count")
        for expand in DOC_EXPANDERS:
            doc = expand(cls.SCHEMA, doc)
        return cls(name, validate(doc, cls.SCHEMA, ignore=ignore), doc)

    def supports(self, op: Op) -> bool:
        if isinstance(op, Chain):
            return all(self.supports(m) for m in op.ops)
        return op.kind in self.COSTS

    def op_cost(self, op: Op) -> OpCost:
        """Cached cost of `op` (its name ignored)."""
        sig = op.signature()
        cost = self._cache.get(sig)
        if cost is None and isinstance(op, Chain):  # its members are costed (and power-capped) one by one
            cost = self._cache[sig] = chain_cost([self.op_cost(m) for m in op.ops])
        if cost is None:
            method = self.COSTS.get(op.kind)
            if method is None:
                raise ConfigError(f"{self.type_name} {self.name!r} cannot run {op.kind} op {op.name!r}")
            cost = self._cache[sig] = self.power_capped(getattr(self, method)(op))
        return cost

    def power_capped(self, cost: OpCost) -> OpCost:
        """`cost` as the part runs it under its power limit (a part with none: unchanged)."""
        return cost

    def derived(self) -> dict[str, tuple[float, str, str]]:
        """Figures derived from the parameters: name -> (value, unit kind, how), for `hw show`."""
        return {}

    # energy --------------------------------------------------------------------------------------
    def energy_per_action_J(self) -> Mapping[str, float]:
        """Joules per action name; actions with no entry cost nothing (and are listed by `hw show`)."""
        return {}

    @property
    def static_power_W(self) -> float:
        return 0.0

    @property
    def active_power_W(self) -> float:
        """Power drawn on top of idle whenever a kernel runs, whatever it computes (clocks and voltage
        raised to the active state, clock tree, schedulers): charged for the device's busy time."""
        return 0.0

    @property
    def memory_capacity_B(self) -> float:
        """Bytes of memory this component owns for tensors (0 for none)."""
        return 0.0

    @property
    def memory_bandwidth_Bps(self) -> float:
        """Achievable bandwidth of that memory, shared by ops and transfers (reads, for storage)."""
        return 0.0

    @property
    def peak_memory_bandwidth_Bps(self) -> float:
        """Spec-sheet (peak) bandwidth of that memory, before any efficiency factor; 0 for none."""
        return self.memory_bandwidth_Bps

    def dense_peak_flops(self, dtype: str) -> float:
        """Spec-sheet dense peak FLOP/s of the chip for a matmul in `dtype` (0: no compute or no such dtype);
        the denominator of MFU and the numerator of the ridge point."""
        return 0.0

    @property
    def write_bandwidth_Bps(self) -> float:
        """Bandwidth for data written into this device (differs from reads for storage)."""
        return self.memory_bandwidth_Bps

    #: whether a write's rate depends on its size (`access(..., nbytes)`: an SSD's SLC cache)
    sized_writes: bool = False

    def access(self, request_B: float, write: bool, nbytes: float | None = None) -> tuple[float, float]:
        """(latency before the first byte, rate cap from the device's request handling) for DMA in
        `request_B` requests, `nbytes` in all where the rate depends on it; memories have neither."""
        return 0.0, float("inf")


def ridge_point(component: Component, dtype: str) -> float:
    """The roofline ridge point, the one definition used everywhere (`hw show`, plots, notebooks): spec
    dense peak FLOP/s in `dtype` / spec (peak) memory bandwidth, in FLOP per DRAM byte; 0 if either is
    unknown. Achievable figures (efficiencies applied) would move it; the spec ratio is the one quoted."""
    bw = component.peak_memory_bandwidth_Bps
    peak = component.dense_peak_flops(dtype)
    return peak / bw if peak and bw else 0.0


def component_type(doc: Doc, path: tuple[str, ...] = ()) -> type[Component]:
    t = doc.get(path + ("type",))
    if t is None:
        raise doc.error(path, f"missing 'type' (one of: {', '.join(sorted(COMPONENT_TYPES))})")
    if t not in COMPONENT_TYPES:
        raise doc.error(
            path + ("type",), f"unknown component type {t!r} (known: {', '.join(sorted(COMPONENT_TYPES))})"
        )
    return COMPONENT_TYPES[t]


def chain_cost(costs: list[OpCost]) -> OpCost:
    """Kernels run back to back as one: times, DRAM bytes and actions summed; bound by whichever of the SMs
    and DRAM set more of the time, with both times kept (`partition_times`) and the members' costs in
    `detail["parts"]` (records list them one by one)."""
    t_sm = t_mem = 0.0
    actions: dict[str, float] = {}
    for c in costs:
        s, m = partition_times(c)
        t_sm += s
        t_mem += m
        for k, v in c.actions.items():
            actions[k] = actions.get(k, 0.0) + v
    duration = sum(c.duration_s for c in costs)
    detail = {"t_compute_s": t_sm, "t_dram_s": t_mem, "parts": tuple(costs)}
    return OpCost(duration, "compute" if t_sm >= t_mem else "memory", sum(c.dram_bytes for c in costs),
                  actions, detail)  # fmt: skip


def partition_times(cost: OpCost) -> tuple[float, float]:
    """(t_sm, t_mem) of a kernel on its whole device: the time its SMs set and the time its DRAM traffic
    sets, max(t_sm, t_mem) being its duration. A memory-bound kernel's SM time is its compute time where
    the model states one (`t_compute_s`), else none; any other kernel's is its duration, its DRAM time
    the model's `t_dram_s` (else none)."""
    d = cost.duration_s
    if cost.bound == "memory":
        return min(float(cost.detail.get("t_compute_s", 0.0)), d), d
    return d, min(float(cost.detail.get("t_dram_s", 0.0)), d)
