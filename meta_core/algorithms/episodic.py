"""Learners that adapt by conditioning on the support set instead of taking gradient steps."""

import torch
from torch import nn

from meta_core.algorithms.base import Algorithm, task_loss
from meta_core.autodiff import grad
from meta_core.models import Params, forward
from meta_core.tasks import Task


def one_hot(labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Float one-hot rows, written as a comparison so that it runs under ``vmap``."""
    return (labels.unsqueeze(-1) == torch.arange(ways, device=labels.device)).float()


class EpisodeLearner(Algorithm):
    """Query logits are a function of the whole episode; the meta-gradient is that of the query loss.

    The classifier's head is dropped: its features are the embedding, and its
    output size is the number of ways. There is no inner loop, so
    ``inner_steps`` and ``inner_lr`` are unused.
    """

    def __init__(self, model: nn.Module, kind: str, **kwargs):
        super().__init__(model, kind, **kwargs)
        self.features, self.ways = model.head.in_features, model.head.out_features
        model.head = nn.Identity()

    def logits(self, params: Params, task: Task) -> torch.Tensor:
        """``(queries, ways)`` logits for the query set given the labelled support set."""
        weights = self.weights(params)
        support, labels = self.support_set(params, forward(self.model, weights, task.support_x), task.support_y)
        return self.classify(support, labels, forward(self.model, weights, task.query_x))

    def support_set(self, params: Params, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedded, labelled support set that queries are classified against (a hallucinator adds to it)."""
        return embeddings, labels

    def classify(self, support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """``(queries, ways)`` logits of embedded queries given the embedded support set."""
        raise NotImplementedError

    def predict(self, params: Params, support_x, support_y, query_x, steps: int | None = None) -> torch.Tensor:
        """Seeing the support set is the adaptation: ``steps`` has nothing to change."""
        unlabelled = torch.zeros(len(query_x), dtype=torch.long, device=query_x.device)
        return self.logits(params, Task(support_x, support_y, query_x, unlabelled))

    def episode_loss(self, params: Params, task: Task):
        out = self.logits(params, task)
        metrics = self.task_metrics(params, params, task, pre_adapt=False, out=out)
        pre = {k.replace("post_adapt", "pre_adapt"): v for k, v in metrics.items() if k.startswith("post_adapt")}
        return task_loss(self.kind, out, task.query_y), {**metrics, **pre}

    def task_grad(self, params: Params, task: Task, pre_adapt: bool = True) -> tuple[Params, dict[str, torch.Tensor]]:
        """Pre- and post-adaptation metrics are both the query metrics given the support set (see ``evaluate``):
        they cost nothing extra, so they are reported whatever ``pre_adapt`` asks."""
        return grad(self.episode_loss, has_aux=True)(params, task)

    def evaluate(self, params: Params, task: Task, steps: list[int]) -> dict[str, torch.Tensor]:
        """The query metrics given the support set, reported under ``steps0`` and every count in ``steps``.

        Seeing the support set is the whole adaptation: step counts do not change
        it, and a prediction before seeing the support labels is chance by
        construction (labels are assigned per episode), so every row is the same.
        """
        metrics = self.query_metrics(params, task, "adapted", self.logits(params, task))
        return {k.replace("adapted", f"steps{n}"): v for n in [0, *steps] for k, v in metrics.items()}
