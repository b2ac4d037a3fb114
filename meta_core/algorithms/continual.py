"""Lifelong learning's learners (OML, ANML): a one-pass SGD learner of a stream of classes, meta-learned to keep them.

The adapted state is the weights after learning a stream (a task's support set) in order, one SGD step of
``inner_lr`` per example on the ``fast_weights``. A count of adaptation is a number of classes: the state after
``n`` is the weights once the stream reaches its ``n+1``-th new class, so one pass gives the state after every
count. Meta-training differentiates the query loss (new examples of the trajectory's classes and a batch of other
classes to remember) through the whole pass, as MAML does through its steps.

With ``reset`` each class's output row is drawn afresh (Kaiming-normal, as the authors' code does) just before
the stream's first example of it: the stream's classes are learned from nothing, as new classes would be, and
the meta-gradient cannot come from rows that already know them. The rows are drawn from torch's generator, which
the callers seed from the task's key (``draws_noise``), so the pass is a pure function of the task.

Evaluation (``evaluate_task``) is the continual-learning protocol's: for each inner learning rate of ``test_lrs`` and
each count ``n``, the accuracy on the stream's own examples of its first ``n`` classes (``train_acc``: what was
kept) and on the query's examples of those classes (``acc``: how it generalises).
"""

import copy
import math

import torch
from torch import nn

from meta_core.algorithms.base import Metrics, accuracy, task_loss
from meta_core.algorithms.maml import MAML
from meta_core.models import Params
from meta_core.registry import Option, is_number, no_head, non_negative_int, positive_int
from meta_core.tasks import Task

HEAD_WEIGHT = "head.weight"


def first_examples(labels: torch.Tensor) -> list[int]:
    """The positions of each class's first example in a stream, in order."""
    seen, firsts = set(), []
    for i, label in enumerate(labels.tolist()):
        if label not in seen:
            seen.add(label)
            firsts.append(i)
    return firsts


class Classifier(nn.Module):
    """``body``, a network without its head (``features`` values an example), and a linear ``head`` of one row a class."""

    def __init__(self, body: nn.Module, classes: int):
        super().__init__()
        self.body, self.head = body, nn.Linear(body.features, classes)

    def forward(self, x):
        return self.head(self.body(x))


class StreamLearner(MAML):
    """A network (``Classifier``) whose head has ``classes`` rows (one per class a stream may hold: labels are
    ``0..classes-1``), learning one example at a time. ``first_order`` holds the inner gradients constant (ANML's
    published code)."""

    def __init__(self, model: nn.Module, kind: str, *, classes: int = 1000, reset: bool = True, test_lrs: list[float] | None = None, **kwargs):
        super().__init__(Classifier(model, classes), kind, **kwargs)
        self.outputs, self.reset = classes, reset
        self.draws_noise = reset
        self.test_lrs = list(test_lrs or [self.inner_lr])

    def fresh_row(self, weights: Params, label: int) -> Params:
        """The weights with output row ``label`` drawn afresh (Kaiming-normal, fan-in); differentiable in the others."""
        w = weights[HEAD_WEIGHT]
        row = torch.randn(1, w.shape[1], dtype=w.dtype, device=w.device) * math.sqrt(2.0 / w.shape[1])
        return {**weights, HEAD_WEIGHT: w.index_put((torch.tensor([label], device=w.device),), row)}

    def stream_inputs(self, weights: Params, x: torch.Tensor) -> torch.Tensor:
        """What the inner steps read of the stream's examples (and ``loss`` takes): the examples themselves."""
        return x

    def adaptations(self, params: Params, task: Task, counts: list[int]) -> list[Params]:
        """The weights after the stream's first ``n`` classes, for each ``n`` of ``counts`` (ascending), in one pass."""
        y = task.support_y
        firsts = first_examples(y)
        new_class = {i: int(y[i]) for i in firsts}
        weights, done, states = self.weights(params), 0, []
        x = self.stream_inputs(weights, task.support_x)
        for n in counts:
            stop = firsts[n] if n < len(firsts) else len(y)
            for i in range(done, stop):
                if self.reset and i in new_class:
                    weights = self.fresh_row(weights, new_class[i])
                weights = self.inner_step(params, weights, x[i : i + 1], y[i : i + 1])
            done = max(done, stop)
            states.append(weights)
        return states

    def adapt(self, params: Params, task: Task, steps: int | None = None) -> Params:
        """The weights after ``steps`` classes of the stream; by default all of it."""
        return self.adaptations(params, task, [len(task.support_y) if steps is None else steps])[0]

    def at_lr(self, lr: float) -> "StreamLearner":
        """The same learner stepping at inner rate ``lr``."""
        learner = copy.copy(self)
        learner.inner_lr = lr
        return learner

    def evaluate_task(self, params: Params, task: Task, steps: list[int]) -> Metrics:
        """Per inner rate ``j`` of ``test_lrs`` and count ``n``: ``lr<j>_steps<n>_train_acc`` on the stream's examples of
        its first ``n`` classes, ``lr<j>_steps<n>_acc`` and ``_loss`` on the query's examples of them."""
        counts, metrics = sorted(steps), {}
        classes = [int(task.support_y[i]) for i in first_examples(task.support_y)]
        for j, lr in enumerate(self.test_lrs):
            for n, adapted in zip(counts, self.at_lr(lr).adaptations(params, task, counts), strict=True):
                learned = torch.tensor(classes[:n], device=task.support_y.device)
                train, test = torch.isin(task.support_y, learned), torch.isin(task.query_y, learned)
                with torch.no_grad():
                    out_train, out_test = self.predict(adapted, task.support_x[train]), self.predict(adapted, task.query_x[test])
                metrics[f"lr{j}_steps{n}_train_acc"] = accuracy(out_train, task.support_y[train])
                metrics[f"lr{j}_steps{n}_acc"] = accuracy(out_test, task.query_y[test])
                metrics[f"lr{j}_steps{n}_loss"] = task_loss(self.kind, out_test, task.query_y[test])
        return metrics


def stream_options(remember: int, replay: bool) -> tuple[Option, ...]:
    """The options every lifelong learner takes, with its paper's defaults for the task source's ``remember`` and ``replay``."""
    return (
        positive_int("classes", 1000, "output rows: labels a stream may hold (at least the classes of any split)"),
        Option("reset", True, "true or false", lambda v: isinstance(v, bool), "draw each class's output row afresh before its first example"),
        Option("first_order", False, "true or false", lambda v: isinstance(v, bool), "hold the inner gradients constant"),
        non_negative_int("remember", remember, "query examples of other classes, per trajectory"),
        Option("replay", replay, "true or false", lambda v: isinstance(v, bool), "the query holds the trajectory's own examples too"),
        positive_int("test_shots", 15, "meta-test: training examples per class, learned one at a time"),
        positive_int("test_queries", 5, "meta-test: held-out examples per class"),
        Option("test_lrs", None, "null or a list of positive numbers", lambda v: v is None or (isinstance(v, list) and bool(v) and all(is_number(r) and r > 0 for r in v)),
               "meta-test: the inner rates tried, the best on the training examples reported (null: inner_lr)"),
    )  # fmt: skip


TASK_OPTIONS = ("remember", "replay", "test_shots", "test_queries")  # the task source's (meta_core.trajectories), not the learner's


def learner_of(cls):
    """``AlgorithmSpec.make`` for a stream learner, which takes every option but the task source's."""

    def make(network, kind, **options):
        return cls(network, kind, **{k: v for k, v in options.items() if k not in TASK_OPTIONS})

    return make


LIFELONG = dict(kinds=("classification",), head=no_head, lifelong=True)  # what every stream learner's spec says
