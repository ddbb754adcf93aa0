"""Bad input: one line naming file, line and key path; never a traceback."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from simcore.config import (
    ABSENT,
    REQUIRED,
    MapOf,
    Param,
    apply_overrides,
    dataclass_schema,
    describe,
    expand_hardware_shorthand,
    param_field,
    parse_yaml,
    positive,
    schema_defaults,
    validate,
    walk_schema,
)
from simcore.errors import ConfigError
from simcore.experiment import load_experiment
from simcore.system import load_system


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD_EXPERIMENT = """\
name: t
hardware: a100-sxm4-80gb
model: llama-2-7b
scenario:
  kind: decode
  batch: 1
  context_len: 128
"""


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("hardware: a100-sxm4-80gb\nmodel: llama: 2\n", 2, "malformed YAML"),
        (GOOD_EXPERIMENT.replace("batch: 1", "batchh: 1"), 6, "scenario.batchh: unknown key"),
        (GOOD_EXPERIMENT.replace("batch: 1", "batch: -4"), 6, "scenario.batch: must be > 0"),
        (GOOD_EXPERIMENT.replace("kind: decode", "kind: dance"), 5, "scenario.kind: expected one of"),
        (GOOD_EXPERIMENT.replace("llama-2-7b", "llama-9-1b"), 3, "model: unknown model 'llama-9-1b'"),
        (GOOD_EXPERIMENT.replace("a100-sxm4-80gb", "a999"), 2, "unknown hardware preset 'a999'"),
    ],
)
def test_experiment_errors_name_file_line_and_key(tmp_path, text, line, needle):
    p = _write(tmp_path, "exp.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_experiment(p)
    msg = str(e.value)
    assert f"exp.yaml:{line}:" in msg, msg
    assert needle in msg, msg
    assert "\n" not in msg


def test_hardware_errors_point_into_the_system_file(tmp_path):
    bad_bw = (
        "type: system\ndevices:\n  gpu:\n    base: a100-sxm4-80gb\n    memory:\n      bandwidth: -2 TB/s\n"
    )
    with pytest.raises(ConfigError, match=r"sys.yaml:6: memory.bandwidth: must be > 0"):
        load_system(_write(tmp_path, "sys.yaml", bad_bw))
    wrong_unit = bad_bw.replace("-2 TB/s", "2 TB")
    with pytest.raises(ConfigError, match=r"sys.yaml:6: memory.bandwidth: unknown unit 'TB' for a bandwidth"):
        load_system(_write(tmp_path, "sys.yaml", wrong_unit))
    dangling = ("type: system\ndevices:\n  gpu: {base: a100-sxm4-80gb, count: 2}\nswitches: [sw]\nlinks:\n"
                "  - {type: nvlink, generation: 3, links: 12, between: [gpu*, sw]}\n"
                "  - {type: pcie, generation: 4, lanes: 16, between: [gpu0, cpu9]}\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"sys.yaml:7: links.1.between.1: no device or switch named 'cpu9'"):
        load_system(_write(tmp_path, "sys.yaml", dangling))
    zero_bw = "type: system\ndevices:\n  gpu: {base: a100-sxm4-80gb, count: 2}\nlinks:\n  - {type: generic, bandwidth: 0 GB/s, between: [gpu0, gpu1]}\n"
    with pytest.raises(ConfigError, match=r"sys.yaml:5: links.0.bandwidth: must be > 0"):
        load_system(_write(tmp_path, "sys.yaml", zero_bw))


def test_cli_overrides_are_named_by_flag():
    with pytest.raises(ConfigError, match=r"--set memory.bandwidth: must be > 0"):
        load_system("h100-sxm5-80gb", ["memory.bandwidth=0 TB/s"])
    with pytest.raises(ConfigError, match=r"--set memory.bandwith: unknown key 'bandwith'"):
        load_system("h100-sxm5-80gb", ["memory.bandwith=3 TB/s"])


def test_override_changes_the_value_and_inheritance_keeps_the_rest():
    base = load_system("h100-sxm5-80gb").devices["gpu"]
    over = load_system("h100-sxm5-80gb", ["memory.bandwidth=4 TB/s"]).devices["gpu"]
    assert over.params["memory"]["bandwidth"] == 4e12
    assert over.params["sms"] == base.params["sms"] == 132
    # h100-pcie-80gb inherits from h100-sxm5-80gb and overrides what differs
    pcie = load_system("h100-pcie-80gb").devices["gpu"]
    assert pcie.params["sms"] == 114 and pcie.params["memory"]["bandwidth"] == pytest.approx(2.0e12, rel=0.01)


def test_system_shorthand_override_reaches_every_device_of_the_group():
    s = load_system("dgx-a100-8", ["gpu.memory.bandwidth=3 TB/s"])
    assert {s.devices[f"gpu{i}"].params["memory"]["bandwidth"] for i in range(8)} == {3e12}


def test_duplicate_key_is_an_error():
    with pytest.raises(ConfigError, match=r"f.yaml:2: a: duplicate key"):
        parse_yaml("a: 1\na: 2\n", "f.yaml")


def test_override_through_a_scalar_is_an_error():
    doc = parse_yaml("a: 1\n", "f.yaml")
    with pytest.raises(ConfigError, match="a is not a mapping"):
        apply_overrides(doc, ["a.b=2"])


@pytest.mark.parametrize(
    "args",
    [
        ["hw", "show", "no-such-preset"],
        ["op", "gemm", "--hw", "h100-sxm5-80gb", "-m", "-5", "-n", "8", "-k", "8"],
        [
            "op",
            "gemm",
            "--hw",
            "h100-sxm5-80gb",
            "-m",
            "8",
            "-n",
            "8",
            "-k",
            "8",
            "--set",
            "memory.bandwidth=-1 TB/s",
        ],
        ["run", "no/such/file.yaml"],
        ["op", "attention", "--hw", "h100-sxm5-80gb", "--heads", "6", "--kv-heads", "4", "--q-len", "8"],
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args):
    p = subprocess.run([sys.executable, "-m", "simcore", *args], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_inference_scenario_needs_a_vision_network(tmp_path):
    text = "hardware: tpuv4-like\nmodel: llama-2-7b\nscenario:\n  kind: inference\n  batch: 4\n"
    with pytest.raises(ConfigError, match=r"exp.yaml:2: model: unknown vision network 'llama-2-7b'"):
        load_experiment(_write(tmp_path, "exp.yaml", text))
    exp = load_experiment(_write(tmp_path, "exp.yaml", text.replace("llama-2-7b", "mobilenet_v2")))
    assert exp.model == "mobilenet_v2" and exp.scenario.batch == 4


def test_weight_offload_needs_a_host(tmp_path):
    text = GOOD_EXPERIMENT + "offload:\n  weights: true\n"
    with pytest.raises(ConfigError, match="exp.yaml:9: offload.weights: weight offload needs a host CPU"):
        load_experiment(_write(tmp_path, "exp.yaml", text))
    with pytest.raises(ConfigError, match=r"exp.yaml:9: offload.weights: expected true or false"):
        load_experiment(_write(tmp_path, "exp.yaml", text.replace("weights: true", "weights: maybe")))


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        (
            "hardware: dgx-a100-8\nparallelism: {tp: 3}\n",
            "exp.yaml:3: parallelism.tp: tensor parallelism 3 does not divide",
        ),
        (
            "hardware: dgx-a100-8\nparallelism: {tp: 16}\n",
            "exp.yaml:3: parallelism.tp: tp=16 × pp=1 × dp=1 needs 16 devices but 'dgx-a100-8' offers 8",
        ),
        ("hardware: a100-sxm4-80gb\ndtype: fp8\n", "exp.yaml:3: dtype: gpu has no fp8 compute"),
        (
            "hardware: samsung-pm1733\n",
            "exp.yaml:1: hardware: nvme 'nvme' cannot run the workload's embedding ops",
        ),
    ],
)
def test_impossible_placements_fail_before_anything_runs(tmp_path, lines, needle):
    text = (
        lines.split("\n", 1)[0]
        + "\nmodel: llama-2-7b\n"
        + lines.split("\n", 1)[1]
        + "scenario: {kind: decode}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_experiment(_write(tmp_path, "exp.yaml", text))
    assert needle in str(e.value)


# ------------------------------------------------------------------------------------ schema walking
SCHEMA = {
    "a": positive("a number", default=1.0),
    "block": {"b": Param("a string", type=str), "inner": {"c": positive("a size", "bytes", default=None)}},
    "peaks": MapOf(positive("", "flops"), "per dtype"),
}


def test_walk_schema_visits_blocks_before_their_entries_with_the_values_at_each_path():
    data = {"block": {"b": "x", "inner": None}, "peaks": {"bf16": "1 TFLOP/s"}}
    walked = [(p, v) for p, _, v in walk_schema(SCHEMA, data)]
    assert [p for p, _ in walked] == [("a",), ("block",), ("block", "b"), ("block", "inner"),
                                      ("block", "inner", "c"), ("peaks",)]  # fmt: skip
    values = dict(walked)
    assert values[("a",)] is ABSENT and values[("block", "b")] == "x" and values[("block", "inner")] is None
    assert values[("block", "inner", "c")] is ABSENT  # a block holding no mapping: its entries are absent
    assert values[("peaks",)] == {"bf16": "1 TFLOP/s"}


def test_validate_describe_and_defaults_share_the_walk():
    doc = parse_yaml("block: {b: x, inner: {c: 2 KiB}}\npeaks: {bf16: 1 TFLOP/s}\n", "s.yaml")
    assert validate(doc, SCHEMA) == {
        "a": 1.0,
        "block": {"b": "x", "inner": {"c": 2048.0}},
        "peaks": {"bf16": 1e12},
    }
    assert [r[0] for r in describe(SCHEMA)] == ["a", "block.b", "block.inner.c", "peaks.<key>"]
    assert schema_defaults(SCHEMA) == {"a": 1.0, "block.b": None, "block.inner.c": None}
    with pytest.raises(ConfigError, match=r"s.yaml:1: block: missing required key 'b'"):
        validate(parse_yaml("block: {inner: {}}\n", "s.yaml"), SCHEMA)
    with pytest.raises(ConfigError, match=r"s.yaml:1: block.inner: expected a mapping, got int 3"):
        validate(parse_yaml("block: {b: x, inner: 3}\n", "s.yaml"), SCHEMA)
    with pytest.raises(ConfigError, match=r"s.yaml:3: block.inner.d: unknown key 'd' \(known: c\)"):
        validate(parse_yaml("block:\n  b: x\n  inner: {d: 1}\n", "s.yaml"), SCHEMA)


# ------------------------------------------------------------------------- schemas from dataclasses
BATCH = positive("sequences in the batch", type=int, default=1)


@dataclasses.dataclass(frozen=True)
class _Prefill:
    batch: int = param_field(BATCH)
    prompt_len: int = dataclasses.field(default=512, metadata={"param": positive("prompt tokens", type=int)})


@dataclasses.dataclass(frozen=True)
class _Decode:
    batch: int = param_field(BATCH)
    context_len: int = param_field(positive("tokens in the KV cache", type=int, default=512))


def test_dataclass_schema_declares_each_field_once():
    schema = dataclass_schema(_Prefill, _Decode)
    assert list(schema) == ["batch", "prompt_len", "context_len"]
    assert schema["batch"] is BATCH
    assert schema["prompt_len"] == positive("prompt tokens", type=int, default=512)  # the field's default
    assert _Prefill() == _Prefill(1, 512)  # param_field gives the dataclass the Param's default
    p = validate(parse_yaml("batch: 4\ncontext_len: 64\n"), {"kind": Param("", type=str, default="decode"),
                                                           **schema})  # fmt: skip
    assert _Decode(**{k: v for k, v in p.items() if k in _Decode.__dataclass_fields__}) == _Decode(4, 64)


def test_dataclass_schema_keeps_the_first_of_shared_fields_and_rejects_conflicts():
    @dataclasses.dataclass
    class Frames:
        batch: int = param_field(positive("frames in the batch", type=int, default=1))  # same check, own doc
        internal: int = 0  # no Param: not in the schema

    @dataclasses.dataclass
    class OtherBatch:
        batch: int = param_field(positive("sequences", type=int, default=2))

    @dataclasses.dataclass
    class TwoDefaults:
        batch: int = dataclasses.field(default=2, metadata={"param": BATCH})

    @dataclasses.dataclass
    class Required:
        batch: int = dataclasses.field(metadata={"param": positive("sequences", type=int)})

    assert dataclass_schema(_Prefill, Frames) == {
        "batch": BATCH,
        "prompt_len": dataclass_schema(_Prefill)["prompt_len"],
    }
    assert dataclass_schema(Frames)["batch"].doc == "frames in the batch"
    with pytest.raises(TypeError, match="OtherBatch.batch is validated unlike the 'batch' declared before"):
        dataclass_schema(_Prefill, OtherBatch)
    with pytest.raises(TypeError, match="defaults to 2, its Param to 1"):
        dataclass_schema(TwoDefaults)
    assert dataclass_schema(Required)["batch"].default is REQUIRED


# ------------------------------------------------------------------------------ hardware shorthand
def test_hardware_shorthand_is_written_out_where_it_was_written():
    doc = parse_yaml("name: t\nhardware: a100-sxm4-80gb\n", "e.yaml")
    out = expand_hardware_shorthand(doc)
    assert out.data["hardware"] == {"base": "a100-sxm4-80gb"} and doc.data["hardware"] == "a100-sxm4-80gb"
    assert out.where(("hardware", "base")) == ("e.yaml", 2)
    full = parse_yaml("hardware: {base: a100-sxm4-80gb, sms: 100}\n")
    assert expand_hardware_shorthand(full) is full
    with pytest.raises(ConfigError, match="an experiment must be a mapping"):
        expand_hardware_shorthand(parse_yaml("- a\n- b\n", "e.yaml"))


def test_resolved_presets_are_remembered_until_a_file_of_their_chain_changes(tmp_path):
    import os

    from simcore.config import load_preset

    base, child = tmp_path / "base.yaml", tmp_path / "child.yaml"
    base.write_text("type: gpu\nsms: 100\nclock: 1 GHz\n")
    child.write_text(f"base: {base}\nsms: 50\n")
    first = load_preset("hardware", child)
    assert (first.data["sms"], first.data["clock"]) == (50, "1 GHz")
    first.data["sms"] = 7  # a copy: the remembered preset is not touched
    assert load_preset("hardware", child).data["sms"] == 50
    base.write_text("type: gpu\nsms: 100\nclock: 2 GHz\n")  # the base changes: the chain is resolved again
    os.utime(base, ns=(1, 1))
    assert load_preset("hardware", child).data["clock"] == "2 GHz"


# ------------------------------------------------------------------- hostile YAML and impossible numbers
@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (
            "a: 1\nb: !!python/object/apply:os.system ['true']\n",
            2,
            "tag 'tag:yaml.org,2002:python/object/apply",
        ),
        ("a: !!set {x, y}\n", 1, "tag 'tag:yaml.org,2002:set' is not supported"),
        ("a:\n  b: !foo x\n", 2, "a.b: YAML tag '!foo' is not supported"),
        ("base: &b {sms: 1}\nx:\n  <<: *b\n", 3, "merge keys ('<<') are not supported"),
        ("a: 1\nb: \x07\n", 2, "unprintable character"),
        ('a: "\\x07"\n', 1, "control character"),
        ("a: &r [*r]\n", 1, "nested deeper than 64 levels"),
        ("a: 1\nb: " + "[" * 65 + "]" * 65 + "\n", 2, "nested deeper than 64 levels"),
        ("a: 1\nb: " + "[" * 20000 + "\n", 2, "nested deeper than 64 levels"),
        (
            "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else 'x'] * 9)}]\n" for i in range(10)),
            6,
            "l5: more than 100,000 values",
        ),
        ("a: 1\n---\nb: 2\n", 2, "malformed YAML"),
        ("a: 1\na: 2\n", 2, "duplicate key 'a'"),
        ("a: " + "9" * 5000 + "\n", 1, "cannot read"),
        ("? [x]\n: 1\n", 1, "a key must be a plain value"),
    ],
)
def test_hostile_yaml_is_one_line_with_file_and_line(text, line, needle):
    with pytest.raises(ConfigError) as e:
        parse_yaml(text, "x.yaml")
    msg = str(e.value)
    assert msg.startswith(f"x.yaml:{line}: ") and needle in msg and "\n" not in msg


def test_dates_and_plain_text_stay_text():
    assert parse_yaml("a: 2001-12-14\nb: '<<'\nc: =\n", "x.yaml").data == {
        "a": "2001-12-14",
        "b": "<<",
        "c": "=",
    }


def test_only_regular_utf8_files_under_the_size_limit_are_read(tmp_path):
    from simcore.config import MAX_FILE_BYTES, load_yaml

    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: not UTF-8 text \(byte 0xe9"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match=r"is a directory"):
        load_yaml(tmp_path)
    with pytest.raises(ConfigError, match=r"/dev/zero: not a regular file"):
        load_yaml("/dev/zero")
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"fifo.yaml: not a regular file"):
        load_yaml(fifo)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match=r"big.yaml: file too large"):
        load_yaml(big)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (".nan", "expected a finite frequency"),
        (".inf", "expected a finite frequency"),
        ("1e999", "expected a frequency with a unit"),  # YAML 1.1 reads 1e999 (no dot) as text
        ("1e999 GHz", "out of range"),
        ("2.1", "expected a frequency with a unit, e.g. '1.98 GHz', got a bare number 2.1"),
        ("'2100'", "expected a frequency with a unit, e.g. '1.98 GHz', got '2100'"),
        ("1" + "0" * 400, "got a bare number an integer of about 401 digits"),
        ("-1 GHz", "must be > 0"),
    ],
)
def test_unit_values_are_finite_positive_and_written_with_their_unit(tmp_path, value, needle):
    text = (
        Path("configs/hardware/gpus/a100-sxm4-80gb.yaml")
        .read_text()
        .replace("clock: 1.41 GHz", f"clock: {value}")
    )
    with pytest.raises(ConfigError) as e:
        load_system(_write(tmp_path, "gpu.yaml", text))
    msg = str(e.value)
    assert re.search(r"gpu\.yaml:\d+: clock: ", msg) and needle in msg and "\n" not in msg


def test_param_bounds_finiteness_and_integer_limits():
    from simcore.config import MAX_INT, count, fraction, nonneg
    from simcore.units import SI

    frac = fraction("an efficiency")
    assert frac.convert(1) == 1.0 and frac.convert(0.5) == 0.5
    for bad in (0, 1.5, float("nan"), -0.1):
        with pytest.raises(ValueError):
            frac.convert(bad)
    n = count("devices", maximum=8)
    assert n.convert(8) == 8
    for bad, needle in (
        (0, "> 0"),
        (9, "<= 8"),
        (float("inf"), "integer"),
        (2.5, "integer"),
        (True, "integer"),
    ):
        with pytest.raises(ValueError, match=needle):
            n.convert(bad)
    plain = Param("lanes", type=int)
    assert plain.convert(0) == 0
    with pytest.raises(ValueError, match=">= 0"):
        plain.convert(-16)
    with pytest.raises(ValueError, match=f"<= {MAX_INT}"):
        plain.convert(10**30)
    with pytest.raises(ValueError, match="out of range"):
        Param("x").convert(10**400)
    with pytest.raises(ValueError, match="finite"):
        nonneg("latency", "time").convert(SI(float("inf")))
    assert nonneg("latency", "time").convert(SI(0.0)) == 0.0  # computed values in SI units pass
    assert positive("clock", "frequency").convert("1.41 GHz") == 1.41e9


def test_required_mapof_needs_an_entry():
    schema = {"peaks": MapOf(positive(""), "peaks by dtype", default=REQUIRED)}
    with pytest.raises(ConfigError, match=r"s.yaml:1: missing required key 'peaks'"):
        validate(parse_yaml("{}\n", "s.yaml"), schema)
    with pytest.raises(ConfigError, match=r"s.yaml:1: peaks: needs at least one entry"):
        validate(parse_yaml("peaks: {}\n", "s.yaml"), schema)


def test_overrides_are_read_with_the_same_limits():
    from simcore.config import parse_override

    assert parse_override("a=[" + "[" * 5000) == ("a", "[" * 5001)  # not YAML within limits: kept as text
    assert parse_override("a=!!python/object:os.system") == ("a", "!!python/object:os.system")
    assert parse_override("a=3 TB/s") == ("a", "3 TB/s") and parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=") == ("a", "") and parse_override("a=# x") == ("a", None)
    with pytest.raises(ConfigError, match=r"--set memory.bandwidth: expected a bandwidth with a unit"):
        load_system("h100-sxm5-80gb", ["memory.bandwidth=5300"])
    with pytest.raises(ConfigError, match=r"--set memory.bandwidth: expected a finite bandwidth"):
        load_system("h100-sxm5-80gb", ["memory.bandwidth=.nan"])
