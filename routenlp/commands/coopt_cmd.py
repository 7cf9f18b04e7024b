"""`routenlp coopt`: the distillation-routing co-optimization loop against a live deployment.

Builds (or takes from the step cache) the portfolio, starts the deployment unless --url/--http-url
name a running server, runs the cluster-targeted loop and its random-distillation ablation from
the same base version (coopt/loop.py), and writes results/coopt.json, results/coopt.md and
results/plots/coopt_convergence.png. With --replay: no server, the committed portfolio pack's
recorded answers replayed instead (coopt/replayed.py).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from routenlp_core.paths import ARTIFACTS_DIR, MODEL_REPOSITORY_DIR, RESULTS_DIR


def register(sub) -> None:
    parser = sub.add_parser("coopt", help="co-optimization loop: failure clusters -> targeted distillation -> router retraining -> live redeploy")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--portfolio", type=Path, default=None, help="portfolio TOML (default: the embedded one)")
    parser.add_argument("--iterations", type=int, default=3, help="maximum iterations per run (default 3)")
    parser.add_argument("--epsilon", type=float, default=0.005, help="stop when |delta cost ratio| is below this (default 0.005)")
    parser.add_argument("--modes", default="targeted,random", help="runs, in order: targeted, random (the ablation) or both")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight while measuring")
    parser.add_argument("--repository", type=Path, default=MODEL_REPOSITORY_DIR)
    parser.add_argument("--url", default=None, help="gRPC address of a running server (needs --http-url; default: start one)")
    parser.add_argument("--http-url", default=None, help="HTTP address of that server (repository API)")
    parser.add_argument("--state-dir", type=Path, default=None, help="where the admin key lives (default var/)")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--replay", action="store_true", help="no server: start from the committed pack, replay routes over its answers"
    )
    parser.set_defaults(handler=run)


def run(args) -> int:
    from coopt.loop import MAX_SERVER_RESTARTS, MODES, CooptLoop, CooptSettings, Live
    from coopt.report import print_tables, write_outputs
    from routenlp.commands import export_cmd
    from routenlp.deployment import STATE_DIR, Deployment, admin_key
    from routenlp.server_restarts import RestartBudget, ServerRestarter

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if not modes or any(m not in MODES for m in modes):
        print(f"error: --modes takes {', '.join(MODES)} (comma-separated), got {args.modes!r}", file=sys.stderr)
        return 2
    if args.replay:
        return run_replayed(args, modes)
    if bool(args.url) != bool(args.http_url):
        print("error: --url and --http-url go together (a running server's gRPC and HTTP addresses)", file=sys.stderr)
        return 2
    export_cmd.run(argparse.Namespace(profile=args.profile, portfolio=args.portfolio, repository=args.repository, target="cpu", results=args.results / export_cmd.report_path(args.profile).name, quiet=True, write_pack=False, from_pack=False, pack=None))

    from export.pipeline import PortfolioBuild
    from routenlp.portfolio import load_portfolio

    portfolio = load_portfolio(args.portfolio, profile=args.profile)
    base = PortfolioBuild(portfolio, progress=False)
    settings = CooptSettings(max_iterations=args.iterations, epsilon=args.epsilon, concurrency=args.concurrency)
    root = ARTIFACTS_DIR / f"{portfolio.name}-{args.profile}" / "coopt"
    command = " ".join(["routenlp coopt", *(shlex.quote(a) for a in sys.argv[2:])])
    state_dir = args.state_dir or STATE_DIR

    def loop_on(live: Live) -> dict:
        return CooptLoop(base, live, settings, root, progress=not args.quiet).run(modes)

    if args.url:
        result = loop_on(Live(args.url, args.http_url, admin_key(state_dir), args.repository))
    else:
        print("\nstarting the deployment (T4 endpoint + tritonserver) ...", flush=True)
        with Deployment(args.repository, state_dir=state_dir) as deployment:
            budget = RestartBudget(MAX_SERVER_RESTARTS, window_s=float("inf"))
            server = deployment.server
            live = Live(
                server.grpc_url, server.http_url, admin_key(deployment.state_dir), args.repository, server.exit_status,
                ServerRestarter(deployment, budget).restart_or_raise,  # the restart path of serve and the demo
            )
            result = loop_on(live)
    print()
    print_tables(result)
    outputs = write_outputs(result, args.results, command)
    print("wrote " + ", ".join(outputs.values()))
    failed = result["swap_totals"]["failed"]
    return 0 if failed == 0 and all("deploy_error" not in row for rows in result["runs"].values() for row in rows) else 1


def run_replayed(args, modes: tuple[str, ...]) -> int:
    """The loop over the pack's recorded answers (coopt/replayed.py): fine-tuning and router
    retraining are real, routes and teacher calls are replayed; nothing is served."""
    from coopt.loop import CooptSettings
    from coopt.replayed import ReplayedLoop
    from coopt.report import print_tables, write_outputs
    from export.pack import pack_dir
    from export.pipeline import PortfolioBuild
    from routenlp.commands.export_cmd import use_pack
    from routenlp.portfolio import load_portfolio

    portfolio = load_portfolio(args.portfolio, profile=args.profile)
    base = PortfolioBuild(portfolio, progress=False)
    if not use_pack(base, pack_dir(portfolio)):
        print("error: --replay starts from the committed portfolio pack (README, The portfolio pack)", file=sys.stderr)
        return 2
    base.run()
    settings = CooptSettings(max_iterations=args.iterations, epsilon=args.epsilon)
    root = ARTIFACTS_DIR / f"{portfolio.name}-{args.profile}" / "coopt-replayed"
    result = ReplayedLoop(base, settings, root, progress=not args.quiet).run(modes)
    result["replayed"] = True
    command = " ".join(["routenlp coopt", *(shlex.quote(a) for a in sys.argv[2:])])
    print()
    print_tables(result)
    outputs = write_outputs(result, args.results, command)
    print("wrote " + ", ".join(outputs.values()))
    return 0
