"""`routenlp export`: build the portfolio (cached) and write a new model-repository version."""

from __future__ import annotations

from pathlib import Path

from routenlp.paths import MODEL_REPOSITORY_DIR, RESULTS_DIR


def register(sub) -> None:
    parser = sub.add_parser("export", help="train/export the tier portfolio and write the Triton model repository")
    parser.add_argument("--profile", default="default", help="build profile in the portfolio file (tiny, default)")
    parser.add_argument("--portfolio", type=Path, default=None, help="portfolio TOML (default: the embedded one)")
    parser.add_argument("--repository", type=Path, default=None, help="model repository folder (default model_repository/, or model_repository_ngc/ for --target ngc)")
    parser.add_argument("--target", choices=("cpu", "ngc"), default="cpu", help="cpu: this Triton build; ngc: stock NGC tritonserver+vLLM images")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / "portfolio.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from export.pipeline import PortfolioBuild
    from export.report import format_report, portfolio_report, write_report
    from export.repository_builder import write_repository
    from routenlp.portfolio import load_portfolio

    portfolio = load_portfolio(args.portfolio, profile=args.profile)
    build = PortfolioBuild(portfolio, progress=not args.quiet)
    steps = build.run()
    repository = args.repository or (MODEL_REPOSITORY_DIR if args.target == "cpu" else MODEL_REPOSITORY_DIR.with_name("model_repository_ngc"))
    written = write_repository(build, repository, target=args.target)
    written.update(target=args.target, path=str(repository))
    report = portfolio_report(build, steps, written, build.load_answers("dev"))
    write_report(report, args.results)
    print("\n" + format_report(report))
    print(f"\nwrote {args.results}")
    return 0
