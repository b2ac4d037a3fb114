"""The learner protocol: all that distribution, evaluation and serving ever call.

A learner (an ``Algorithm``) is pure functions of a parameter dict ``params``:

- ``initial_params(seed) -> Params``: the meta-parameters training starts from.
- ``task_gradient(params, task, pre_adapt=True) -> (Params, Metrics)``: one task's meta-gradient w.r.t. every
  meta-parameter, and its metrics (``meta_loss``, ``post_adapt_*``, ``pre_adapt_*``). Written with
  ``meta_core.autodiff.grad``, so that it can be ``vmap``-ed over a stack of tasks.
- ``adaptations(params, task, counts) -> list[Adapted]``: the learner's state after each of ``counts``
  adaptation steps (ascending) on what ``task`` gives it to adapt to, from one run of adaptation; ``adapt(params,
  task, steps=None)`` is the state after one count (by default ``inner_steps``, the count training takes).
  What the state is belongs to the learner: adapted weights, an embedded support set, a recurrent state.
- ``predict(adapted, query_x) -> Tensor``: outputs for inputs from an adapted state.

``task_gradient`` adapts with ``adapt``; ``evaluate_task`` (defined here, once) reports ``query_metrics`` of the states
``adaptations`` gives at each step count; serving answers with ``predict(adapt(...))`` (``answer``). So training,
evaluation and serving share one adaptation path, and a learner never re-implements it for one of them.

Two families implement it: ``GradientLearner`` (``gradient.py``: MAML, FOMAML, ANIL, Meta-SGD, Reptile, iMAML,
MetaGAN), whose state is the weights after inner SGD steps on the support set, and ``EpisodeLearner``
(``episodic.py``: ProtoNets, Matching Nets, MANN, hallucination), whose state is the support set as it reads it,
given an embedding network without a head. MAML for RL (``maml_rl.py``) adapts by policy-gradient steps on its
own rollouts; its state is the adapted policy with the rollouts it made.

The families to come fit without special cases:

- Lifelong learning (OML, ANML): a ``GradientLearner`` whose ``fast_weights`` are the adapted part of the network
  and whose ``inner_step`` is one pass over the task's stream (its support set, in order), one SGD step per
  example; ``task_gradient`` differentiates the outer loss (the query set, plus a replay of the stream) through
  ``adapt``, as MAML does; ``predict`` is the network with the adapted weights.
- Meta-RL: the task is an environment (``meta_core.envs``: a goal, and every episode's seed and exploration
  noise); ``sample`` runs its episodes, and ``task_gradient`` reads them; ProMP (``promp.py``) is ``maml_rl``'s
  adaptation with another inner and outer surrogate, and ``outer_steps`` on each sampled batch; RL2 has no inner gradient: its state
  is the recurrent policy's hidden state after ``n`` episodes of the task, and ``task_gradient`` is the policy
  gradient of the whole multi-episode trial. ``query_metrics`` is then minus the mean return of the state's
  rollouts, as ``maml_rl`` reports it.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from meta_core.models import Params, init_params
from meta_core.tasks import Task, seeded_noise

Metrics = dict[str, torch.Tensor]
PREDICTION_SEED = 0  # the noise a served learner draws, the same for every request: a request gets the same answer each time


def task_loss(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, y) if kind == "regression" else F.cross_entropy(out, y)


def accuracy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out.argmax(-1) == y).float().mean()


class Algorithm:
    """A learner: ``model`` is its network, ``kind`` ``"regression"`` (MSE), ``"classification"`` (cross-entropy,
    with accuracy in the metrics) or ``"rl"``; ``outputs`` the values it answers per example (ways, or 1).
    ``inner_steps`` is the adaptation count training takes: what ``adapt`` does by default, the evaluation row
    reported as post-adaptation. ``input_shape`` is one example's shape, for learners that generate examples.
    """

    # Whether ``task_gradient`` and ``adapt`` draw random numbers (from torch's default generator). The callers then seed
    # it from each task's key (``meta_core.tasks.seeded_noise``) and run task by task, never vmap-ed: a task sees
    # the same noise on any worker, as it sees the same examples. Serving seeds it with ``PREDICTION_SEED``.
    draws_noise = False
    # Whether its differentiated inner loop is recomputed in the backward pass (``GradientLearner``); never vmap-ed then.
    checkpoint_inner = False
    # Outer steps the driver takes on one sampled batch (``sample``): several for ProMP, one elsewhere.
    outer_steps = 1

    def __init__(self, model: nn.Module, kind: str, *, outputs: int | None = None, inner_steps: int = 1, input_shape: tuple[int, ...] | None = None):
        self.model, self.kind, self.outputs = model, kind, outputs
        self.inner_steps, self.input_shape = inner_steps, input_shape

    def init(self, weights: Params) -> Params:
        """Meta-parameters at the start of training, from freshly initialised weights."""
        return dict(weights)

    def initial_params(self, seed: int) -> Params:
        """The meta-parameters training starts from: the model's weights drawn from ``seed``, then ``init``."""
        return self.init(init_params(self.model, seed))

    def sample(self, behaviour: Params, tasks: list) -> tuple[list, Metrics]:
        """What ``task_gradient`` reads of each of a share's tasks, and metrics of drawing it (summed over the tasks).

        The tasks themselves for a few-shot learner; for a meta-RL learner, their episodes, run by the ``behaviour``
        parameters (those at the start of the meta-step) and the policies adapted from them, all of the tasks'
        environments stepped as one batch. A pure function of its arguments, so a worker may keep it for the
        meta-step's ``outer_steps`` and a replacement recomputes it.
        """
        return tasks, {}

    def outer_update(self, flat, gradient, query) -> tuple | None:
        """Where the learner takes the outer step itself (a trust region): the new flat parameters (numpy) from ``flat``
        and the meta-batch's mean meta-gradient ``gradient``, and metrics of the step, asking ``query(name, at,
        vector)`` for the meta-batch's mean of ``task_query`` at the flat parameters ``at``. None: the outer optimizer
        steps on ``gradient``."""
        return None

    def task_query(self, name: str, params: Params, task, vector: torch.Tensor) -> torch.Tensor:
        """A flat float64 vector that ``outer_update`` asks of one task's sampled data (``sample``) at ``params``."""
        raise NotImplementedError

    def task_gradient(self, params: Params, task: Task, pre_adapt: bool = True) -> tuple[Params, Metrics]:
        """This task's meta-gradient w.r.t. every meta-parameter, and its metrics. ``pre_adapt`` asks for the
        metrics before adapting too, where they cost extra work (workers ask only every few steps)."""
        raise NotImplementedError

    def adaptations(self, params: Params, task: Task, counts: list[int]) -> list:
        """The adapted state after each of ``counts`` (ascending) steps of adaptation to ``task``, from one run.

        Only what adaptation reads of the task is read (its support set, for a few-shot task; the environment,
        for an RL task): never the query set.
        """
        raise NotImplementedError

    def adapt(self, params: Params, task: Task, steps: int | None = None):
        """The adapted state after ``steps`` (default: the trained number of) adaptation steps."""
        return self.adaptations(params, task, [self.inner_steps if steps is None else steps])[0]

    def predict(self, adapted, query_x: torch.Tensor) -> torch.Tensor:
        """Outputs for ``query_x`` from an adapted state (``adapt``)."""
        raise NotImplementedError

    def query_metrics(self, adapted, task: Task, prefix: str, out: torch.Tensor | None = None) -> Metrics:
        """``<prefix>_loss`` (and ``<prefix>_acc``) of ``adapted`` on the query set; ``out``: its predictions, if
        computed already. A fresh prediction runs without recording a graph: metrics are never differentiated."""
        if out is None:
            with torch.no_grad():
                out = self.predict(adapted, task.query_x)
        metrics = {f"{prefix}_loss": task_loss(self.kind, out, task.query_y).detach()}
        if self.kind == "classification":
            metrics[f"{prefix}_acc"] = accuracy(out, task.query_y)
        return metrics

    def evaluate_task(self, params: Params, task: Task, steps: list[int]) -> Metrics:
        """Query metrics before adaptation (``steps0_*``) and after each count in ``steps`` (``steps<n>_*``)."""
        counts, metrics = [0, *sorted(steps)], {}
        for n, adapted in zip(counts, self.adaptations(params, task, counts), strict=True):
            metrics.update(self.query_metrics(adapted, task, f"steps{n}"))
        return metrics


def support_task(support_x: torch.Tensor, support_y: torch.Tensor) -> Task:
    """A task of a support set alone, for ``adapt`` (a request's queries come without labels)."""
    return Task(support_x, support_y, support_x[:0], support_y[:0])


def answer(algo: Algorithm, params: Params, support_x, support_y, query_x, steps: int | None = None) -> torch.Tensor:
    """Outputs for ``query_x`` once ``algo`` has adapted to the labelled support set in ``steps`` (default: as
    trained): ``predict`` of ``adapt``, as served. A learner that draws noise draws ``PREDICTION_SEED``'s."""
    noise = seeded_noise(query_x.device, PREDICTION_SEED) if algo.draws_noise else contextlib.nullcontext()
    with noise:
        return algo.predict(algo.adapt(params, support_task(support_x, support_y), steps), query_x)
