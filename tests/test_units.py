"""Unit strings parse once into SI floats; decimal rates, binary capacities where stated."""

import pytest

from simcore.units import SI, UnitError, column_kind, fmt, parse, split_unit, to_number, unit_kind, value_kind


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
        (SI(1.5e9), "frequency", 1.5e9),  # a computed value, already in SI base units
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


def test_one_parser_reads_values_whose_kind_the_unit_names():
    assert split_unit(" 3.35 TB/s ") == (3.35, "TB/s")
    assert split_unit("12") == (12.0, "")
    assert split_unit("x") is None
    assert unit_kind("TB/s") == "bandwidth"
    assert unit_kind("pJ/bit") == "energy_per_bit"  # J/bit is in two tables; energy per bit wins
    assert unit_kind("x") is None
    assert to_number("80 GiB") == 80 * 2**30
    assert to_number("12") == 12.0
    assert to_number(5) == 5
    assert to_number("3 parsecs") == "3 parsecs"
    assert to_number(None) is None
    assert value_kind("1.98 GHz") == "frequency"
    assert value_kind("12") is None
    assert value_kind(3) is None


def test_column_kind_prefers_recorded_units_to_the_name():
    class Frame:
        attrs = {"units": {"hardware.memory.bandwidth": "bandwidth"}}

    assert column_kind(Frame(), "hardware.memory.bandwidth") == "bandwidth"
    assert column_kind(None, "latency_s") == "time"
    assert column_kind(None, "peak_memory_B") == "bytes"
    assert column_kind(None, "tokens_per_s") is None  # a rate: shown as a plain number
    assert column_kind(None, "scenario.batch") is None
