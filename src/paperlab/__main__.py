"""Command line: run any chapter's experiment outside the notebooks.

    python -m paperlab list
    python -m paperlab run toolkit --profile full --device cuda --out results/
    python -m paperlab run toolkit --set train.steps=20000 --set model.d_model=512
    torchrun --nproc_per_node 4 -m paperlab run toolkit --device cuda     # data-parallel training

Results are written as JSON to ``--out`` (default ``results/``) as ``<experiment>-<profile>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from paperlab import experiments, registry
from paperlab.config import PROFILES, config_to_dict


def _epilog() -> str:
    lines = ["experiments:"]
    for name in registry.names():
        lines.append(f"  {name:<14} {registry.REGISTRY[name][1]}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m paperlab",
        description="paperlab: run the book's experiments from the command line.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the experiments")
    run = sub.add_parser("run", help="run one experiment and write its results as JSON")
    run.add_argument("experiment", help="one of: " + ", ".join(registry.names()))
    run.add_argument("--profile", choices=PROFILES, default=None,
                     help="fast or full (default: $PAPERLAB_PROFILE or full)")
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA if available)")
    run.add_argument("--out", default="results", help="folder for the results JSON (default: results)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                     help="override a config field, e.g. --set train.steps=5000 (repeatable)")
    run.add_argument("--no-cache", action="store_true", help="recompute; do not read or write the cache")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        print(_epilog())
        return 0
    try:
        experiment = registry.get(args.experiment)
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    profile = args.profile or os.environ.get("PAPERLAB_PROFILE", "full")
    os.environ["PAPERLAB_PROFILE"] = profile
    if args.no_cache:
        os.environ["PAPERLAB_CACHE_DISABLE"] = "1"
    try:
        config = experiments.override(experiment.config(profile), args.overrides)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    results = experiment.run(config, device=args.device)
    seconds = time.perf_counter() - start
    if int(os.environ.get("RANK", "0")) == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{experiment.name}-{profile}.json"
        record = {"experiment": experiment.name, "profile": profile, "device": args.device,
                  "config": config_to_dict(config), "seconds": seconds, "results": results}
        path.write_text(json.dumps(record, indent=1, default=str))
        print(f"wrote {path} ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
