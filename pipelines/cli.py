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

    resume(args.run_id, args.tracking_uri, restart=args.restart)


def cmd_sweep(args) -> None:
    from pipelines import sweep

    if args.resume:
        if args.space or args.overrides or args.trials != 1 or args.max_concurrent:
            raise ConfigError("--resume: a sweep continues as it started; drop --space, --set, --trials and --max-concurrent")
        sweep.resume(args.resume, args.finish, args.tracking_uri)
    elif not args.space:
        raise ConfigError("--space: a sweep needs a search space file, e.g. pipelines/sweeps/sinusoid.yaml (or --resume SWEEP_RUN_ID)")
    else:
        sweep.start(args.config, args.overrides, args.space, args.trials, args.max_concurrent, args.finish, args.tracking_uri)


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

    if args.space:  # a sweep job: its space is checked here too, before anything reaches the cluster
        from pipelines.space import read_space, sweep_config

        sweep_config(load(args.config, args.overrides), read_space(args.space))
    elif args.finish or args.max_concurrent or args.trials != 1:
        raise ConfigError("--trials, --max-concurrent and --finish submit a sweep: give its --space")
    return submit(args.config, args.overrides, args.address, args.tracking_uri, args.space, sweep_options(args))


def sweep_options(args) -> list[str]:
    """The ``sweep`` options of ``args`` as a command line (``--space`` aside)."""
    options = ["--trials", str(args.trials)]
    if args.max_concurrent:
        options += ["--max-concurrent", str(args.max_concurrent)]
    return options + (["--finish"] if args.finish else [])


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default="sinusoid", help="a config name from pipelines/configs/ or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one key")


def positive_int(text: str) -> int:
    if not (text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", metavar="SPACE.yaml", help="config keys to search, as Tune search spaces (pipelines/sweeps/ has examples)")
    p.add_argument("--trials", type=positive_int, default=1, metavar="N", help="samples of the space; a grid runs whole each time (default 1)")
    p.add_argument("--max-concurrent", type=positive_int, metavar="N", help="trials at once (default: as many as the cluster holds)")
    p.add_argument("--finish", action="store_true", help="then run the best config through the whole pipeline (full training, test, register)")


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

    sweep = sub.add_parser("sweep", parents=[tracking], help="hyperparameter search on Ray Tune with ASHA, a tracked run per trial")
    add_config_args(sweep)
    add_sweep_args(sweep)
    sweep.add_argument("--resume", metavar="SWEEP_RUN_ID", help="continue a killed sweep: finished trials stay finished")
    sweep.set_defaults(handler=cmd_sweep)

    submit = sub.add_parser(
        "submit", parents=[tracking], help="the pipeline (with --space, a sweep) as a job on a Ray cluster; streams its logs, exits with its status"
    )
    add_config_args(submit)
    add_sweep_args(submit)
    submit.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://127.0.0.1:8265 (through a tunnel)")
    submit.set_defaults(handler=cmd_submit)

    specs = sub.add_parser("specs", help="every algorithm, model and data set, with the options each takes and their defaults")
    specs.set_defaults(handler=cmd_specs)

    resume = sub.add_parser("resume", parents=[tracking], help="continue a pipeline run from its last checkpoint")
    resume.add_argument("run_id", help="the pipeline's MLflow run id")
    resume.add_argument("--restart", action="store_true", help="train again from step 0 if the train run's checkpoint is gone")
    resume.set_defaults(handler=cmd_resume)

    compare = sub.add_parser("compare", parents=[tracking], help="a table and learning curves of the pipeline runs of experiments")
    compare.add_argument("--experiment", action="append", default=[], metavar="NAME", help="experiment (default: all)")
    compare.add_argument("--out", default="comparison", help="folder for comparison.csv and learning_curves.png")
    compare.set_defaults(handler=cmd_compare)
    return p


def interrupt(signum, frame):
    """SIGTERM (what Kubernetes, Slurm and ``ray job stop`` send) stops as Ctrl-C does, through whatever handles
    Ctrl-C at the time: Python's KeyboardInterrupt (checkpoint, runs KILLED), or Tune saving a sweep's state."""
    signal.raise_signal(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # A sweep's Tune state is saved with every trial checkpoint, which keeps a killed sweep resumable; not a warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    signal.signal(signal.SIGTERM, interrupt)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # inherited: a non-interactive shell's background job starts so
        signal.signal(signal.SIGINT, signal.default_int_handler)  # else Ctrl-C, and SIGTERM through it, would do nothing
    try:
        return args.handler(args) or 0
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: checkpoint written, runs marked KILLED", file=sys.stderr)
        return 130
