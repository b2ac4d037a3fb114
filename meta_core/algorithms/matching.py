"""Matching Networks (Vinyals et al., 2016): attention over the support set by cosine similarity.

``P(y | x, S) = sum_i softmax_i(cos(f(x), g(x_i))) onehot(y_i)`` with ``f = g`` the
conv embedding; the optional full-context embeddings (LSTMs over the support set)
are not used.
"""

import torch
import torch.nn.functional as F

from meta_core.algorithms.episodic import EPISODIC, EpisodeLearner, one_hot
from meta_core.registry import AlgorithmSpec, register_algorithm


def attend(queries: torch.Tensor, support: torch.Tensor, support_onehot: torch.Tensor) -> torch.Tensor:
    """``(queries, ways)`` label probabilities: softmax over cosine similarities to each support example."""
    similarity = F.normalize(queries, dim=-1) @ F.normalize(support, dim=-1).T
    return similarity.softmax(-1) @ support_onehot


class MatchingNet(EpisodeLearner):
    """Logits are log-probabilities, so cross-entropy on them is the paper's negative log-likelihood."""

    def classify(self, support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        return attend(queries, support, one_hot(labels, self.ways)).log()


register_algorithm(AlgorithmSpec("matchingnet", MatchingNet, "query NLL of cosine-softmax attention over the support set", **EPISODIC))
