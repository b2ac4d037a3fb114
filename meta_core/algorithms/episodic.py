"""Learners that adapt by reading the support set instead of taking gradient steps."""

from typing import NamedTuple

import torch
from torch import nn

from meta_core.algorithms.base import Algorithm, Metrics, task_loss
from meta_core.autodiff import grad
from meta_core.models import Params, forward
from meta_core.registry import no_head
from meta_core.tasks import Task


def one_hot(labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Float one-hot rows, written as a comparison so that it runs under ``vmap``."""
    return (labels.unsqueeze(-1) == torch.arange(ways, device=labels.device)).float()


class Episode(NamedTuple):
    """An episode learner's adapted state: its parameters and the labelled support set, as it reads it."""

    params: Params
    support: torch.Tensor
    labels: torch.Tensor


class EpisodeLearner(Algorithm):
    """Query logits are a function of the whole episode; the meta-gradient is that of the query loss.

    Given ``model``, an embedding network without a head (its spec's ``head`` is ``no_head``), of
    ``model.features`` values per example, and ``outputs``, the number of ways. Reading the support set is
    the whole adaptation: every step count gives the same state, and ``inner_steps`` only names the
    evaluation row reported as post-adaptation.
    """

    def __init__(self, model: nn.Module, kind: str, **kwargs):
        super().__init__(model, kind, **kwargs)
        if self.outputs is None:
            raise ValueError(f"{type(self).__name__}: outputs, the number of ways, is needed")
        self.features, self.ways = model.features, self.outputs

    def adaptations(self, params: Params, task: Task, counts: list[int]) -> list[Episode]:
        """The embedded support set, the same after any number of steps (a prediction before seeing the support
        labels would be chance by construction: labels are assigned per episode)."""
        support, labels = self.support_set(params, forward(self.model, params, task.support_x), task.support_y)
        return [Episode(params, support, labels)] * len(counts)

    def support_set(self, params: Params, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedded, labelled support set that queries are classified against (a hallucinator adds to it)."""
        return embeddings, labels

    def predict(self, adapted: Episode, query_x: torch.Tensor) -> torch.Tensor:
        """``(queries, ways)`` logits of the queries given the support set."""
        return self.classify(adapted.support, adapted.labels, forward(self.model, adapted.params, query_x))

    def classify(self, support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """``(queries, ways)`` logits of embedded queries given the embedded support set."""
        raise NotImplementedError

    def episode_loss(self, params: Params, task: Task) -> tuple[torch.Tensor, Metrics]:
        adapted = self.adapt(params, task)
        out = self.predict(adapted, task.query_x)
        post = self.query_metrics(adapted, task, "post_adapt", out)
        pre = {k.replace("post_adapt", "pre_adapt"): v for k, v in post.items()}
        return task_loss(self.kind, out, task.query_y), {"meta_loss": post["post_adapt_loss"], **post, **pre}

    def task_gradient(self, params: Params, task: Task, pre_adapt: bool = True) -> tuple[Params, Metrics]:
        """Pre- and post-adaptation metrics are both the query metrics given the support set (see ``adaptations``):
        they cost nothing extra, so they are reported whatever ``pre_adapt`` asks."""
        return grad(self.episode_loss, has_aux=True)(params, task)


EPISODIC = dict(kinds=("classification",), inner_loop=False, head=no_head)  # what every episode learner's spec says
