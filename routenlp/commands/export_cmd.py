"""`routenlp export`: build the portfolio (cached) and write a new model-repository version;
`--write-pack` also writes the build as a pack (export/pack.py), `--from-pack` serves the
committed pack instead of training when it matches the portfolio and profile."""

from __future__ import annotations

from pathlib import Path

from routenlp_core.paths import MODEL_REPOSITORY_DIR, RESULTS_DIR


def register(sub) -> None:
    parser = sub.add_parser("export", help="train/export the tier portfolio and write the Triton model repository")
    parser.add_argument("--profile", default="default", help="build profile in the portfolio file (tiny, default)")
    parser.add_argument("--portfolio", type=Path, default=None, help="portfolio TOML (default: the embedded one)")
    parser.add_argument("--repository", type=Path, default=None, help="model repository folder (default model_repository/, or model_repository_ngc/ for --target ngc)")
    parser.add_argument("--target", choices=("cpu", "ngc"), default="cpu", help="cpu: this Triton build; ngc: stock NGC tritonserver+vLLM images")
    parser.add_argument("--results", type=Path, default=None, help="the report (default results/portfolio.json for the default profile, else results/portfolio-<profile>.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    packs = parser.add_mutually_exclusive_group()
    packs.add_argument("--write-pack", action="store_true", help="also write the build as a pack (packs/<portfolio>-<profile>/ unless --pack)")
    packs.add_argument("--from-pack", action="store_true", help="take the built stages from the pack when it matches (no training)")
    parser.add_argument("--pack", type=Path, default=None, help="pack folder (default packs/<portfolio>-<profile>/)")
    parser.set_defaults(handler=run, write_pack=False, from_pack=False, pack=None)


def report_path(profile: str) -> Path:
    """Where a profile's build report goes: a tiny or custom build never overwrites the default
    portfolio's committed ladder table."""
    return RESULTS_DIR / ("portfolio.json" if profile == "default" else f"portfolio-{profile}.json")


def use_pack(build, path: Path) -> bool:
    """Seed `build`'s stage cache from the pack at `path` when it matches; say why not otherwise."""
    from export.pack import PackError, describe, restore_pack, verify_pack

    if not (path / "manifest.json").exists():
        print(f"no pack at {path}: building the portfolio here", flush=True)
        return False
    try:
        copied = restore_pack(path, build)
    except PackError as err:
        print(f"not using the pack: {err}\nbuilding the portfolio here instead", flush=True)
        return False
    print(f"serving {path} ({describe(verify_pack(path))}) instead of training; restored {len(copied)} stages into {build.root}", flush=True)
    return True


def run(args) -> int:
    from export.pack import pack_dir, size_report, write_pack
    from export.pipeline import PortfolioBuild
    from export.report import format_report, portfolio_report, write_report
    from export.repository_builder import write_repository
    from routenlp.portfolio import load_portfolio

    portfolio = load_portfolio(args.portfolio, profile=args.profile)
    build = PortfolioBuild(portfolio, progress=not args.quiet)
    pack = args.pack or pack_dir(portfolio)
    if args.from_pack:
        use_pack(build, pack)
    steps = build.run()
    repository = args.repository or (MODEL_REPOSITORY_DIR if args.target == "cpu" else MODEL_REPOSITORY_DIR.with_name("model_repository_ngc"))
    written = write_repository(build, repository, target=args.target)
    written.update(target=args.target, path=str(repository))
    report = portfolio_report(build, steps, written, build.load_answers("dev"))
    results = write_report(report, args.results or report_path(args.profile))
    print("\n" + format_report(report))
    print(f"\nwrote {results}")
    if args.write_pack:
        manifest = write_pack(build, report, pack)
        print(f"wrote pack v{manifest['pack_version']} to {pack}: {manifest['total_bytes'] / 1e6:.1f} MB\n{size_report(manifest['files'], build.stage_names())}")
    return 0
