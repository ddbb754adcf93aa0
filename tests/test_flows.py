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
