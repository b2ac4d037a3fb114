"""Search spaces: a YAML file mapping config keys to Ray Tune search spaces, checked against the config before any trial.

A key whose value is a one-entry mapping is searched (``algorithm.inner_lr: {loguniform: [0.01, 1.0]}``); any
other value is fixed for every trial, as ``--set`` would set it (``data.val_size: 0.2``).
"""

import math
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import Config, ConfigError, has_validation, read_yaml

RANGES = ("uniform", "loguniform", "randint")  # [low, high]
LISTS = ("choice", "grid")  # the values themselves
# What a sweep holds the same for every trial: where it runs and logs, its data, and how trials are judged and stopped.
NOT_SEARCHABLE = (
    "experiment", "run_name", "data", "cluster", "register", "sweep", "train.steps", "train.checkpoint_every", "train.checkpoint_dir", "eval.val_tasks",
)  # fmt: skip


@dataclass(frozen=True)
class Space:
    path: str
    fixed: dict  # dotted key -> value, for every trial
    searched: dict  # dotted key -> (kind, arguments)

    def trials(self, samples: int) -> int:
        """How many trials ``samples`` samples make: Tune runs every grid point in each."""
        return samples * math.prod(len(args) for kind, args in self.searched.values() if kind == "grid")

    def tune_space(self) -> dict:
        """The searched keys as Tune's search spaces, under their dotted names."""
        from ray import tune

        kinds = {"choice": tune.choice, "grid": tune.grid_search, "uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
        return {key: kinds[kind](args) if kind in LISTS else kinds[kind](*args) for key, (kind, args) in self.searched.items()}


def read_space(path: str) -> Space:
    """The space file at ``path``, each searched key's kind and arguments checked."""
    fixed, searched = {}, {}
    for key, value in read_yaml(Path(path)).items():
        key = str(key)
        if isinstance(value, dict):
            searched[key] = search_spec(path, key, value)
        else:
            fixed[key] = value
    if not searched:
        raise ConfigError(f"{path}: no key to search (expected KEY: {{KIND: ARGUMENTS}} with KIND one of {', '.join(LISTS + RANGES)})")
    return Space(str(path), fixed, searched)


def search_spec(path: str, key: str, spec: dict) -> tuple[str, list]:
    """``{kind: arguments}`` as ``(kind, arguments)``; a malformed one is a one-line error naming the key."""
    where = f"{path}: '{key}'"
    if len(spec) != 1 or next(iter(spec)) not in LISTS + RANGES:
        raise ConfigError(f"{where}: expected one of {', '.join(f'{{{k}: ...}}' for k in LISTS + RANGES)}, got {spec!r}")
    [(kind, args)] = spec.items()
    if kind in LISTS and not (isinstance(args, list) and args):
        raise ConfigError(f"{where}: {kind} needs a non-empty list of values, got {args!r}")
    if kind in RANGES:
        number = int if kind == "randint" else (int, float)
        if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, number) and not isinstance(a, bool) for a in args)):
            raise ConfigError(f"{where}: {kind} needs [low, high] as two {'integers' if kind == 'randint' else 'numbers'}, got {args!r}")
        low, high = args
        if not all(math.isfinite(a) for a in args):
            raise ConfigError(f"{where}: {kind} needs finite ends, got [{low}, {high}]")
        if not low < high:
            raise ConfigError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: loguniform needs 0 < low, got [{low}, {high}]")
    return kind, args


def edges(kind: str, args: list) -> list:
    """The values to check a searched key with: every listed value, or a range's two ends (randint's high is exclusive;
    uniform and loguniform draw real numbers, so their ends are checked as such)."""
    if kind in LISTS:
        return args
    return [args[0], args[1] - 1] if kind == "randint" else [float(a) for a in args]


def sweep_config(config: Config, space: Space) -> Config:
    """``config`` with the space's fixed values; every value a trial can draw is checked against it, one key at a time.

    A sweep selects on a validation split carved from the training classes, so a prepared dataset needs one.
    """
    try:
        config = config.with_values(space.fixed)
    except ConfigError as e:
        raise ConfigError(f"{space.path}: {e}") from None
    if not has_validation(config):
        raise ConfigError(
            f"config key 'data.val_size': a sweep selects on a validation split carved from the training classes, and "
            f"{config.data.name} has none here; set data.val_size (a fraction or a count of classes) in the space file or with --set"
        )
    for key, (kind, args) in space.searched.items():
        for value in edges(kind, args):
            try:
                config.with_values({key: value})
            except ConfigError as e:
                integer = kind in ("uniform", "loguniform") and "integer" in str(e)
                draws = f" ({kind} draws real numbers: use randint or choice for an integer key)" if integer else ""
                raise ConfigError(f"{space.path}: {e}{draws}") from None
        if key.split(".")[0] in NOT_SEARCHABLE or key in NOT_SEARCHABLE:
            raise ConfigError(f"{space.path}: '{key}' cannot be searched: a sweep holds {', '.join(NOT_SEARCHABLE)} fixed (give it a plain value)")
    return config
