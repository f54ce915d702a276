"""`python -m reproduce ROW... | --all`: run the published protocols and compare with the papers (docs/reproduce.md, "Reproduce
the papers").

    python -m reproduce --all --dry-run          # the plan, estimates, and what is missing (nothing is run)
    python -m reproduce --all --pipeline         # every row end to end on generated data, tiny models (CI)
    python -m reproduce sam-bsds500-edges --set sam.download=true   # a real run
    python -m reproduce --table logs/reproduce/reproduce.json       # docs/reproduce.md's table with a run's results
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from utils.argtypes import positive_int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("rows", nargs="*", metavar="ROW", help="row names (--list shows them)")
    parser.add_argument("--all", action="store_true", help="every row")
    parser.add_argument("--list", action="store_true", help="print the row names and stop")
    parser.add_argument("--dry-run", action="store_true", help="check weights and data, print the plan; run nothing")
    parser.add_argument("--pipeline", action="store_true", help="generated data, tiny models, a few steps: CI")
    parser.add_argument("--out", type=Path, help="default logs/reproduce (--pipeline: logs/reproduce/pipeline)")
    parser.add_argument("--rerun", action="store_true", help="run rows already finished in --out again")
    parser.add_argument("--data-dir", type=Path, help="paths.data_dir of the real runs (default: data/)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="train.py overrides for real runs")
    parser.add_argument("--trainer", help="a configs/trainer name for every run (e.g. gpu, default)")
    parser.add_argument("--table", nargs="?", const="", metavar="JSON", help="print the table (of a reproduce.json)")
    tiny = parser.add_argument_group("pipeline backbone (default: seeded random weights of this size)")
    tiny.add_argument("--checkpoint", type=Path, help="an official-format DINOv2 file of this size")
    tiny.add_argument("--embed-dim", type=positive_int, default=64)
    tiny.add_argument("--depth", type=positive_int, default=4)
    tiny.add_argument("--num-heads", type=positive_int, default=4)
    return parser


def out_dir(args: argparse.Namespace) -> Path:
    return args.out or Path("logs/reproduce") / ("pipeline" if args.pipeline else "")


def body(args: argparse.Namespace) -> int:
    from reproduce.rows import BY_NAME, ROWS
    from reproduce.runner import Options, load_records, run_rows
    from reproduce.table import markdown
    from utils.errors import UserError

    if args.list:
        print("\n".join(BY_NAME))
        return 0
    if args.table is not None:
        if args.table and not Path(args.table).is_file():
            raise UserError(f"--table {args.table}: no such file. Give the reproduce.json a run wrote (in its --out).")
        print(markdown(load_records(Path(args.table)) if args.table else {}))
        return 0
    unknown = [name for name in args.rows if name not in BY_NAME]
    if unknown or not (args.rows or args.all):
        said = f"Unknown row(s) {', '.join(unknown)}" if unknown else "No row given"
        raise UserError(f"{said}. Give row names ({', '.join(BY_NAME)}) or --all; --list prints them.")
    rows = ROWS if args.all else [BY_NAME[name] for name in args.rows]
    if args.dry_run:
        from reproduce.plan import dry_run

        print(dry_run(rows, args.data_dir or Path(__file__).resolve().parents[1] / "data"))
        return 0
    out = out_dir(args)
    arch = {"embed_dim": args.embed_dim, "depth": args.depth, "num_heads": args.num_heads}
    options = Options(out, args.pipeline, args.rerun, args.data_dir, args.set, args.trainer, args.checkpoint, arch)
    records = run_rows(rows, options)
    failed = [row.name for row in rows if records[row.name]["status"] != "ok"]
    print(f"\n{markdown(records, rows)}\n\nWritten: {out / 'reproduce.json'}, {out / 'reproduce.md'}")
    if failed:
        print(f"Failed rows: {', '.join(failed)} (their errors are in reproduce.json and above).", file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from utils.errors import cli_style
    from utils.faults import cli_exit_code

    code = 0

    def run() -> None:
        nonlocal code
        code = body(args)

    def resume() -> str:
        return (
            f"The rows that finished are kept in {out_dir(args) / 'reproduce.json'}: the same command runs the "
            "others (finished rows are skipped; the row that was stopped starts over)."
        )

    return cli_exit_code(run, cli_style(), resume) or code


if __name__ == "__main__":
    sys.exit(main())
