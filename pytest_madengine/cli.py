"""The ``pytest-madengine`` command: ``pytest-madengine merge -o merged.xml a.xml b.xml``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_madengine.results.junit import JUnitReadError
from pytest_madengine.results.merge import merge_files


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pytest-madengine", description="Tools for pytest-madengine results.")
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser(
        "merge", help="merge JUnit files of several runs; optionally rebuild their perf.csv",
        description="Merge JUnit files written by pytest-madengine (xunit1 or xunit2 form) into one, "
                    "and/or rebuild a madengine perf.csv from the results they hold.")
    merge.add_argument("files", nargs="+", type=Path, metavar="JUNIT.xml")
    merge.add_argument("-o", "--output", type=Path, metavar="MERGED.xml", help="write the merged JUnit file here")
    merge.add_argument("--perf-csv", type=Path, metavar="OUT", help="write a perf.csv (madengine columns) here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "merge":
        if args.output is None and args.perf_csv is None:
            parser.error("merge: give -o MERGED.xml, --perf-csv OUT, or both")
        try:
            done = merge_files(args.files, args.output, args.perf_csv)
        except JUnitReadError as exc:
            print(f"pytest-madengine merge: error: {exc}", file=sys.stderr)
            return 2
        wrote = [str(p) for p in (args.output, args.perf_csv) if p is not None]
        print(f"merged {done.files} files: {done.suites} suites, {done.cases} testcases, "
              f"{done.perf_rows} perf.csv rows -> {', '.join(wrote)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
