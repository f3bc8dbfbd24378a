"""Command line: run any chapter's experiment outside the notebooks.

    python -m paperlab list
    python -m paperlab run toolkit --profile full --device cuda --out results/
    python -m paperlab run toolkit --set train.steps=20000 --set model.d_model=512
    torchrun --nproc_per_node 4 -m paperlab run toolkit --device cuda     # data-parallel training

Results are written as JSON to ``--out`` (default ``results/``) as ``<experiment>-<profile>.json``:
``{"experiment", "profile", "device", "config", "results", "timings"}``. Wall-clock measurements (training
times, the SSD cost sweep) are under ``timings``, apart from ``results``, so two runs' ``results`` can be
compared bit for bit. Every argument (experiment, profile, device, ``--set`` values, ``--out``) is checked
before the experiment starts: a bad one is a single ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from paperlab import cache, cli, experiments, registry
from paperlab.config import DEFAULT_PROFILE, PROFILES, check_profile, config_to_dict
from paperlab.train import distributed_info
from paperlab.utils import reuse_freed_memory


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
    run.add_argument("--no-cache", action="store_true",
                     help="recompute everything, in a fresh temporary cache removed at the end (the "
                          "run's own pieces are computed once); your cache is neither read nor written")
    return parser


def _prepare(args: argparse.Namespace):
    """Everything checked before the run: (experiment, profile, config, output path or None off rank 0,
    the number of torchrun processes).
    Raises KeyError or ValueError with a one-line message."""
    experiment = registry.get(args.experiment)
    profile = check_profile(args.profile or os.environ.get("PAPERLAB_PROFILE", "").strip() or DEFAULT_PROFILE)
    cli.check_device(args.device)
    cache.disabled()  # PAPERLAB_CACHE_DISABLE spelt as a yes or a no
    folder = cache.cache_dir()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"the cache folder {str(folder)!r} (PAPERLAB_CACHE) is a file; point PAPERLAB_CACHE "
                         f"at a folder")
    rank, world_size, _ = distributed_info()  # also checks RANK / WORLD_SIZE (who writes the results)
    config = experiments.override(experiment.config(profile), args.overrides)
    if experiment.check is not None:
        experiment.check(config)
    path = cli.prepare_output(args.out, f"{experiment.name}-{profile}.json") if rank == 0 else None
    return experiment, profile, config, path, world_size


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        print(_epilog())
        return 0
    try:
        experiment, profile, config, path, world_size = _prepare(args)
    except (KeyError, ValueError, TypeError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    os.environ["PAPERLAB_PROFILE"] = profile
    reuse_freed_memory()  # this process and its workers keep freed memory for reuse (no numbers change)
    fresh, user_cache = None, os.environ.get("PAPERLAB_CACHE")
    if args.no_cache:  # a cold run: a result that several pieces of the run share (a language model whose
        # activations every SAE trains on) is computed once, not once per piece as with the cache disabled
        fresh = tempfile.mkdtemp(prefix="paperlab-no-cache-")
        os.environ["PAPERLAB_CACHE"] = fresh  # the workers inherit it
    kept = ("nothing is kept (--no-cache)" if fresh is not None
            else "nothing is kept (PAPERLAB_CACHE_DISABLE)" if cache.disabled()
            else f"the runs that finished are in the cache ({cache.cache_dir()}): the same command "
                 "resumes from them")
    start = time.perf_counter()
    try:
        results = experiment.run(config, device=args.device)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {kept}", file=sys.stderr)
        return 130
    except cache.CodeChangedError as err:  # the package was edited during the run: nothing stored from here
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if fresh is not None:
            shutil.rmtree(fresh, ignore_errors=True)
            if user_cache is None:
                os.environ.pop("PAPERLAB_CACHE", None)
            else:
                os.environ["PAPERLAB_CACHE"] = user_cache
    seconds = time.perf_counter() - start
    if path is not None:
        results, timed = cli.split_timings(results, experiment.timings)
        record = {"experiment": experiment.name, "profile": profile, "device": args.device,
                  "processes": world_size, "config": config_to_dict(config), "results": results,
                  "timings": {"total_seconds": seconds, "results": timed}}
        written = cli.write_json(path, record)
        if written != path:
            print(f"error: could not write {path}; the results are in {written}", file=sys.stderr)
            return 1
        print(f"wrote {path} ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
