"""`simcore validate`: the model's predictions next to measured numbers, with the error distribution.

A simulator is only as credible as its error on hardware it was not fitted to, so this command replays
published measurements (`validate data`: GEMM, attention, softmax/layernorm/GeLU, HBM/PCIe/NVLink/NCCL
bandwidths in the formats of shared/calibration/*.csv) and measurements it takes itself on the host
(`validate host`: the native reference kernels), and reports predicted vs measured per row.

Conventions:
- error = predicted / measured - 1, of time for op rows (a published throughput is turned into the time
  of that op) and of bandwidth for link rows. Positive: the model is slower (ops) or faster (links).
- every row is either predicted or listed as unmapped with the reason; rows read off a figure
  (`approx_from_figure`) are kept in groups of their own, so they never mix into measured statistics.
- the timing harness is part of what was measured: rows timed on the host around one synchronous call
  pay that harness's per-call cost instead of the model's back-to-back launch gap (see HARNESSES).
"""

from __future__ import annotations

import argparse

from simcore.cli import command
from simcore.validate.host import NATIVE_EXP_FLOPS, HostInfo, detect_host, host_cpu, run_host
from simcore.validate.report import run_data, summarize
from simcore.validate.rows import Row, Simulator, load_rows, map_device

__all__ = ["NATIVE_EXP_FLOPS", "HostInfo", "Row", "Simulator", "detect_host", "host_cpu", "load_rows", "map_device",
           "run_data", "run_host", "summarize"]  # fmt: skip

# ------------------------------------------------------------------------------------------ command


def _validate_args(p: argparse.ArgumentParser) -> None:
    from simcore import cli

    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=cli._Parser, required=True)
    d = sub.add_parser("data", help="predict measured rows from CSV files and report the error distribution")
    d.add_argument(
        "files", nargs="+", metavar="FILE.csv", help="measurements in the shared/calibration formats"
    )
    d.add_argument(
        "--out",
        default="validation",
        metavar="DIR",
        help="directory for predictions.csv and predicted_vs_measured.png (default: ./validation)",
    )
    d.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    d.add_argument("--intervals", metavar="FILE.yaml",
                   help="write 80%% error bars per op family (split conformal) for `simcore op`")  # fmt: skip
    d.add_argument("--json", action="store_true", help="print one JSON object")
    h = sub.add_parser(
        "host", help="measure the native kernels on this machine and compare with the CPU model"
    )
    h.add_argument("--quick", action="store_true", help="smaller sizes (< 15 s)")
    h.add_argument("--json", action="store_true", help="print one JSON object")


@command("validate", _validate_args)
def validate_cmd(args: argparse.Namespace) -> int:
    """Compare the model with measurements: published CSVs (data) or this machine (host)."""
    if args.action == "data":
        run_data(args.files, args.out, args.json, plot=not args.no_plot, intervals=args.intervals)
    else:
        run_host(args.json, args.quick)
    return 0
