"""`spacetime bench [NAME ...]`: run the benchmark scripts in tools/ and print their tables.

The scripts live in the source checkout (tools/bench_*.py), not in the installed package: run this
from a clone (`make bench`). Each script prints its own table; extra arguments are passed on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipelines.errors import UserError

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def available() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(TOOLS.glob("bench_*.py"))}


def add_arguments(parser) -> None:
    parser.add_argument("names", nargs="*", help="which benchmarks (default: all); e.g. vae dit pipeline train")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--args", default="", help="extra arguments passed to each script, as one string")


def run(args) -> int:
    scripts = available()
    if not scripts:
        raise UserError(f"no benchmark scripts found in {TOOLS}; run `spacetime bench` from a source checkout")
    if args.list:
        print("\n".join(scripts))
        return 0
    names = args.names or list(scripts)
    unknown = [n for n in names if n not in scripts]
    if unknown:
        raise UserError(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(scripts)}")
    status = 0
    for name in names:
        print(f"== {name} ({scripts[name].relative_to(TOOLS.parent)})", flush=True)
        proc = subprocess.run([sys.executable, str(scripts[name]), *args.args.split()], cwd=TOOLS.parent)
        status = status or proc.returncode
    return status
