"""Configs: YAML over defaults, `--set a.b=c` overrides, validated before anything starts."""

import hashlib
import json
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A bad config value; the message names the key and what it expects."""


CHOICES = {
    "data.name": ["sinusoid", "omniglot"],
    "model.name": ["mlp", "conv4"],
    "algorithm.name": ["maml", "fomaml", "metasgd", "anil", "reptile"],
    "train.optimizer": ["adam", "sgd"],
    "train.vectorize": ["auto", True, False],
}
POSITIVE_INT = {"task.ways", "task.shots", "task.queries", "model.width", "train.steps", "train.meta_batch", "eval.tasks", "cluster.workers"}
NON_NEGATIVE_INT = {"seed", "algorithm.inner_steps"}
POSITIVE_NUMBER = {"algorithm.inner_lr", "train.outer_lr", "cluster.num_cpus", "cluster.share_timeout_s"}
NON_NEGATIVE_NUMBER = {"cluster.num_gpus"}
OPTIONAL_STR = {"run_name", "cluster.address", "experiment"}
# Which model each data set needs.
MODEL_FOR_DATA = {"sinusoid": "mlp", "omniglot": "conv4"}


def flatten(config: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def digest(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def resolve_path(name: str | None) -> Path | None:
    """A config given by path, or by name from pipelines/configs/."""
    if name is None:
        return None
    path = Path(name)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    return CONFIG_DIR / f"{name}.yaml"


def merge(base: dict, override: dict, prefix: str = "") -> dict:
    out = dict(base)
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"config key '{dotted}': unknown key (known here: {', '.join(sorted(base))})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}': expected a section of keys, got {value!r}")
            out[key] = merge(base[key], value, f"{dotted}.")
        elif isinstance(value, dict):
            raise ConfigError(f"config key '{dotted}': expected a value, got a section")
        else:
            out[key] = value
    return out


def parse_override(item: str) -> dict:
    """``a.b=3`` -> ``{"a": {"b": 3}}``; the value is read as YAML (numbers, booleans, lists)."""
    if "=" not in item:
        raise ConfigError(f"--set {item}: expected KEY=VALUE, for example train.steps=100")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw else None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def load(name: str | None = None, overrides: list[str] = ()) -> dict:
    """Defaults, then the config file, then each ``--set``; validated."""
    config = read_yaml(CONFIG_DIR / "defaults.yaml")
    path = resolve_path(name)
    if path is not None:
        config = merge(config, read_yaml(path))
    for item in overrides:
        config = merge(config, parse_override(item))
    validate(config)
    return config


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate(config: dict) -> None:
    flat = flatten(config)
    for key, value in flat.items():
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"config key '{key}': expected one of {CHOICES[key]}, got {value!r}")
        if key in POSITIVE_INT and not (_is_int(value) and value > 0):
            raise ConfigError(f"config key '{key}': expected a positive integer, got {value!r}")
        if key in NON_NEGATIVE_INT and not (_is_int(value) and value >= 0):
            raise ConfigError(f"config key '{key}': expected a non-negative integer, got {value!r}")
        if key in POSITIVE_NUMBER and not (_is_number(value) and value > 0):
            raise ConfigError(f"config key '{key}': expected a positive number, got {value!r}")
        if key in NON_NEGATIVE_NUMBER and not (_is_number(value) and value >= 0):
            raise ConfigError(f"config key '{key}': expected a non-negative number, got {value!r}")
        if key in OPTIONAL_STR and value is not None and not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string or null, got {value!r}")
    steps = flat["eval.steps"]
    if not (isinstance(steps, list) and steps and all(_is_int(s) and s > 0 for s in steps)):
        raise ConfigError(f"config key 'eval.steps': expected a non-empty list of positive integers, got {steps!r}")
    source = flat["data.source"]
    if source is not None and not (isinstance(source, str) or (isinstance(source, list) and all(isinstance(s, str) for s in source))):
        raise ConfigError(f"config key 'data.source': expected a path or a list of paths, got {source!r}")
    data, model = flat["data.name"], flat["model.name"]
    if MODEL_FOR_DATA[data] != model:
        raise ConfigError(f"config key 'model.name': data set '{data}' needs model '{MODEL_FOR_DATA[data]}', got '{model}'")
    if data == "omniglot" and source is None:
        raise ConfigError("config key 'data.source': omniglot needs a folder or zip of Omniglot images")
