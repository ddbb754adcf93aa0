"""Flow-level bandwidth sharing against closed forms."""

import math

import simpy

from simcore.flows import FlowNetwork, Resource


def _run(setup):
    env = simpy.Environment()
    net = FlowNetwork(env)
    finish: dict[str, float] = {}
    setup(env, net, finish)
    env.run()
    return finish


def _flow(env, net, finish, name, path, nbytes, start=0.0, cap=math.inf):
    def proc():
        yield env.timeout(start)
        yield net.start(path, nbytes, cap)
        finish[name] = env.now

    env.process(proc())


def test_single_flow_takes_bytes_over_bandwidth():
    link = Resource("pcie", 25e9)
    f = _run(lambda env, net, fin: _flow(env, net, fin, "a", (link,), 1e9))
    assert math.isclose(f["a"], 1e9 / 25e9, rel_tol=1e-12)


def test_two_flows_sharing_a_link_each_take_twice_as_long():
    # Contention on one PCIe link: two equal simultaneous transfers finish together at 2x the solo time.
    link = Resource("pcie", 25e9)

    def setup(env, net, fin):
        _flow(env, net, fin, "a", (link,), 1e9)
        _flow(env, net, fin, "b", (link,), 1e9)

    f = _run(setup)
    assert math.isclose(f["a"], 2 * 1e9 / 25e9, rel_tol=1e-12)
    assert math.isclose(f["b"], 2 * 1e9 / 25e9, rel_tol=1e-12)
    assert math.isclose(link.bytes_carried, 2e9, rel_tol=1e-9)


def test_late_flow_slows_the_running_one_only_while_overlapping():
    # a: 1 GB alone for 20 ms (0.5 GB done), then shares 50/50 with b (0.25 GB) for 20 ms; b ends at 40 ms,
    # a then has 0.25 GB left alone: 10 ms more -> 50 ms.
    link = Resource("l", 25e9)

    def setup(env, net, fin):
        _flow(env, net, fin, "a", (link,), 1e9)
        _flow(env, net, fin, "b", (link,), 0.25e9, start=0.02)

    f = _run(setup)
    assert math.isclose(f["b"], 0.04, rel_tol=1e-9)
    assert math.isclose(f["a"], 0.05, rel_tol=1e-9)


def test_max_min_fairness_with_a_bottleneck_elsewhere():
    # Flow x crosses a 10 GB/s and a 100 GB/s resource; y uses only the 100 GB/s one.
    # Max-min fair: x gets 10 (its bottleneck), y gets the remaining 90.
    slow, fast = Resource("slow", 10e9), Resource("fast", 100e9)

    def setup(env, net, fin):
        _flow(env, net, fin, "x", (slow, fast), 10e9)
        _flow(env, net, fin, "y", (fast,), 90e9)

    f = _run(setup)
    assert math.isclose(f["x"], 1.0, rel_tol=1e-9)
    assert math.isclose(f["y"], 1.0, rel_tol=1e-9)


def test_capped_flow_leaves_bandwidth_to_others():
    # A compute-bound op needing only 30% of the memory bandwidth leaves 70% to a concurrent copy.
    mem = Resource("hbm", 100e9, kind="memory")

    def setup(env, net, fin):
        _flow(env, net, fin, "op", (mem,), 30e9, cap=30e9)
        _flow(env, net, fin, "copy", (mem,), 70e9)

    f = _run(setup)
    assert math.isclose(f["op"], 1.0, rel_tol=1e-9)
    assert math.isclose(f["copy"], 1.0, rel_tol=1e-9)
    assert math.isclose(mem.busy_s, 1.0, rel_tol=1e-9)


def test_weighted_flows_share_a_resource_by_what_each_unit_uses():
    # Max-min fairness over units: flow a uses 1 of the resource per unit, flow b uses 2. Rates rise
    # together until r + 2r = C, so each moves C/3 units per second; when a (3 units) ends at t = 3 / (C/3),
    # b alone moves at C/2 for its remaining units. The resource carries 1*3 + 2*6 = 15 in all.
    res = Resource("compute", 3.0)
    env = simpy.Environment()
    net = FlowNetwork(env)
    finish: dict[str, float] = {}

    def proc(name, units, weights):
        yield net.start((res,), units, math.inf, weights)
        finish[name] = env.now

    env.process(proc("a", 3.0, (1.0,)))
    env.process(proc("b", 6.0, (2.0,)))
    env.run()
    assert math.isclose(finish["a"], 3.0, rel_tol=1e-12)
    # b moved 3 units by t = 3, then 3 more at 1.5 units/s
    assert math.isclose(finish["b"], 3.0 + 3.0 / 1.5, rel_tol=1e-12)
    assert math.isclose(res.bytes_carried, 15.0, rel_tol=1e-12)
