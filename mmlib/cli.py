"""`mmlib` command line: the same stage functions the notebooks call."""

from __future__ import annotations

import argparse
import logging
import sys

from mmlib.errors import MmlibError


def _study(path):
    from mmlib.study import load_study

    return load_study(path)


def cmd_list(args) -> None:
    if args.what == "models":  # from the model cards: no torch needed to list them
        from mmlib.models import cards

        print("\n".join(cards.names()))
    else:  # from the extractor cards: no torch, PIL or transformers needed to list them
        from mmlib.extract import cards

        print("\n".join(cards.names()))


def cmd_prepare(args) -> None:
    from mmlib import pipeline

    study = _study(args.study)
    for name in args.dataset or list(study.dataset_specs):
        dataset = pipeline.prepare(study, name)
        print(f"{pipeline.dataset_dir(study, name)}: {dataset.statistics()}")


def cmd_extract(args) -> None:
    from mmlib import pipeline

    study = _study(args.study)
    for name in args.dataset or list(study.dataset_specs):
        for setting in args.setting or [u.key for u in study.extraction_units()]:
            features = pipeline.extract(study, setting, name)
            print(f"{name} / {setting}: " +
                  ", ".join(f"{m} {tuple(x.shape)}" for m, x in features.matrices.items()))


def cmd_train(args) -> None:
    from mmlib import pipeline

    study = _study(args.study)
    for name in args.dataset or list(study.dataset_specs):
        for model in args.model or list(study.models):
            for setting in ([args.setting] if args.setting else study.settings_for(model)):
                for seed in study.seed_list():
                    summary = pipeline.train(study, model, setting, force=args.force, dataset=name, seed=seed)
                    print(f"{name} / {model} / {summary['setting']} / seed {seed}: " +
                          ", ".join(f"{k} {v:.4f}" for k, v in summary["test"].items() if k.endswith("@20")))


def cmd_report(args) -> None:
    from mmlib import report

    table = report.write_all(_study(args.study))
    print(report.to_markdown(table))


def _sigterm_like_ctrl_c() -> None:
    """SIGTERM ends a batch as Ctrl-C does: locks released, kernels and workers stopped."""
    import signal

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def cmd_batch(args) -> int:
    from mmlib.suite import is_suite

    if is_suite(args.study):  # a suite of studies (params/reproduction.yaml): mmlib.suite
        return _batch_suite(args)
    if args.dry_run:  # the plan needs no artifact: no data, no torch
        from mmlib.study import describe_plan

        print(describe_plan(_study(args.study)))
        return 0
    from mmlib.batch import run_batch

    _sigterm_like_ctrl_c()
    summary = run_batch(args.study, kernel=args.kernel, only=args.only, workers=args.workers,
                        scheduler=args.scheduler, progress=not args.no_progress)
    print(summary.report())
    return 1 if summary.failed else 0


def _batch_suite(args) -> int:
    from mmlib import suite

    loaded = suite.load_suite(args.study)
    if args.dry_run:
        print(suite.describe(loaded, args.only))
        return 0
    from mmlib.analysis.reproduction import write_report

    _sigterm_like_ctrl_c()
    try:
        summaries = suite.run_suite(args.study, only=args.only, kernel=args.kernel, workers=args.workers,
                                    scheduler=args.scheduler, progress=not args.no_progress)
    finally:  # also after Ctrl-C: the report of what finished
        write_report(loaded)
    for summary in summaries.values():
        print(summary.report())
    print(f"report: {loaded.outputs / 'reproduction.md'}")
    return 1 if any(s.failed for s in summaries.values()) else 0


def cmd_bench(args) -> None:
    import importlib

    module = importlib.import_module(f"mmlib.bench.{args.which}")
    code = module.main(args.rest)
    if code:
        raise SystemExit(code)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmlib", description="Benchmark multimodal feature extractors for recommendation. "
        "Stages: prepare -> extract -> train -> report; `batch` runs them all through the notebooks.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")

    p = sub.add_parser("list", help="registered models or extractors, one a line")
    p.add_argument("what", choices=["models", "extractors"])
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("prepare", help="build the Dataset artifact of a study")
    p.add_argument("study")
    p.add_argument("--dataset", action="append", help="dataset name (repeatable; default: all)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("extract", help="extract features for one or all settings of a study")
    p.add_argument("study")
    p.add_argument("--setting", action="append", help="setting key (repeatable; default: all)")
    p.add_argument("--dataset", action="append", help="dataset name (repeatable; default: all)")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("train", help="grid-search models, select on validation, test once")
    p.add_argument("study")
    p.add_argument("--model", action="append", help="model name (repeatable; default: all)")
    p.add_argument("--setting", help="feature setting (default: all the model can use)")
    p.add_argument("--force", action="store_true", help="retrain even if the run is up to date")
    p.add_argument("--dataset", action="append", help="dataset name (repeatable; default: all)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("report", help="results table and figures from the runs")
    p.add_argument("study")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="benchmarks: `mmlib bench extraction|training --help`")
    p.add_argument("which", choices=["extraction", "training", "batch"])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own options")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("batch", help="run a whole study: notebooks with papermill, runs in process or on Dask")
    p.add_argument("study")
    p.add_argument("--dry-run", action="store_true", help="print the plan (runs per dataset / setting / "
                   "model and the totals) without doing anything")
    p.add_argument("--only", nargs="+", metavar="KEY=VALUE",
                   help="only these runs, e.g. --only dataset=baby model=FREEDOM setting=clip "
                   "(a suite also takes study=NAME)")
    p.add_argument("--workers", type=int, default=1, help="1 (default): in this process; N: a local Dask "
                   "cluster of N single-threaded worker processes; 0: one per core")
    p.add_argument("--scheduler", help="address of a running Dask scheduler, tcp://HOST:PORT "
                   "(or set MMLIB_SCHEDULER); outputs must be on a filesystem all workers share")
    p.add_argument("--kernel", default="python3")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_batch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = args.func(args)
    except MmlibError as exc:
        print(f"mmlib: error: {exc}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
