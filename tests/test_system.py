"""Systems as graphs: nested node presets, NICs and InfiniBand, honest routes, device ports, memory ports.

Numbers are closed forms from the standards the presets cite: PCIe Gen4 x16 = 16 GT/s x 16 lanes x 128/130
/ 8 = 31.5 GB/s per direction, InfiniBand HDR = 200 Gb/s = 25 GB/s and NDR = 400 Gb/s = 50 GB/s per
direction, NVLink3/4 = 25 GB/s per link and direction; achievable = rate x the link kind's efficiency
(hardware/links.py: PCIe 0.8, NVLink 0.9, InfiniBand 0.9).
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import pytest

from hardware.links import LINK_TYPES, pcie_raw_Bps
from simcore.config import load_preset, preset_names
from simcore.engine import Engine
from simcore.errors import ConfigError
from simcore.ops import OpGraph, Transfer
from simcore.program import Program
from simcore.system import MAX_DEPTH, MAX_DEVICES, MemoryPort, actions_of, load_system

IB, PCIE, NVL = LINK_TYPES["infiniband"], LINK_TYPES["pcie"], LINK_TYPES["nvlink"]


_WRITES = itertools.count(1)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    """Write a YAML; a rewritten file gets a new mtime so the per-(path, mtime, size) parse cache sees it."""
    p = tmp_path / name
    p.write_text(text)
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + next(_WRITES)))
    return p


def _via(system, a: str, b: str) -> list[str]:
    return [a] + [y for _, y, _ in system.route(a, b)]


# ---------------------------------------------------------------------------------- nested systems
def test_two_dgx_a100_nodes_are_one_flat_system_with_hierarchical_names():
    node = load_system("dgx-a100-8")
    s = load_system("dgx-a100-x2")
    # every member of both nodes, node0's in the node's own order, then node1's
    assert list(s.devices) == [f"node{i}.{n}" for i in range(2) for n in node.devices]
    assert len(s.devices) == 2 * (8 + 2 + 4)
    assert s.of_type("gpu") == [f"node{i}.gpu{g}" for i in range(2) for g in range(8)]
    assert s.switches == [f"node{i}.{n}" for i in range(2) for n in node.switches] + ["ib-leaf"]
    assert s.groups["node"] == ("node0", "node1")
    assert s.groups["node1.gpu"] == tuple(f"node1.gpu{g}" for g in range(8))
    assert s.members("node1") == [f"node1.{n}" for n in node.devices]
    with pytest.raises(ConfigError, match="no nested system 'node1.gpu0'"):
        s.members("node1.gpu0")
    # inner links are kept, renamed: 12 NVLink3 links per GPU into its own node's NVSwitch
    assert len(s.links) == 2 * len(node.links) + 16
    nvl = s.graph.edges["node1.gpu3", "node1.nvswitch"]["link"]
    assert nvl.name == "nvlink:node1.gpu3-node1.nvswitch"
    assert nvl.bw_Bps == pytest.approx(12 * 25e9 * NVL.efficiency, rel=1e-12)
    assert not s.graph.has_edge("node0.gpu3", "node1.nvswitch")
    # the outer `links:` pattern node*.nic* reached into both nodes: 16 HDR ports on the leaf
    assert sorted(s.graph.neighbors("ib-leaf")) == sorted(
        f"node{i}.nic{k}" for i in range(2) for k in range(8)
    )


def test_count_one_keeps_the_bare_group_name_and_outer_links_name_inner_endpoints(tmp_path):
    path = _write(tmp_path, "pod.yaml", "type: system\ndevices:\n  node: {base: dgx-a100-8}\n"
                  "  host: {base: epyc-7742}\nlinks:\n"
                  "  - {type: ethernet, bandwidth: 100 Gb/s, between: [host, node.cpu0]}\n")  # fmt: skip
    s = load_system(path)
    assert s.of_type("gpu")[3] == "node.gpu3"
    assert "node.nvswitch" in s.switches
    # host -> node.cpu0 (Ethernet) -> root complex -> node.pcie-sw0 -> node.gpu1
    assert _via(s, "host", "node.gpu1") == ["host", "node.cpu0", "node.pcie-sw0", "node.gpu1"]
    assert s.route("host", "node.cpu0")[0][2].bw_Bps == pytest.approx(100e9 / 8 * 0.9, rel=1e-12)


def test_overrides_reach_every_device_of_every_node():
    s = load_system("dgx-a100-x2", ["node.gpu.memory.bandwidth=3 TB/s"])
    assert {s.devices[g].params["memory"]["bandwidth"] for g in s.of_type("gpu")} == {3e12}


def test_nesting_is_bounded_in_depth_and_in_devices(tmp_path):
    _write(tmp_path, "loop.yaml", "type: system\ndevices:\n  me: {base: loop.yaml, count: 2}\n")
    with pytest.raises(
        ConfigError, match=r"loop.yaml:3: devices.me.base: system 'loop.yaml' contains itself"
    ):
        load_system(tmp_path / "loop.yaml")
    # level 1 holds two DGX nodes, level k two of level k-1, each level with a switch joining its parts
    _write(tmp_path, "l1.yaml", "type: system\ndevices:\n  n: {base: dgx-a100-8, count: 2}\nswitches: [sw]\n"
           "links:\n  - {type: generic, bandwidth: 1 GB/s, between: ['n*.cpu0', sw]}\n")  # fmt: skip
    for k in range(2, MAX_DEPTH + 2):
        _write(tmp_path, f"l{k}.yaml", f"type: system\ndevices:\n  n: {{base: l{k - 1}.yaml, count: 2}}\n"
               "switches: [sw]\nlinks:\n  - {type: generic, bandwidth: 1 GB/s, between: ['n*.sw', sw]}\n")  # fmt: skip
    deepest = load_system(tmp_path / f"l{MAX_DEPTH}.yaml")
    assert len(deepest.devices) == 14 * 2**MAX_DEPTH and deepest.of_type("gpu")[-1] == "n1.n1.n1.n1.gpu7"
    with pytest.raises(ConfigError, match=rf"systems nest at most {MAX_DEPTH} deep"):
        load_system(tmp_path / f"l{MAX_DEPTH + 1}.yaml")
    n = MAX_DEVICES // 14 + 1
    _write(tmp_path, "big.yaml", f"type: system\ndevices:\n  node: {{base: dgx-a100-8, count: {n}}}\n")
    with pytest.raises(ConfigError, match=rf"big.yaml:3: devices.node.count: the system would have {14 * n} "
                       rf"devices, more than the {MAX_DEVICES}"):  # fmt: skip
        load_system(tmp_path / "big.yaml")


def test_a_node_without_a_link_to_the_others_is_an_error(tmp_path):
    path = _write(tmp_path, "s.yaml", "type: system\ndevices:\n  node: {base: dgx-a100-8, count: 2}\n")
    with pytest.raises(
        ConfigError, match=r"s.yaml:3: devices.node: nested system 'node0' has no link to the rest"
    ):
        load_system(path)
    dup = "type: system\ndevices:\n  gpu: {base: a100-sxm4-80gb, count: 2}\n  gpu1: {base: a100-sxm4-80gb}\n"
    with pytest.raises(ConfigError, match=r"s.yaml:4: devices.gpu1: device name 'gpu1' is used twice"):
        load_system(_write(tmp_path, "s.yaml", dup))


# ------------------------------------------------------------------------------ NICs, InfiniBand
def test_cross_node_gpu_traffic_leaves_through_pcie_switch_nic_and_the_infiniband_leaf():
    s = load_system("dgx-a100-x2")
    hops = s.route("node0.gpu0", "node1.gpu0")
    assert _via(s, "node0.gpu0", "node1.gpu0") == [
        "node0.gpu0", "node0.pcie-sw0", "node0.nic0", "ib-leaf", "node1.nic0", "node1.pcie-sw0", "node1.gpu0"
    ]  # fmt: skip
    assert [link.type for *_, link in hops] == ["pcie", "pcie", "infiniband", "infiniband", "pcie", "pcie"]
    hdr = 200e9 / 8 * IB.efficiency  # 25 GB/s x 0.9 = 22.5 GB/s per direction
    gen4_x16 = 16e9 * 16 * 128 / 130 / 8 * PCIE.efficiency  # 25.2 GB/s: the HCA's PCIe side is faster
    assert [link.bw_Bps for *_, link in hops] == pytest.approx([gen4_x16] * 2 + [hdr] * 2 + [gen4_x16] * 2)
    assert min(link.bw_Bps for *_, link in hops) == pytest.approx(22.5e9, rel=1e-12)
    assert sum(link.latency_s for *_, link in hops) == pytest.approx(4 * PCIE.latency_s + 2 * IB.latency_s)
    # inside a node nothing changes: NVSwitch between GPUs, the PCIe tree to the host
    assert _via(s, "node1.gpu0", "node1.gpu5") == ["node1.gpu0", "node1.nvswitch", "node1.gpu5"]
    assert _via(s, "node1.gpu4", "node1.cpu0") == ["node1.gpu4", "node1.pcie-sw2", "node1.cpu1", "node1.cpu0"]


def test_a_cross_node_transfer_takes_the_hops_latency_plus_the_bytes_at_the_infiniband_rate():
    s = load_system("dgx-a100-x2")
    nbytes = 1e9
    g = OpGraph()
    g.add(Transfer("x", nbytes=nbytes, src="node0.gpu0", dst="node1.gpu0"), (), ("node0.gpu0",))
    t = Engine(s).run(Program.from_graph(g))
    assert t == pytest.approx(4 * PCIE.latency_s + 2 * IB.latency_s + nbytes / (200e9 / 8 * 0.9), rel=1e-9)


def test_dgx_h100_x4_has_32_ndr_ports_on_one_leaf():
    s = load_system("dgx-h100-x4")
    assert len(s.of_type("gpu")) == 32 and s.of_type("gpu")[-1] == "node3.gpu7"
    assert s.graph.degree("ib-leaf") == 4 * 8
    hops = s.route("node0.gpu3", "node3.gpu3")
    ndr = 400e9 / 8 * IB.efficiency  # 45 GB/s; the HCA's PCIe Gen5 x16 side carries 50.4 GB/s
    assert min(link.bw_Bps for *_, link in hops) == pytest.approx(ndr, rel=1e-12)
    assert [link.type for *_, link in hops].count("infiniband") == 2
    assert hops[1][1].startswith("node0.nic") and hops[-3][1].startswith("node3.nic")


def test_the_nics_leave_every_single_node_route_as_it_was():
    # the HCAs are leaves of the PCIe switches in one box: no route between two devices touches them
    for name in ("dgx-a100-8", "dgx-h100-8"):
        s = load_system(name)
        assert [f"nic{k}" for k in range(8)] == [sw for sw in s.switches if sw.startswith("nic")]
        for a in s.devices:
            for b in s.devices:
                assert not any(y.startswith("nic") for _, y, _ in s.route(a, b)[:-1])
        assert _via(s, "gpu0", "nic1") == ["gpu0", "pcie-sw0", "nic1"]


# ---------------------------------------------------------------------------------- honest routes
PARTIAL = """type: system
devices:
  gpu: {base: a100-sxm4-80gb, count: 2}
  cpu: {base: epyc-7742}
switches: [nvswitch]
links:
  - {type: nvlink, generation: 3, links: 12, between: ["gpu*", nvswitch]}
  - {type: pcie, generation: 4, lanes: 16, between: [gpu0, cpu]}
"""


def test_host_traffic_never_passes_through_a_gpu_unless_the_system_says_it_forwards(tmp_path):
    # Only gpu0 has a PCIe link. The host cannot reach gpu1 without using gpu0 as a switch, which it is not.
    s = load_system(_write(tmp_path, "sys.yaml", PARTIAL))
    with pytest.raises(ConfigError, match=r"sys.yaml:6: links: no route from cpu to gpu1 in system 'sys': every "
                       r"path passes through a device that does not forward \(e.g. gpu0\)"):  # fmt: skip
        s.route("cpu", "gpu1")
    assert not s.forwards("gpu0") and s.forwards("nvswitch") and s.forwards("cpu")
    # ... unless the system says so: then the bounce through gpu0 and its NVLink is the route
    s = load_system(_write(tmp_path, "sys.yaml", PARTIAL + "forwarding: [gpu0]\n"))
    assert _via(s, "cpu", "gpu1") == ["cpu", "gpu0", "nvswitch", "gpu1"]


def test_storage_reaches_a_far_gpu_through_the_root_complex_not_through_a_gpu():
    # dgx-a100-8: nvme0 sits on pcie-sw0 with gpu0 and gpu1; gpu2 is on pcie-sw1 under the same CPU socket.
    s = load_system("dgx-a100-8")
    assert _via(s, "nvme0", "gpu2") == ["nvme0", "pcie-sw0", "cpu0", "pcie-sw1", "gpu2"]
    assert _via(s, "nvme0", "gpu6") == ["nvme0", "pcie-sw0", "cpu0", "cpu1", "pcie-sw3", "gpu6"]
    for a in s.devices:
        for b in s.devices:
            assert all(s.forwards(y) for _, y, _ in s.route(a, b)[:-1])


def test_a_cpu_can_be_told_not_to_forward(tmp_path):
    path = _write(tmp_path, "s.yaml", "base: dgx-a100-8\nforwarding: {cpu1: false}\n")
    s = load_system(path)
    assert _via(s, "gpu0", "cpu0") == ["gpu0", "pcie-sw0", "cpu0"]
    with pytest.raises(ConfigError, match=r"no route from gpu4 to cpu0 .* \(e.g. cpu1\)"):
        s.route("gpu4", "cpu0")
    bad = _write(tmp_path, "b.yaml", "base: dgx-a100-8\nforwarding: [tpu*]\n")
    with pytest.raises(ConfigError, match=r"b.yaml:2: forwarding.0: 'tpu\*' matches no device"):
        load_system(bad)


# ------------------------------------------------------------------------------------ device ports
def _sys(tmp_path: Path, devices: str, link: str) -> Path:
    return _write(
        tmp_path, "p.yaml", f"type: system\ndevices:\n{devices}switches: [sw]\nlinks:\n  - {link}\n"
    )


A100 = "  gpu: {base: a100-sxm4-80gb}\n  cpu: {base: epyc-7742}\n"


@pytest.mark.parametrize(
    ("link", "message"),
    [
        ("{type: pcie, generation: 5, lanes: 16, between: [gpu, cpu]}",
         r"p.yaml:7: links.0.generation: a PCIe Gen5 link is faster than gpu's Gen4 port "
         r"\(configs/hardware/gpus/a100-sxm4-80gb.yaml:\d+: pcie.generation\)"),
        ("{type: pcie, generation: 4, lanes: 32, between: [gpu, sw]}",
         r"p.yaml:7: links.0.lanes: x32 is wider than gpu's x16 PCIe port"),
        ("{type: nvlink, generation: 4, links: 12, between: [gpu, sw]}",
         r"p.yaml:7: links.0.generation: NVLink 4 does not match gpu's NVLink 3 ports"),
        ("{type: nvlink, generation: 3, links: 18, between: [gpu, sw]}",
         r"p.yaml:7: links.0.links: 18 links but gpu has 12 NVLink links"),
    ],
)  # fmt: skip
def test_a_link_beyond_the_device_port_is_refused_at_its_entry(tmp_path, link, message):
    with pytest.raises(ConfigError, match=message):
        load_system(_sys(tmp_path, A100, link))


def test_nvlink_links_are_counted_across_entries_and_a_gpu_without_nvlink_has_none(tmp_path):
    two = _write(tmp_path, "p.yaml", "type: system\ndevices:\n  gpu: {base: a100-sxm4-80gb, count: 2}\n"
                 "switches: [sw]\nlinks:\n  - {type: nvlink, generation: 3, links: 12, between: ['gpu*', sw]}\n"
                 "  - {type: nvlink, generation: 3, links: 4, between: [gpu0, gpu1]}\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"p.yaml:7: links.1.links: gpu0 would use 16 NVLink links in all, "
                       r"but has 12"):  # fmt: skip
        load_system(two)
    with pytest.raises(ConfigError, match=r"p.yaml:6: links.0.between.0: gpu has no NVLink ports"):
        load_system(_sys(tmp_path, "  gpu: {base: rtx-4090}\n", "{type: nvlink, generation: 4, links: 1, "
                         "between: [gpu, sw]}"))  # fmt: skip


def test_a_link_without_width_takes_it_from_the_ports_and_trains_down(tmp_path):
    # rtx-4090 (Gen4 x16) to an EPYC root complex (Gen4, 128 lanes): Gen4 x16
    s = load_system(_sys(tmp_path, "  gpu: {base: rtx-4090}\n  cpu: {base: epyc-7742}\n",
                         "{type: pcie, between: [gpu, cpu]}"))  # fmt: skip
    link = s.graph.edges["gpu", "cpu"]["link"]
    assert (link.generation, link.lanes) == (4, 16)
    assert link.bw_Bps == pytest.approx(pcie_raw_Bps(4, 16) * 0.8, rel=1e-12)
    # an H100 SXM (Gen5 x16) on the same Gen4 host trains to Gen4
    s = load_system(_sys(tmp_path, "  gpu: {base: h100-sxm5-80gb}\n  cpu: {base: epyc-7742}\n",
                         "{type: pcie, between: [gpu, cpu]}"))  # fmt: skip
    assert s.graph.edges["gpu", "cpu"]["link"].peak_Bps == pytest.approx(16e9 * 16 * 128 / 130 / 8, rel=1e-12)
    # a narrower link than the port is fine: an x4 slot
    s = load_system(_sys(tmp_path, A100, "{type: pcie, generation: 4, lanes: 4, between: [gpu, cpu]}"))
    assert s.graph.edges["gpu", "cpu"]["link"].peak_Bps == pytest.approx(pcie_raw_Bps(4, 4), rel=1e-12)
    # NVLink: generation and links from the GPU's port (A100: NVLink3 x 12 = 300 GB/s per direction)
    s = load_system(_sys(tmp_path, "  gpu: {base: a100-sxm4-80gb}\n", "{type: nvlink, between: [gpu, sw]}"))
    link = s.graph.edges["gpu", "sw"]["link"]
    assert (link.generation, link.nvlinks, link.peak_Bps) == (3, 12, 300e9)
    # ... and the part's own rate where its links run slower (A40 bridge: 56.25 GB/s per direction)
    s = load_system(_sys(tmp_path, "  gpu: {base: a40, count: 2}\n", "{type: nvlink, between: [gpu0, gpu1]}"))
    assert s.graph.edges["gpu0", "gpu1"]["link"].peak_Bps == pytest.approx(56.25e9, rel=1e-12)


# ----------------------------------------------------------------------------------- memory ports
def test_every_memory_is_a_port_with_its_capacity_and_read_and_write_rates():
    s = load_system("dgx-a100-8")
    assert list(s.memories) == [f"{d}.mem" for d in s.devices]  # 8 GPUs, 2 CPUs, 4 NVMe: all have memory
    hbm = s.memory_of("gpu3")
    assert hbm is s.memories["gpu3.mem"] and hbm.owner == "gpu3"
    assert hbm.capacity_B == 80 * 2**30
    assert hbm.read_Bps == hbm.write_Bps == pytest.approx(2.039e12 * 0.85, rel=1e-12)  # HBM2e x efficiency
    ssd = s.memory_of("nvme0")  # Samsung PM1733: 7 GB/s sequential read, 3.8 GB/s write
    assert (ssd.read_Bps, ssd.write_Bps) == (7e9, 3.8e9)
    assert s.memory_of("cpu0").read_Bps == pytest.approx(204.8e9 * 0.75, rel=1e-12)  # DDR4 x STREAM fraction
    with pytest.raises(ConfigError, match="no device 'gpu9'"):
        s.memory_of("gpu9")


def test_a_device_can_use_another_devices_memory_as_its_own(tmp_path):
    # a processing-in-memory unit per GPU: pimN computes out of gpuN's HBM, and has no memory port of its own
    path = _write(tmp_path, "pim.yaml", "type: system\ndevices:\n  gpu: {base: a100-sxm4-80gb, count: 2}\n"
                  "  pim: {base: systolic-array, count: 2, memory_of: 'gpu{i}'}\nlinks:\n"
                  "  - {type: generic, bandwidth: 1 TB/s, between: ['pim*', 'gpu*']}\n")  # fmt: skip
    s = load_system(path)
    assert s.memory_of("pim1") is s.memory_of("gpu1")
    assert s.memory_of("pim0") is s.memories["gpu0.mem"]
    assert s.memory_of("pim0") == MemoryPort(
        "gpu0.mem", "gpu0", 80 * 2**30, *[s.devices["gpu0"].memory_bandwidth_Bps] * 2
    )
    assert s.shared_memory == {"pim0": "gpu0", "pim1": "gpu1"}
    assert "pim0.mem" not in s.memories and len(s.memories) == 2
    bad = path.read_text().replace("'gpu{i}'", "nvswitch")
    with pytest.raises(ConfigError, match=r"pim.yaml:4: devices.pim.memory_of: no device named 'nvswitch'"):
        load_system(_write(tmp_path, "pim.yaml", bad))


def test_error_messages_are_one_line():
    with pytest.raises(ConfigError) as e:
        load_system("dgx-a100-8").route("gpu0", "nowhere")
    assert "\n" not in str(e.value) and re.search("nowhere", str(e.value))


# ------------------------------------------------------------------------------ priced energy actions
def test_every_declared_energy_action_of_every_shipped_preset_has_a_price():
    for name in preset_names("hardware"):
        if load_preset("hardware", name).data.get("abstract"):
            continue
        for comp in load_system(name).devices.values():
            prices = comp.energy_per_action_J()
            assert all(a in prices for a in actions_of(comp)), (name, comp.name)
    gpu = load_system("a100-sxm4-80gb").devices["gpu"]
    dtypes = list(dict.fromkeys([*gpu.params["tensor_peak"], *gpu.params["vector_peak"]]))
    assert actions_of(gpu) == [f"flop.{d}" for d in dtypes] + [
        "flop.fp32",
        "dram.byte",
        "l2.byte",
        "smem.byte",
    ]
    assert actions_of(load_system("systolic-array").devices["systolic"])[:2] == ["mac.int8", "flop.int8"]


def test_a_component_that_could_emit_an_unpriced_action_is_refused_where_it_is_declared():
    # Without a TDP, an A100's FP64 FLOPs (vector_peak.fp64) have no price: the energy tables list no fp64.
    with pytest.raises(ConfigError, match=r"a100-sxm4-80gb.yaml: gpu 'gpu' can emit energy action 'flop.fp64' "
                       r"but has no price for it"):  # fmt: skip
        load_system("a100-sxm4-80gb", ["power.tdp=null"])
    with pytest.raises(
        ConfigError, match=r"dgx-a100-8.yaml:\d+: devices.gpu: gpu 'gpu0' can emit energy action"
    ):
        load_system("dgx-a100-8", ["gpu.power.tdp=null"])
    ok = load_system("a100-sxm4-80gb", ["power.tdp=null", "energy.flop.fp64=20 pJ/FLOP"]).devices["gpu"]
    assert ok.energy_per_action_J()["flop.fp64"] == pytest.approx(20e-12)


def test_cross_node_routes_are_rail_aligned():
    # Each DGX A100 GPU has its own InfiniBand HCA beside it on the PCIe switch; equally short paths
    # through either HCA of a switch exist, and rank r talks to rank r over rail r (as NCCL does), so the
    # eight ranks of a stage use eight different NICs and do not halve each other's bandwidth.
    system = load_system("dgx-a100-x2")
    for r in range(8):
        hops = [b for _, b, _ in system.route(f"node0.gpu{r}", f"node1.gpu{r}")]
        assert f"node0.nic{r}" in [a for a, _, _ in system.route(f"node0.gpu{r}", f"node1.gpu{r}")]
        assert f"node1.nic{r}" in hops


def test_a_link_needs_a_port_of_its_kind_on_each_device(tmp_path):
    # An NVMe drive has a PCIe port and nothing else; a GPU has PCIe and NVLink but no network port.
    head = "type: system\ndevices:\n  gpu: {base: a100-sxm4-80gb}\n  ssd: {base: samsung-pm1733}\nlinks:\n"
    bad = _write(
        tmp_path, "s.yaml", head + "  - {type: nvlink, generation: 3, links: 4, between: [gpu, ssd]}\n"
    )
    with pytest.raises(ConfigError, match=r"s.yaml:6: links.0.between.1: nvme 'ssd' has no nvlink port"):
        load_system(bad)
    bad = _write(
        tmp_path, "s.yaml", head + "  - {type: ethernet, bandwidth: 100 Gb/s, between: [gpu, ssd]}\n"
    )
    with pytest.raises(ConfigError, match=r"links.0.between.0: gpu 'gpu' has no network port"):
        load_system(bad)
    ok = _write(tmp_path, "s.yaml", head + "  - {type: pcie, generation: 4, lanes: 4, between: [gpu, ssd]}\n")
    assert load_system(ok).route("gpu", "ssd")[0][2].type == "pcie"
