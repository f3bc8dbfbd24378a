"""``python -m paperlab.bench [NAME ...] [--quick] [--json] [--out FILE] [--device cuda|cpu]``.

See :mod:`paperlab.bench` for what is measured and how to add a benchmark; on a CPU the machine rows
also include :mod:`paperlab.bench._alloc`'s ``alloc`` rows (a new 32 MiB tensor, fresh pages vs reused).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from paperlab.bench import Context, Row, machine_info, measure_machine, registry
from paperlab.bench._alloc import measure_allocation
from paperlab.cli import UsageError, check_device, prepare_output, write_json
from paperlab.utils import reuse_freed_memory


def build_parser() -> argparse.ArgumentParser:
    names = registry()
    parser = argparse.ArgumentParser(
        prog="python -m paperlab.bench",
        description="Time the reference and the kernels, interleaved, against this machine's limits.",
        epilog="benchmarks:\n" + "\n".join(f"  {b.name:<12} {b.description}" for b in names.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (seconds)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON lines: {\"machine\": ...} first, then one object per row")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="also write the whole run ({\"machine\": ..., \"rows\": [...]}) to FILE as JSON")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default: 5 quick, 20 full)")
    return parser


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def format_table(rows: list[Row]) -> str:
    header = ["bench", "op", "shape", "impl", "ms", "speedup", "achieved", "of limit"]
    lines = []
    for r in rows:
        compute = r.gflops is not None and (r.gbps is None or r.bound == "compute")
        achieved = _fmt(r.gflops, ".1f", " GFLOP/s") if compute else _fmt(r.gbps, ".1f", " GB/s")
        fraction = _fmt(None if r.fraction is None else 100 * r.fraction, ".0f", "%")
        lines.append([r.bench, r.op, r.shape, r.impl, _fmt(r.ms, ".3f"), _fmt(r.speedup, ".2f", "x"),
                      achieved, fraction])
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    right = {4, 5, 6, 7}
    fmt = lambda cells: "  ".join(c.rjust(w) if i in right else c.ljust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    benches = registry()
    unknown = [name for name in args.names if name not in benches]
    if unknown:
        bad = ", ".join(map(repr, unknown))
        parser.error(f"unknown benchmark(s) {bad}; valid names: {', '.join(benches)}")
    try:
        check_device(args.device)
    except UsageError as err:
        parser.error(str(err))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    out = None
    if args.out is not None:  # a file can be written there: checked before anything is measured
        if not Path(args.out).parent.is_dir():
            parser.error(f"--out: folder {str(Path(args.out).parent)!r} does not exist")
        try:
            out = prepare_output(Path(args.out).parent, Path(args.out).name)
        except UsageError as err:
            parser.error(str(err))
    repeats = args.repeats if args.repeats is not None else (5 if args.quick else 20)
    reused = reuse_freed_memory()  # kernels and references alike allocate their outputs from reused memory
    ctx = Context(device=device, quick=args.quick, repeats=repeats)
    machine = {**machine_info(device), "quick": args.quick, "repeats": repeats, "freed_memory_reused": reused}

    def emit(rows: list[Row]) -> None:
        if args.json:
            for row in rows:
                print(json.dumps(row.to_dict()), flush=True)

    if args.json:
        print(json.dumps({"machine": machine}), flush=True)
    rows = measure_machine(ctx) + measure_allocation(ctx)
    emit(rows)
    for name in args.names or list(benches):
        new = benches[name].fn(ctx)
        emit(new)
        rows += new
    if out is not None:
        document = {"machine": machine, "rows": [row.to_dict() for row in rows]}
        written = write_json(out, document)
        if written != out:
            print(f"error: could not write {out}; the results are in {written}", file=sys.stderr)
    if not args.json:
        print(f"device: {device} ({machine['device_name']}, {machine['threads']} threads); torch "
              f"{torch.__version__}; {machine['date']}; median of {repeats} interleaved rounds")
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
