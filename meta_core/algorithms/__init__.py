"""The algorithms; importing this package registers each one's spec (``meta_core.registry.ALGORITHMS``)."""

from meta_core.algorithms import anil, hallucination, imaml, maml, maml_rl, mann, matching, metagan, metasgd, protonet, reptile  # noqa: F401
from meta_core.algorithms.base import Algorithm

__all__ = ["Algorithm"]
