"""Prototypical Networks (Snell et al., 2017): classify by distance to each class's mean embedding."""

import torch

from meta_core.algorithms.episodic import EPISODIC, EpisodeLearner, one_hot
from meta_core.registry import AlgorithmSpec, register_algorithm


def prototypes(embeddings: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """``(ways, features)``: the mean support embedding of each class."""
    members = one_hot(labels, ways)
    return members.T @ embeddings / members.sum(0).unsqueeze(-1)


def negative_squared_distances(queries: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``(queries, ways)`` logits ``-||q - c||^2``."""
    return -((queries.unsqueeze(1) - centres.unsqueeze(0)) ** 2).sum(-1)


class ProtoNet(EpisodeLearner):
    def classify(self, support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        return negative_squared_distances(queries, prototypes(support, labels, self.ways))


register_algorithm(AlgorithmSpec("protonet", ProtoNet, "query cross-entropy on `-||f(x) - class mean||^2`", **EPISODIC))
