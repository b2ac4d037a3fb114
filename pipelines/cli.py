"""``python -m pipelines COMMAND``: the one entry point people use.

Each command is a small function of the parsed arguments; heavy imports (Ray,
MLflow, torch) happen inside them, after the arguments are known to be good.
"""

import argparse
import os
import signal
import sys

from data import DataError
from pipelines.config import ConfigError, load


def cmd_run(args) -> None:
    from pipelines.pipeline import STAGE_NAMES, run

    unknown = set(args.force) - set(STAGE_NAMES)
    if unknown:
        raise ConfigError(f"--force: unknown stage {sorted(unknown)[0]!r} (stages: {', '.join(STAGE_NAMES)})")
    run(load(args.config, args.overrides), args.tracking_uri, force=tuple(args.force))


def cmd_resume(args) -> None:
    from pipelines.pipeline import resume

    resume(args.run_id, args.tracking_uri)


def cmd_compare(args) -> None:
    from pipelines.compare import compare

    compare(args.experiment, args.out, args.tracking_uri)


def cmd_prepare(args) -> None:
    import data
    from pipelines.build import prepared

    folder = prepared(load(args.config, args.overrides))
    manifest = data.manifest_of(folder)
    splits = manifest["splits"]
    print(folder)
    for split in data.split_names(manifest):
        print(f"  {split}: {splits[split]['classes']} classes x {splits[split]['samples_per_class']} samples, groups {splits[split]['groups']}")


def cmd_episodes(args) -> None:
    from pipelines.episodes import report, score_episodes

    print(report(score_episodes(args.model_uri, args.folder, args.tracking_uri)))


def cmd_specs(args) -> None:
    from pipelines.specs import describe

    print(describe())


def cmd_submit(args) -> int:
    from pipelines.submit import submit

    return submit(args.config, args.overrides, args.address, args.tracking_uri)


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default="sinusoid", help="a config name from pipelines/configs/ or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one key")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines", description="Distributed meta-learning on Ray, tracked in MLflow.")
    tracking = argparse.ArgumentParser(add_help=False)  # every command takes it, after the command's name
    tracking.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[tracking], help="prepare, train, evaluate (and register); continues an unfinished run of the same config")
    add_config_args(run)
    run.add_argument("--force", action="append", default=[], metavar="STAGE", help="redo STAGE even if unchanged")
    run.set_defaults(handler=cmd_run)

    prepare = sub.add_parser("prepare", parents=[tracking], help="build (or find) the cached Parquet dataset of a config's data section")
    add_config_args(prepare)
    prepare.set_defaults(handler=cmd_prepare)

    episodes = sub.add_parser("episodes", parents=[tracking], help="accuracy of a trained learner on fixed one-shot episodes (runNN/ folders)")
    episodes.add_argument("model_uri", help="runs:/<run_id> of a train stage run, or a folder with params.pt and config.yaml")
    episodes.add_argument("folder", help="a folder of runNN/training, runNN/test and runNN/class_labels.txt")
    episodes.set_defaults(handler=cmd_episodes)

    submit = sub.add_parser("submit", parents=[tracking], help="run the pipeline as a job on a Ray cluster; streams its logs, exits with its status")
    add_config_args(submit)
    submit.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://127.0.0.1:8265 (through a tunnel)")
    submit.set_defaults(handler=cmd_submit)

    specs = sub.add_parser("specs", help="every algorithm, model and data set, with the options each takes and their defaults")
    specs.set_defaults(handler=cmd_specs)

    resume = sub.add_parser("resume", parents=[tracking], help="continue a pipeline run from its last checkpoint")
    resume.add_argument("run_id", help="the pipeline's MLflow run id")
    resume.set_defaults(handler=cmd_resume)

    compare = sub.add_parser("compare", parents=[tracking], help="a table and learning curves of the pipeline runs of experiments")
    compare.add_argument("--experiment", action="append", default=[], metavar="NAME", help="experiment (default: all)")
    compare.add_argument("--out", default="comparison", help="folder for comparison.csv and learning_curves.png")
    compare.set_defaults(handler=cmd_compare)
    return p


def interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (e.g. a stopped Ray job) stops as cleanly as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    signal.signal(signal.SIGTERM, interrupt)
    try:
        return args.handler(args) or 0
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: checkpoint written, runs marked KILLED", file=sys.stderr)
        return 130
