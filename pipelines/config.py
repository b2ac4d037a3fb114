"""Configs: YAML over defaults, `--set a.b=c` overrides, validated once into a typed, frozen ``Config``.

Every check is a one-line ``ConfigError`` naming the key. What an algorithm, a model or a data set accepts comes
from its spec (``meta_core.registry``, ``data.registry``): the ``algorithm:`` and ``model:`` sections take the
chosen spec's options beside their common keys, with the spec's defaults.
"""

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cluster.config import ClusterConfig
from data.registry import DATASETS, DataConfig, DatasetSpec
from data.stream import MIN_MEMORY_MB
from meta_core.registry import ALGORITHMS, MODELS, AlgorithmSpec, ModelSpec, Option, is_int, is_number
from meta_core.tasks import TaskShape

CONFIG_DIR = Path(__file__).parent / "configs"
OPEN_SECTIONS = ("algorithm", "model", "cluster.resources")  # keys beyond the defaults': a spec's options, resource names


class ConfigError(ValueError):
    """A bad config value; the message names the key and what it expects."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)  # the model spec's own, with its defaults


@dataclass(frozen=True)
class AlgorithmConfig:
    name: str
    inner_steps: int = 1
    inner_lr: float = 0.01
    checkpoint_inner: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)  # the algorithm spec's own, with its defaults


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    meta_batch: int
    optimizer: str
    outer_lr: float
    pre_adapt_every: int
    checkpoint_every: int
    checkpoint_dir: str
    vectorize: bool | str
    micro_batch: int | str  # tasks per micro-batch, or "auto" (pipelines.build.micro_batch)
    compile: bool
    select_on: str  # last: the parameters after the last step | val: the best validated ones
    patience: int | None  # select_on val: stop after this many validations in a row without improvement


@dataclass(frozen=True)
class EvalConfig:
    tasks: int
    steps: tuple[int, ...]
    val_tasks: int  # the fixed validation tasks behind each validation figure (train.select_on: val, a sweep's trials)


@dataclass(frozen=True)
class RegisterConfig:
    model_name: str | None
    alias: str
    metric: str
    max_adapt_steps: int | None = None  # the most adaptation steps a served request may ask for (None: a multiple of the trained ones)


@dataclass(frozen=True)
class SweepConfig:
    trial_steps: int | None  # meta-steps each trial trains at most (None: train.steps)
    reduction_factor: float  # ASHA keeps the best 1/reduction_factor of the trials that reach each rung


@dataclass(frozen=True)
class PublishedConfig:
    """A paper's figure for this config's protocol, shown beside ours; in no stage's key, so editing it reruns nothing."""

    acc: float | None  # test accuracy, a fraction, as eval_*_acc
    ci95: float | None  # its 95% interval's half-width
    source: str | None  # the paper and table
    steps: int | None  # the protocol it was measured at: test-time adaptation steps (0: none, for learners that read the support set)
    tasks: int | None  # and test tasks averaged over; null where the source states none


@dataclass(frozen=True)
class Config:
    """A whole, validated config; each layer is handed the sections it reads."""

    seed: int
    experiment: str
    run_name: str | None
    data: DataConfig
    task: TaskShape
    model: ModelConfig
    algorithm: AlgorithmConfig
    train: TrainConfig
    eval: EvalConfig
    cluster: ClusterConfig
    register: RegisterConfig
    sweep: SweepConfig
    published: PublishedConfig

    @property
    def dataset(self) -> DatasetSpec:
        return DATASETS[self.data.name]

    @property
    def algorithm_spec(self) -> AlgorithmSpec:
        return ALGORITHMS[self.algorithm.name]

    @property
    def model_spec(self) -> ModelSpec:
        return MODELS[self.model.name]

    def as_dict(self) -> dict:
        """The config as YAML holds it (spec options inside their sections); ``from_dict`` reads it back."""
        out = asdict(self)
        for section in ("model", "algorithm"):
            out[section].update(out[section].pop("options"))
        return plain(out)

    def with_values(self, values: Mapping[str, Any]) -> "Config":
        """This config with each dotted key of ``values`` set, as ``--set`` would set it; validated again."""
        config = self.as_dict()
        for key, value in values.items():
            config = merge(config, nested(key, value))
        return from_dict(config)


def plain(value):
    """Tuples as lists and mappings as dicts, all the way down: what YAML and JSON write."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def dotted_keys(config: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(dotted_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def digest(value) -> str:
    return hashlib.sha256(json.dumps(plain(value), sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_yaml(path: Path) -> dict:
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return content


def resolve_path(name: str | None) -> Path | None:
    """A config given by path, or by name from pipelines/configs/."""
    if name is None:
        return None
    path = Path(name)
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        return path
    return CONFIG_DIR / f"{name}.yaml"


def merge(base: dict, override: dict, prefix: str = "") -> dict:
    """``override`` over ``base``; a key ``base`` lacks is an error, except in the open sections."""
    out = dict(base)
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            if prefix.rstrip(".") in OPEN_SECTIONS:
                out[key] = value
                continue
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
    return nested(key.strip(), yaml.safe_load(raw) if raw else None)


def nested(key: str, value) -> dict:
    """``("a.b", 3)`` -> ``{"a": {"b": 3}}``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load(name: str | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the config file, then each ``--set``; validated."""
    config = read_yaml(CONFIG_DIR / "defaults.yaml")
    path = resolve_path(name)
    if path is not None:
        config = merge(config, read_yaml(path))
    for item in overrides:
        config = merge(config, parse_override(item))
    whole = from_dict(config)
    check_folders(whole)
    return whole


# -- validation ---------------------------------------------------------------------------------------------------
Rule = tuple[str, Callable[[Any], bool]]  # what a valid value is, in words; and the test


def one_of(*values) -> Rule:
    return f"one of {list(values)}", lambda v: any(v == c and type(v) is type(c) for c in values)  # True is not 1


POSITIVE_INT: Rule = ("a positive integer", lambda v: is_int(v) and v > 0)
NON_NEGATIVE_INT: Rule = ("a non-negative integer", lambda v: is_int(v) and v >= 0)
OPTIONAL_POSITIVE_INT: Rule = ("a positive integer or null", lambda v: v is None or (is_int(v) and v > 0))
POSITIVE_NUMBER: Rule = ("a positive number", lambda v: is_number(v) and v > 0)
NON_NEGATIVE_NUMBER: Rule = ("a non-negative number", lambda v: is_number(v) and v >= 0)
BOOLEAN: Rule = one_of(True, False)
NAME: Rule = ("a non-empty string", lambda v: isinstance(v, str) and bool(v))
OPTIONAL_NAME: Rule = ("a non-empty string or null", lambda v: v is None or (isinstance(v, str) and bool(v)))
HELD_OUT: Rule = (
    "a fraction between 0 and 1 or a whole number of groups (or classes)",
    lambda v: (is_number(v) and 0 < v < 1) or (is_int(v) and v >= 1),
)

RULES: dict[str, Rule] = {
    "seed": ("an integer from 0 to 2**32 - 1", lambda v: is_int(v) and 0 <= v < 2**32),  # numpy's RandomState (Tune's sampler) takes no more
    "experiment": NAME,
    "run_name": OPTIONAL_NAME,
    "data.source": (
        "a path, a name or a URL, a list of them, or null",
        lambda v: v is None or isinstance(v, str) or (isinstance(v, list) and bool(v) and all(isinstance(s, str) for s in v)),
    ),
    "data.split": one_of("group", "class", "source"),
    "data.test_size": HELD_OUT,
    "data.val_size": ("0, a fraction between 0 and 1, or a whole number of groups (or classes)", lambda v: v == 0 and is_int(v) or HELD_OUT[1](v)),
    "data.rotations": BOOLEAN,
    "data.augment": BOOLEAN,
    "data.image_size": POSITIVE_INT,
    "data.label_column": NAME,
    "data.image_column": NAME,
    "data.group_column": OPTIONAL_NAME,
    "data.features": (
        "a non-empty list of column names or null",
        lambda v: v is None or (isinstance(v, list) and bool(v) and all(isinstance(f, str) for f in v)),
    ),
    "data.cache_dir": OPTIONAL_NAME,
    "data.prepare_cpus": ("a non-negative integer or null", lambda v: v is None or (is_int(v) and v >= 0)),
    "data.prepare_memory_mb": (f"an integer of at least {MIN_MEMORY_MB} (MiB)", lambda v: is_int(v) and v >= MIN_MEMORY_MB),
    "data.delivery": one_of("auto", "shared_path", "object_store"),
    "task.ways": POSITIVE_INT,
    "task.shots": POSITIVE_INT,
    "task.queries": NON_NEGATIVE_INT,  # 0 only for a lifelong learner (from_dict)
    "task.horizon": POSITIVE_INT,
    "algorithm.inner_steps": NON_NEGATIVE_INT,
    "algorithm.inner_lr": POSITIVE_NUMBER,
    "algorithm.checkpoint_inner": BOOLEAN,
    "train.steps": POSITIVE_INT,
    "train.meta_batch": POSITIVE_INT,
    "train.optimizer": one_of("adam", "sgd"),
    "train.outer_lr": POSITIVE_NUMBER,
    "train.pre_adapt_every": POSITIVE_INT,
    "train.checkpoint_every": POSITIVE_INT,
    "train.checkpoint_dir": NAME,
    "train.vectorize": one_of("auto", True, False),
    "train.micro_batch": ("a positive integer or 'auto'", lambda v: v == "auto" or (is_int(v) and v > 0)),
    "train.compile": BOOLEAN,
    "train.select_on": one_of("last", "val"),
    "train.patience": OPTIONAL_POSITIVE_INT,
    "eval.tasks": POSITIVE_INT,
    "eval.steps": ("a non-empty list of positive integers", lambda v: isinstance(v, list) and bool(v) and all(is_int(s) and s > 0 for s in v)),
    "eval.val_tasks": POSITIVE_INT,
    "cluster.address": OPTIONAL_NAME,
    "cluster.workers": POSITIVE_INT,
    "cluster.num_cpus": POSITIVE_NUMBER,
    "cluster.num_gpus": NON_NEGATIVE_NUMBER,
    "cluster.share_timeout_s": POSITIVE_NUMBER,
    "cluster.aggregation": one_of("driver", "allreduce"),
    "cluster.steps_per_call": POSITIVE_INT,
    "register.model_name": (
        "a name without '/' or ':' (the model registry's rule), or null",
        lambda v: v is None or (isinstance(v, str) and bool(v.strip()) and not set("/:") & set(v) and v not in (".", "..")),
    ),
    "register.max_adapt_steps": OPTIONAL_POSITIVE_INT,
    "sweep.trial_steps": OPTIONAL_POSITIVE_INT,
    "sweep.reduction_factor": ("a number above 1", lambda v: is_number(v) and v > 1),
    "published.acc": ("a fraction between 0 and 1 or null", lambda v: v is None or (is_number(v) and 0 <= v <= 1)),
    "published.ci95": ("a non-negative number or null", lambda v: v is None or NON_NEGATIVE_NUMBER[1](v)),
    "published.source": OPTIONAL_NAME,
    "published.steps": ("a non-negative integer or null", lambda v: v is None or (is_int(v) and v >= 0)),
    "published.tasks": OPTIONAL_POSITIVE_INT,
}


def under_a_file(path: Path) -> bool:
    """Whether a folder at ``path`` could never be made: one of its existing ancestors (or itself) is not a folder."""
    for folder in (path, *path.parents):
        if folder.exists():
            return not folder.is_dir()
    return False


def check_folders(config: Config) -> None:
    """The folders a run writes, checked where a config is given rather than where a logged one is read back (a
    served model, a resumed run on another machine), whose working directory may hold anything."""
    for key, folder in (("train.checkpoint_dir", config.train.checkpoint_dir), ("data.cache_dir", config.data.cache_dir)):
        if folder is not None and under_a_file(Path(folder)):
            raise ConfigError(f"config key '{key}': expected a folder path, not under a file, got {folder!r}")


def check(key: str, value, rule: Rule) -> None:
    expects, accepts = rule
    if not accepts(value):
        raise ConfigError(f"config key '{key}': expected {expects}, got {value!r}")


def named(key: str, value, registry: Mapping) -> None:
    if value not in registry:
        raise ConfigError(f"config key '{key}': expected one of {sorted(registry)}, got {value!r}")


def spec_options(section: str, raw: dict, common: tuple[str, ...], name: str, options: tuple[Option, ...]) -> dict:
    """The spec's options in a section: each given value checked, the others at the spec's defaults. A null is no
    value, so ``--set model.width=null`` drops an option that another model took."""
    raw = {k: v for k, v in raw.items() if v is not None or k in common}
    known = {o.name: o for o in options}
    for key in raw:
        if key not in common and key not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise ConfigError(f"config key '{section}.{key}': not an option of {section} '{name}' (its options: {listed})")
    for option in options:
        if option.name in raw:
            check(f"{section}.{option.name}", raw[option.name], (option.expects, option.accepts))
    return {o.name: raw.get(o.name, o.default) for o in options}


def from_dict(config: dict) -> Config:
    """A ``Config`` from a merged YAML mapping, or a ``ConfigError`` naming the first bad key."""
    for key, value in dotted_keys(config).items():
        if key in RULES:
            check(key, value, RULES[key])
        elif key.startswith("cluster.resources."):
            check(key, value, ("a non-negative amount of that resource per worker", NON_NEGATIVE_NUMBER[1]))
    if not isinstance(config["cluster"]["resources"], dict):
        raise ConfigError(f"config key 'cluster.resources': expected a section of resource amounts, got {config['cluster']['resources']!r}")
    named("data.name", config["data"]["name"], DATASETS)
    source, features = config["data"]["source"], config["data"]["features"]
    data_config = DataConfig(**{
        **config["data"], "source": tuple(source) if isinstance(source, list) else source, "features": tuple(features) if features else None,
    })  # fmt: skip
    dataset = DATASETS[data_config.name]
    problem = dataset.check(data_config)
    if problem:
        raise ConfigError(problem)
    if not dataset.generated and data_config.source is None:
        raise ConfigError(f"config key 'data.source': {dataset.name} needs {dataset.sources}")

    raw_model = config["model"]
    model_name = raw_model["name"] or dataset.default_model(data_config)
    named("model.name", model_name, MODELS)
    model_spec = MODELS[model_name]
    model = ModelConfig(model_name, spec_options("model", raw_model, ("name",), model_name, model_spec.options))
    inputs, _ = dataset.example(data_config)
    if inputs not in model_spec.inputs:
        raise ConfigError(
            f"config key 'model.name': model '{model_name}' reads {', '.join(model_spec.inputs)}, data set '{dataset.name}' gives {inputs}"
        )

    raw_algorithm = config["algorithm"]
    named("algorithm.name", raw_algorithm["name"], ALGORITHMS)
    spec = ALGORITHMS[raw_algorithm["name"]]
    common = ("name", "inner_steps", "inner_lr", "checkpoint_inner")
    algorithm = AlgorithmConfig(
        **{k: raw_algorithm[k] for k in common}, options=spec_options("algorithm", raw_algorithm, common, spec.name, spec.options)
    )
    if dataset.kind not in spec.kinds:
        raise ConfigError(
            f"config key 'algorithm.name': '{spec.name}' learns {' and '.join(spec.kinds)} tasks, data set '{dataset.name}' is {dataset.kind}"
        )
    if config["task"]["queries"] == 0 and not spec.lifelong:
        raise ConfigError("config key 'task.queries': expected a positive integer (only a lifelong learner's trajectories may have none), got 0")
    if spec.models and model_name not in spec.models:
        raise ConfigError(f"config key 'model.name': algorithm '{spec.name}' runs with {', '.join(spec.models)}, got '{model_name}'")
    if algorithm.checkpoint_inner and not spec.checkpointable:
        raise ConfigError(f"config key 'algorithm.checkpoint_inner': '{spec.name}' has no differentiated inner loop to checkpoint")

    train = TrainConfig(**config["train"])
    cluster = ClusterConfig(**config["cluster"])
    if train.compile and algorithm.checkpoint_inner:
        raise ConfigError("config key 'train.compile': cannot be combined with algorithm.checkpoint_inner (checkpointing needs plain autograd)")
    if cluster.aggregation == "allreduce" and train.meta_batch < cluster.workers:
        raise ConfigError(
            f"config key 'cluster.aggregation': allreduce needs a task per worker, "
            f"train.meta_batch ({train.meta_batch}) >= cluster.workers ({cluster.workers})"
        )
    if cluster.aggregation == "allreduce" and 0 < cluster.num_gpus < 1:
        raise ConfigError(
            f"config key 'cluster.num_gpus': allreduce on GPUs needs a whole GPU per worker (nccl runs one rank per GPU), got {cluster.num_gpus}"
        )
    if cluster.steps_per_call > 1 and cluster.aggregation != "allreduce":
        raise ConfigError(
            f"config key 'cluster.steps_per_call': more than 1 needs cluster.aggregation: allreduce "
            f"(there the workers take the outer step themselves), got {cluster.steps_per_call}"
        )
    if cluster.aggregation == "allreduce" and spec.driver_step:
        raise ConfigError(
            f"config key 'cluster.aggregation': allreduce takes one optimizer step per sampled batch, "
            f"algorithm '{spec.name}' needs cluster.aggregation: driver"
        )
    evaluation = EvalConfig(config["eval"]["tasks"], tuple(config["eval"]["steps"]), config["eval"]["val_tasks"])
    register = RegisterConfig(**config["register"])
    check_register(register, algorithm, evaluation, dataset)
    published = PublishedConfig(**config["published"])
    check_published(published, dataset)
    whole = Config(
        config["seed"], config["experiment"], config["run_name"], data_config, TaskShape(**config["task"]), model, algorithm, train, evaluation, cluster, register,
        SweepConfig(**config["sweep"]), published,
    )  # fmt: skip
    check_selection(whole)
    return whole


def has_validation(config: Config) -> bool:
    """Whether there are validation tasks: a stream of their own for sets drawn from a formula, else a split carved by
    ``data.val_size`` or published with the data set."""
    return config.dataset.generated or config.data.val_size != 0 or config.dataset.fixed_splits


def check_selection(config: Config) -> None:
    """Selecting on validation needs validation tasks, and patience counts validations."""
    train = config.train
    if train.patience is not None and train.select_on != "val":
        raise ConfigError(f"config key 'train.patience': counts validations, which needs train.select_on: val, got {train.select_on!r}")
    if train.select_on == "val" and not has_validation(config):
        raise ConfigError(
            f"config key 'train.select_on': val selects on a validation split and {config.data.name} has none here; "
            f"set data.val_size (a fraction or a count of the training groups or classes to hold out)"
        )


def check_published(published: PublishedConfig, dataset: DatasetSpec) -> None:
    """A published figure is a test accuracy with its source and the protocol it was measured at: its test-time
    adaptation steps (classes learned, for a lifelong learner) and its task count (null where the source states
    none). ``compare`` puts ours beside it only where the run was evaluated at that protocol, and otherwise says so:
    a run may evaluate less (a quick look at 10 and 50 classes of a config whose figure is at 600)."""
    if published.acc is None:
        for key in ("ci95", "source", "steps", "tasks"):
            if getattr(published, key) is not None:
                raise ConfigError(f"config key 'published.{key}': describes published.acc, which is null")
        return
    if published.source is None:
        raise ConfigError("config key 'published.source': required with published.acc: the paper and table, e.g. 'Finn et al. 2017, Table 1'")
    if dataset.kind != "classification":
        raise ConfigError(f"config key 'published.acc': an accuracy, and {dataset.name} tasks report only losses")
    if published.steps is None:
        raise ConfigError("config key 'published.steps': required with published.acc: the test-time adaptation steps it was measured after")


def check_register(register: RegisterConfig, algorithm: AlgorithmConfig, evaluation: EvalConfig, dataset: DatasetSpec) -> None:
    """The alias must be one MLflow accepts; the metric one the evaluate stage reports for this task."""
    alias = register.alias
    if not (isinstance(alias, str) and re.fullmatch(r"[A-Za-z0-9_-]+", alias) and alias != "latest" and not re.fullmatch(r"v\d+", alias)):
        raise ConfigError(f"config key 'register.alias': expected letters, digits, '_' or '-' (not 'latest' or v<N>), got {alias!r}")
    metric = register.metric
    found = re.fullmatch(r"eval_(pre_adapt|post_adapt|steps(\d+))_(loss|acc)", metric) if isinstance(metric, str) else None
    if not found:
        raise ConfigError(f"config key 'register.metric': expected eval_<pre_adapt|post_adapt|steps<N>>_<loss|acc>, got {metric!r}")
    if found[2] is not None and int(found[2]) not in {0, algorithm.inner_steps, *evaluation.steps}:
        raise ConfigError(f"config key 'register.metric': {metric} needs {found[2]} in eval.steps")
    if found[3] == "acc" and dataset.kind != "classification":
        raise ConfigError(f"config key 'register.metric': {metric} is a classification metric, {dataset.name} reports only losses")
