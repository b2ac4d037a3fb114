"""Configs: YAML over defaults, `--set a.b=c` overrides, validated before anything starts."""

import hashlib
import json
import re
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A bad config value; the message names the key and what it expects."""


CHOICES = {
    "data.name": ["sinusoid", "omniglot", "table", "pointnav"],
    "data.split": ["group", "class"],
    "data.rotations": [True, False],
    "model.name": ["mlp", "conv4", "policy"],
    "algorithm.name": ["maml", "fomaml", "metasgd", "anil", "reptile", "imaml", "protonet", "matchingnet", "mann", "maml_rl"],
    "train.optimizer": ["adam", "sgd"],
    "train.vectorize": ["auto", True, False],
    "train.compile": [True, False],
    "algorithm.checkpoint_inner": [True, False],
    "cluster.aggregation": ["driver", "allreduce"],
}
POSITIVE_INT = {"task.ways", "task.shots", "task.queries", "model.width", "train.steps", "train.meta_batch", "eval.tasks", "cluster.workers", "cluster.steps_per_call", "train.checkpoint_every", "train.pre_adapt_every", "data.image_size", "task.horizon", "algorithm.cg_steps", "algorithm.controller_size", "algorithm.memory_slots", "algorithm.memory_width"}
NON_NEGATIVE_INT = {"seed", "algorithm.inner_steps"}
POSITIVE_NUMBER = {"algorithm.lam", "algorithm.inner_lr", "train.outer_lr", "cluster.num_cpus", "cluster.share_timeout_s"}
NON_NEGATIVE_NUMBER = {"cluster.num_gpus"}
OPTIONAL_STR = {"run_name", "cluster.address", "register.model_name"}
REQUIRED_STR = {"experiment", "train.checkpoint_dir"}
FREE_FORM = {"cluster.resources"}  # sections whose keys the user names
# Which model each data set needs (a table of numeric features needs "mlp").
MODEL_FOR_DATA = {"sinusoid": "mlp", "omniglot": "conv4", "table": "conv4", "pointnav": "policy"}
GENERATED = {"sinusoid", "pointnav"}  # data sets drawn from a formula: nothing to read or prepare
CLASSIFIERS = {"protonet", "matchingnet", "mann"}  # algorithms that only make sense for classification


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
    if path.is_file() or path.suffix in (".yaml", ".yml"):
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
            out[key] = {**base[key], **value} if dotted in FREE_FORM else merge(base[key], value, f"{dotted}.")
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
        if key in REQUIRED_STR and not (isinstance(value, str) and value):
            raise ConfigError(f"config key '{key}': expected a non-empty string, got {value!r}")
        if key.startswith("cluster.resources.") and not (_is_number(value) and value >= 0):
            raise ConfigError(f"config key '{key}': expected a non-negative amount of that resource per worker, got {value!r}")
    steps = flat["eval.steps"]
    if not (isinstance(steps, list) and steps and all(_is_int(s) and s > 0 for s in steps)):
        raise ConfigError(f"config key 'eval.steps': expected a non-empty list of positive integers, got {steps!r}")
    source = flat["data.source"]
    if source is not None and not (isinstance(source, str) or (isinstance(source, list) and all(isinstance(s, str) for s in source))):
        raise ConfigError(f"config key 'data.source': expected a path or a list of paths, got {source!r}")
    if flat["cluster.aggregation"] == "allreduce" and flat["train.meta_batch"] < flat["cluster.workers"]:
        raise ConfigError(
            f"config key 'cluster.aggregation': allreduce needs a task per worker, "
            f"train.meta_batch ({flat['train.meta_batch']}) >= cluster.workers ({flat['cluster.workers']})"
        )
    if flat["cluster.aggregation"] == "allreduce" and 0 < flat["cluster.num_gpus"] < 1:
        raise ConfigError(
            f"config key 'cluster.num_gpus': allreduce on GPUs needs a whole GPU per worker (nccl runs one rank per GPU), "
            f"got {flat['cluster.num_gpus']}"
        )
    if flat["cluster.steps_per_call"] > 1 and flat["cluster.aggregation"] != "allreduce":
        raise ConfigError(
            f"config key 'cluster.steps_per_call': more than 1 needs cluster.aggregation: allreduce "
            f"(there the workers take the outer step themselves), got {flat['cluster.steps_per_call']}"
        )
    if flat["train.compile"] and flat["algorithm.checkpoint_inner"]:
        raise ConfigError("config key 'train.compile': cannot be combined with algorithm.checkpoint_inner (checkpointing needs plain autograd)")
    validate_data(flat)
    validate_register(flat)
    data, model = flat["data.name"], flat["model.name"]
    needed = "mlp" if flat["data.features"] else MODEL_FOR_DATA[data]
    if needed != model:
        raise ConfigError(f"config key 'model.name': data set '{data}' needs model '{needed}', got '{model}'")
    if (flat["algorithm.name"] == "maml_rl") != (data == "pointnav"):
        raise ConfigError(f"config key 'algorithm.name': only 'maml_rl' runs on 'pointnav', and only there; got '{flat['algorithm.name']}' on '{data}'")
    if flat["algorithm.name"] in CLASSIFIERS and data in GENERATED:
        raise ConfigError(f"config key 'algorithm.name': '{flat['algorithm.name']}' classifies, data set '{data}' is not classification")
    if data not in GENERATED and source is None:
        raise ConfigError(f"config key 'data.source': {data} needs a zip, folder, table or URL to read")


def validate_register(flat: dict) -> None:
    """The alias must be one MLflow accepts; the metric one the evaluate stage reports for this task."""
    alias = flat["register.alias"]
    if not (isinstance(alias, str) and re.fullmatch(r"[A-Za-z0-9_-]+", alias) and alias != "latest" and not re.fullmatch(r"v\d+", alias)):
        raise ConfigError(f"config key 'register.alias': expected letters, digits, '_' or '-' (not 'latest' or v<N>), got {alias!r}")
    metric = flat["register.metric"]
    found = re.fullmatch(r"eval_(pre_adapt|post_adapt|steps(\d+))_(loss|acc)", metric) if isinstance(metric, str) else None
    if not found:
        raise ConfigError(f"config key 'register.metric': expected eval_<pre_adapt|post_adapt|steps<N>>_<loss|acc>, got {metric!r}")
    if found[2] is not None and int(found[2]) not in {0, flat["algorithm.inner_steps"], *flat["eval.steps"]}:
        raise ConfigError(f"config key 'register.metric': {metric} needs {found[2]} in eval.steps")
    if found[3] == "acc" and flat["data.name"] in GENERATED:
        raise ConfigError(f"config key 'register.metric': {metric} is a classification metric, {flat['data.name']} reports only losses")


def validate_data(flat: dict) -> None:
    """The ``data.*`` keys the prepare stage reads (data.source is checked above)."""
    for key in ("data.test_size", "data.val_size"):
        size = flat[key]
        if not ((_is_number(size) and 0 < size < 1) or (_is_int(size) and size >= (1 if key == "data.test_size" else 0))):
            raise ConfigError(f"config key '{key}': expected a fraction between 0 and 1 or a whole number of groups (or classes), got {size!r}")
    for key in ("data.label_column", "data.image_column"):
        if not (isinstance(flat[key], str) and flat[key]):
            raise ConfigError(f"config key '{key}': expected a column name, got {flat[key]!r}")
    for key in ("data.group_column", "data.cache_dir"):
        if flat[key] is not None and not (isinstance(flat[key], str) and flat[key]):
            raise ConfigError(f"config key '{key}': expected a non-empty string or null, got {flat[key]!r}")
    features = flat["data.features"]
    if features is not None and not (isinstance(features, list) and features and all(isinstance(f, str) for f in features)):
        raise ConfigError(f"config key 'data.features': expected a non-empty list of column names or null, got {features!r}")
    if features and flat["data.name"] != "table":
        raise ConfigError(f"config key 'data.features': only a table has feature columns, data.name is {flat['data.name']!r}")
    if features and flat["data.rotations"]:
        raise ConfigError("config key 'data.rotations': only images can be rotated, data.features is set")
