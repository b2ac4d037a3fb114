"""Specs of algorithms and models: one beside each class, gathered here by name.

Config validation, the learner's builder, serving and tracking read a spec
instead of lists of names kept in several places, so a new algorithm or model is
one file that registers its spec (``register_algorithm``, ``register_model``);
the built-in ones are found by importing every module of their package
(``import_modules``). A ``Learner`` is the recipe that builds an algorithm with its
model from plain arguments; it holds the specs themselves, so a worker process
builds the same learner whether or not the spec was registered there.
"""

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass(frozen=True)
class Option:
    """A key of an algorithm's or a model's config section: its default, and the values it accepts."""

    name: str
    default: Any
    expects: str  # what a valid value is, in words, for the error message
    accepts: Callable[[Any], bool]
    help: str = ""


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(name: str, default: int, help: str = "") -> Option:
    return Option(name, default, "a positive integer", lambda v: is_int(v) and v > 0, help)


def non_negative_int(name: str, default: int, help: str = "") -> Option:
    return Option(name, default, "a non-negative integer", lambda v: is_int(v) and v >= 0, help)


def positive_number(name: str, default: float, help: str = "") -> Option:
    return Option(name, default, "a positive number", lambda v: is_number(v) and v > 0, help)


def task_outputs(outputs: int) -> int:
    """A network with one output per way (or value): what most learners are given."""
    return outputs


def no_head(outputs: int) -> None:
    """A network without its head, an embedding: what a learner that compares examples is given."""
    return None


@dataclass(frozen=True)
class AlgorithmSpec:
    """An algorithm as the pipeline sees it.

    ``make(network, kind, outputs=, inner_steps=, input_shape=, **options)`` builds it, with ``inner_lr=`` where
    ``inner_loop``, for a network built by its model's spec with ``head(outputs)`` outputs (``outputs``: the
    task's ways, or 1 value; ``None``: an embedding network without a head). ``kinds`` are the task kinds it
    learns; ``models`` the models it runs with (empty: any model for those kinds). ``inner_loop``: it adapts
    by gradient steps (else by reading the support set, and ``algorithm.inner_steps`` only names the
    evaluation row reported as post-adaptation). ``checkpointable``: its differentiated inner
    loop can be recomputed in the backward pass (``algorithm.checkpoint_inner``). ``higher_is_better``: the
    metrics (``loss``, ``acc``) for which a larger value wins, for choosing a champion. ``lifelong``: it learns
    streams of classes, one example at a time: its tasks are ``meta_core.trajectories``' and the evaluate stage
    runs the continual-learning protocol (``pipelines.stages.lifelong``).
    """

    name: str
    make: Callable[..., Any]
    summary: str
    options: tuple[Option, ...] = ()
    kinds: tuple[str, ...] = ("regression", "classification")
    models: tuple[str, ...] = ()
    inner_loop: bool = True
    checkpointable: bool = False
    higher_is_better: tuple[str, ...] = ("acc",)
    head: Callable[[int], int | None] = task_outputs
    lifelong: bool = False
    driver_step: bool = False  # several outer steps per sampled batch, or its own outer step: the driver's, not allreduce's


@dataclass(frozen=True)
class ModelSpec:
    """A network as the pipeline sees it: ``make(input_shape, outputs, **options)`` builds it for examples of
    ``input_shape`` and ``outputs`` values per example (ways, or 1); with ``outputs=None``, without its head:
    an embedding network whose ``features`` attribute is the size of its output (what episode learners are
    given). ``inputs`` are the kinds of example it reads (``images``, ``vectors``, ``observations``)."""

    name: str
    make: Callable[..., nn.Module]
    summary: str
    inputs: tuple[str, ...]
    options: tuple[Option, ...] = ()


ALGORITHMS: dict[str, AlgorithmSpec] = {}
MODELS: dict[str, ModelSpec] = {}


def register_algorithm(spec: AlgorithmSpec) -> AlgorithmSpec:
    ALGORITHMS[spec.name] = spec
    return spec


def register_model(spec: ModelSpec) -> ModelSpec:
    MODELS[spec.name] = spec
    return spec


def import_modules(package: str) -> None:
    """Import every module of ``package`` (a package's ``__name__``): each built-in spec registers itself so."""
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(f"{package}.{module.name}")


@dataclass(frozen=True)
class Learner:
    """What builds an algorithm with its model, as plain arguments: the same learner in every process."""

    algorithm: AlgorithmSpec
    model: ModelSpec
    kind: str
    input_shape: tuple[int, ...]
    outputs: int
    inner_steps: int
    inner_lr: float
    options: Mapping[str, Any] = field(default_factory=dict)  # the algorithm's own, checkpoint_inner among them
    model_options: Mapping[str, Any] = field(default_factory=dict)

    def build(self):
        network = self.model.make(self.input_shape, self.algorithm.head(self.outputs), **self.model_options)
        inner_lr = {"inner_lr": self.inner_lr} if self.algorithm.inner_loop else {}
        return self.algorithm.make(
            network, self.kind, outputs=self.outputs, inner_steps=self.inner_steps, input_shape=self.input_shape, **inner_lr, **self.options
        )
