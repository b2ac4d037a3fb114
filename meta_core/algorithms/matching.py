"""Matching Networks (Vinyals et al., 2016): attention over the support set by cosine similarity.

``P(y | x, S) = sum_i softmax_i(cos(f(x), g(x_i))) onehot(y_i)`` with ``f = g`` the
conv embedding; the optional full-context embeddings (LSTMs over the support set)
are not used.
"""

import torch
import torch.nn.functional as F

from meta_core.algorithms.episodic import EpisodeLearner, one_hot
from meta_core.models import Params, forward
from meta_core.registry import AlgorithmSpec, register_algorithm
from meta_core.tasks import Task


def attend(queries: torch.Tensor, support: torch.Tensor, support_onehot: torch.Tensor) -> torch.Tensor:
    """``(queries, ways)`` label probabilities: softmax over cosine similarities to each support example."""
    similarity = F.normalize(queries, dim=-1) @ F.normalize(support, dim=-1).T
    return similarity.softmax(-1) @ support_onehot


class MatchingNet(EpisodeLearner):
    """Logits are log-probabilities, so cross-entropy on them is the paper's negative log-likelihood."""

    def logits(self, params: Params, task: Task) -> torch.Tensor:
        support = forward(self.model, params, task.support_x)
        probs = attend(forward(self.model, params, task.query_x), support, one_hot(task.support_y, self.ways))
        return probs.log()


register_algorithm(
    AlgorithmSpec(
        "matchingnet", MatchingNet, "query NLL of cosine-softmax attention over the support set", kinds=("classification",), inner_loop=False
    )
)
