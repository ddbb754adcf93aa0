"""`python -m simcore.native build [--force]` compiles the reference kernels and prints the library's path;
`python -m simcore.native stream [-n N] [-r R]` prints the host's STREAM bandwidth per kernel."""

from __future__ import annotations

import argparse
import sys

from simcore import native


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status (1 with a one-line message on failure)."""
    parser = argparse.ArgumentParser(
        prog="python -m simcore.native", description="simcore's native reference kernels"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="compile the shared library if missing or stale, print its path")
    p_build.add_argument("--force", action="store_true", help="recompile even if up to date")
    p_stream = sub.add_parser("stream", help="measure memory bandwidth with STREAM copy/scale/add/triad")
    p_stream.add_argument("-n", "--elements", type=int, default=10_000_000, help="doubles per array")
    p_stream.add_argument("-r", "--repeats", type=int, default=10, help="runs per kernel; the best is kept")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(native.build(force=args.force))
        else:
            for name, bw in native.stream(args.elements, args.repeats).items():
                print(f"{name:<6} {bw / 1e9:10.2f} GB/s")
    except (RuntimeError, ValueError, MemoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
