"""`routenlp` command line: one entry point, one subcommand per verb.

Each command lives in its own module under routenlp/commands/ and registers its parser here, so
later features add a module and one line below.
"""

from __future__ import annotations

import argparse
import sys

from routenlp.commands import bench_cmd, calibrate_cmd, capacity_cmd, coopt_cmd, data_cmd, deploy_cmd, scale_cmd, demo_cmd, doctor_cmd, export_cmd, log_cmd, perf_cmd, route_cmd, serve_cmd

COMMANDS = (doctor_cmd, data_cmd, export_cmd, calibrate_cmd, serve_cmd, route_cmd, log_cmd, bench_cmd, perf_cmd, scale_cmd, capacity_cmd, deploy_cmd, coopt_cmd, demo_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routenlp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
