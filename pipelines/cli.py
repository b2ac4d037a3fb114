"""``python -m pipelines COMMAND``: the one entry point people use."""

import argparse
import os
import sys

from pipelines.config import ConfigError, load


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines", description="Distributed meta-learning on Ray, tracked in MLflow.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train, then evaluate on held-out tasks")
    run.add_argument("config", nargs="?", default="sinusoid", help="a config name from pipelines/configs/ or a YAML path")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one key")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        config = load(args.config, args.overrides)
        from pipelines.pipeline import run  # heavy imports only once the config is known to be good

        run(config, args.tracking_uri)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
