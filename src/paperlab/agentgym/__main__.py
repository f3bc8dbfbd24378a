"""``python -m paperlab.agentgym serve --env NAME --host 127.0.0.1 --port N``: one environment over HTTP.

Options: ``--idle-timeout`` (seconds before an unused episode is reclaimed, default 600) and
``--max-episodes`` (episodes held at once, default 4096). The environments: craft, wordle, grid, shop.
"""

from __future__ import annotations

import argparse
import sys

from paperlab.agentgym.envs import ENVS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paperlab.agentgym",
                                     description="AgentGym-like text environments behind HTTP.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve one environment on 127.0.0.1")
    serve.add_argument("--env", required=True, choices=sorted(ENVS), help="the environment to serve")
    serve.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8101, help="TCP port (default 8101)")
    serve.add_argument("--idle-timeout", type=float, default=600.0,
                       help="seconds before an idle episode is reclaimed (default 600)")
    serve.add_argument("--max-episodes", type=int, default=4096, help="episodes held at once (default 4096)")
    args = parser.parse_args(argv)
    from paperlab.agentgym import server

    try:
        server.check_host(args.host)
        if not 0 < args.port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {args.port}")
        if args.idle_timeout <= 0 or args.max_episodes < 1:
            raise ValueError("--idle-timeout must be > 0 and --max-episodes >= 1")
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    server.serve(args.env, host=args.host, port=args.port, idle_timeout=args.idle_timeout,
                 max_episodes=args.max_episodes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
