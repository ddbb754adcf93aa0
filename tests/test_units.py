"""Unit strings parse once into SI floats; decimal rates, binary capacities where stated."""

import pytest

from simcore.units import UnitError, fmt, parse


@pytest.mark.parametrize(
    ("text", "kind", "si"),
    [
        ("3.35 TB/s", "bandwidth", 3.35e12),
        ("25 GB/s", "bandwidth", 25e9),
        ("100 Gbit/s", "bandwidth", 12.5e9),
        ("80 GiB", "bytes", 80 * 2**30),
        ("80 GB", "bytes", 80e9),
        ("1.98 GHz", "frequency", 1.98e9),
        ("989.4 TFLOP/s", "flops", 989.4e12),
        ("624 TOP/s", "flops", 624e12),
        ("5 us", "time", 5e-6),
        ("480 ns", "time", 480e-9),
        ("700 W", "power", 700.0),
        ("5.5 pJ/bit", "energy_per_bit", 5.5e-12),
        ("1 pJ/bit", "energy_per_byte", 8e-12),
        (1.5e9, "frequency", 1.5e9),
    ],
)
def test_parse(text, kind, si):
    assert parse(text, kind) == pytest.approx(si, rel=1e-12)


@pytest.mark.parametrize(
    ("text", "kind"), [("80 GB/s", "bytes"), ("fast", "bandwidth"), ("3 parsecs", "time"), (True, "time")]
)
def test_wrong_unit_is_rejected(text, kind):
    with pytest.raises(UnitError):
        parse(text, kind)


def test_fmt_round_trips_through_parse():
    for value, kind in [(3.35e12, "bandwidth"), (80 * 2**30, "bytes"), (4.2e-6, "time")]:
        assert parse(fmt(value, kind, digits=12), kind) == pytest.approx(value, rel=1e-9)
