"""One ``grad`` for every algorithm: ``torch.func`` under ``vmap`` or ``torch.compile``, plain autograd otherwise.

Algorithms are written once, as pure functions differentiated with ``grad(fn)``
(nesting for second order, as in the torch.func MAML examples). Outside a
``torch.func`` transform the same gradients come from ``torch.autograd.grad``,
with ``create_graph`` exactly when an outer gradient is being taken. That path is
the faster one for a conv net's second-order meta-gradient on CPU (benchmarks/
measures it), and it is the one activation checkpointing works with. Under
``torch.compile`` the functional path lets the whole meta-gradient trace as one graph.
"""

import torch
from torch._C._functorch import peek_interpreter_stack


def functional() -> bool:
    """Inside ``vmap`` or ``torch.compile``, where gradients must come from ``torch.func``."""
    return peek_interpreter_stack() is not None or torch.compiler.is_compiling()


def leaves(params: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """The tensors to differentiate with respect to, and whether an outer gradient flows through them (second order)."""
    nested = torch.is_grad_enabled() and any(p.requires_grad for p in params.values())
    return {k: p if nested and p.requires_grad else p.detach().requires_grad_() for k, p in params.items()}, nested


def autograd(loss, inputs: dict[str, torch.Tensor], nested: bool, retain: bool = False) -> dict[str, torch.Tensor]:
    grads = torch.autograd.grad(loss, list(inputs.values()), create_graph=nested, retain_graph=nested or retain, allow_unused=True)
    return {k: torch.zeros_like(p) if g is None else g for (k, p), g in zip(inputs.items(), grads, strict=True)}


def grad(fn, has_aux: bool = False):
    """Like ``torch.func.grad(fn, has_aux)``: the gradient of ``fn(params, *args)`` w.r.t. the dict ``params``."""

    def gradient(params: dict[str, torch.Tensor], *args):
        if functional():
            return torch.func.grad(fn, has_aux=has_aux)(params, *args)
        inputs, nested = leaves(params)
        with torch.enable_grad():
            out = fn(inputs, *args)
            loss, aux = out if has_aux else (out, None)
            grads = autograd(loss, inputs, nested)
        return (grads, aux) if has_aux else grads

    return gradient


def grads(fn, has_aux: bool = False):
    """For ``fn(params, *args)`` returning a tuple of losses (and an aux): one gradient dict per loss, from one forward
    pass and one backward pass each. For a learner with two objectives over the same work (MetaGAN)."""

    def gradients(params: dict[str, torch.Tensor], *args):
        if functional():
            losses, backward, *aux = torch.func.vjp(lambda p: fn(p, *args), params, has_aux=has_aux)
            picks = [tuple(torch.ones_like(x) if j == i else torch.zeros_like(x) for j, x in enumerate(losses)) for i in range(len(losses))]
            result = [backward(pick)[0] for pick in picks]
            return (result, aux[0]) if has_aux else result
        inputs, nested = leaves(params)
        with torch.enable_grad():
            out = fn(inputs, *args)
            losses, aux = out if has_aux else (out, None)
            result = [autograd(loss, inputs, nested, retain=i < len(losses) - 1) for i, loss in enumerate(losses)]
        return (result, aux) if has_aux else result

    return gradients
