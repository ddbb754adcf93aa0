"""Regenerate the accuracy tables of README.md and docs/validation.md from the shared measurements.

    python scripts/validation_tables.py            # rewrite the tables between their markers
    python scripts/validation_tables.py --check    # exit 1 if a table is out of date

Each table sits between `<!-- table:NAME -->` and `<!-- /table:NAME -->`; everything else is left alone.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]  # this checkout's simcore, not an installed one

from simcore.validate import e2e  # noqa: E402, F401  (registers the end-to-end formats)
from simcore.validate.report import Group, abs_pct, by_family, by_group, signed_pct, summarize  # noqa: E402
from simcore.validate.rows import Row, Simulator, load_rows  # noqa: E402

CALIBRATION = ROOT.parent / "shared" / "calibration"
OPS = ["gemm_a100.csv", "attention_a100.csv", "links_a100.csv", "ops_misc_a100.csv"]
SERVING = ["energy_a100_h100.csv"]

#: family -> (name in the tables, target the validation promises)
FAMILIES = {
    "gemm": ("GEMM", "median <= 10%, p90 <= 25%"),
    "softmax": ("softmax", "median <= 15%"),
    "layernorm": ("layernorm", "median <= 15%"),
    "gelu": ("GeLU", "median <= 15%"),
    "hbm": ("HBM (streaming kernels)", "median <= 10%"),
    "pcie": ("PCIe host<->device", "median <= 10%"),
    "nvlink": ("NVLink P2P", "median <= 10%"),
    "allreduce": ("NCCL all-reduce bus bandwidth", "median <= 10%"),
    "attention": (
        "attention, all kernels fwd+bwd (read off the FlashAttention-2 paper's figure)",
        "median <= 15%",
    ),
    "llm energy per token": ("serving energy per output token (H100, vLLM)", "median <= 15%"),
    "llm serving power": ("serving power (H100, vLLM)", "median <= 15%"),
    "llm serving ITL": ("serving median inter-token latency (H100, vLLM)", "median <= 15%"),
}


#: attention kernel (hardware.gpu.ATTENTION_KERNELS) -> (name in the tables, target): one row each, under
#: the attention family
KERNELS = {
    "fa2": ("attention kernel: FlashAttention-2 (`fa2`)", "median <= 8%"),
    "fa1": ("attention kernel: FlashAttention v1 (`fa1`)", "median <= 8%"),
    "triton": ("attention kernel: FlashAttention in Triton (`triton`)", "median <= 8%"),
    "xformers": ("attention kernel: xformers cutlass (`xformers`)", "median <= 8%"),
    "standard": ("attention kernel: PyTorch standard attention (`standard`)", "median <= 8%"),
}


def by_kernel(r: Row) -> tuple[str, str, str, str]:
    """Attention rows by the kernel they name (other rows keep their family)."""
    return ("all", f"attention {r.kernel}" if r.family == "attention" else r.family, "all", r.quality)


def _rows(files: list[str]) -> list[Row]:
    sim, rows = Simulator(), []
    for f in files:
        rows.extend(load_rows(CALIBRATION / f, sim))
    for r in rows:
        if r.mapped and r.predict is not None:
            r.predicted, r.bound = r.predict()
    return rows


def _met(g: Group, target: str) -> str:
    limits = dict(re.findall(r"(median|p90) <= (\d+)%", target))
    ok = all((g.median_abs if k == "median" else g.p90_abs) <= int(v) / 100 for k, v in limits.items())
    return "yes" if ok else "no"


def _target_line(g: Group, name: str, target: str) -> str:
    return (f"| {name} | {g.count} | {abs_pct(g.median_abs)} | {abs_pct(g.p90_abs)} | {signed_pct(g.worst)} | "
            f"{signed_pct(g.bias)} | {target} | {_met(g, target)} |")  # fmt: skip


def targets_table(groups: list[Group], kernels: list[Group]) -> str:
    """Measured rows per family (figure-read ones where a family has no other), against the targets; the
    attention family also per kernel (`kernels`: groups keyed by `by_kernel`)."""
    lines = ["| family | rows | median \\|err\\| | p90 \\|err\\| | worst | bias | target | met |",
             "|---|---:|---:|---:|---:|---:|---|---|"]  # fmt: skip
    for fam, (name, target) in FAMILIES.items():
        found = [g for g in groups if g.family == fam and g.quality == "measured"] or [
            g for g in groups if g.family == fam]  # fmt: skip
        for g in found[:1]:
            lines.append(_target_line(g, name, target))
            if fam == "attention":
                for kernel, (kname, ktarget) in KERNELS.items():
                    lines += [_target_line(k, kname, ktarget) for k in kernels
                              if k.family == f"attention {kernel}" and k.quality == g.quality]  # fmt: skip
    return "\n".join(lines)


def device_table(groups: list[Group]) -> str:
    lines = ["| device | family | dtype | rows | n | median \\|err\\| | p90 \\|err\\| | worst | bias |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    lines += [f"| {g.device} | {g.family} | {g.dtype} | {g.quality} | {g.count} | {abs_pct(g.median_abs)} | "
              f"{abs_pct(g.p90_abs)} | {signed_pct(g.worst)} | {signed_pct(g.bias)} |" for g in groups]  # fmt: skip
    return "\n".join(lines)


def summary_table(groups: list[Group]) -> str:
    lines = ["| family | rows | median \\|error\\| | p90 \\|error\\| |", "|---|---:|---:|---:|"]
    for fam, (name, _) in FAMILIES.items():
        found = [g for g in groups if g.family == fam and g.quality == "measured"] or [
            g for g in groups if g.family == fam]  # fmt: skip
        for g in found[:1]:
            lines.append(f"| {name} | {g.count} | {abs_pct(g.median_abs)} | {abs_pct(g.p90_abs)} |")
    return "\n".join(lines)


def replace(text: str, name: str, table: str) -> str:
    pattern = re.compile(rf"(<!-- table:{name} -->\n).*?(\n<!-- /table:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"no <!-- table:{name} --> markers")
    return pattern.sub(lambda m: m.group(1) + table + m.group(2), text)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a table is out of date, write nothing")
    args = p.parse_args(argv)
    ops, serving = _rows(OPS), _rows(SERVING)
    families = summarize(ops + serving, by_family)
    edits = {
        ROOT / "README.md": [("accuracy", summary_table(families))],
        ROOT / "docs" / "validation.md": [("targets", targets_table(families, summarize(ops, by_kernel))),
                                          ("devices", device_table(summarize(ops, by_group)))],
    }  # fmt: skip
    stale = []
    for path, tables in edits.items():
        text = path.read_text()
        new = text
        for name, table in tables:
            new = replace(new, name, table)
        if new != text:
            stale.append(path.name)
            if not args.check:
                path.write_text(new)
    print(("out of date: " if args.check else "rewrote: ") + (", ".join(stale) or "nothing"))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
