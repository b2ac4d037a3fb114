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


def grad(fn, has_aux: bool = False):
    """Like ``torch.func.grad(fn, has_aux)``: the gradient of ``fn(params, *args)`` w.r.t. the dict ``params``."""

    def gradient(params: dict[str, torch.Tensor], *args):
        if peek_interpreter_stack() is not None or torch.compiler.is_compiling():  # inside vmap or torch.compile: functional
            return torch.func.grad(fn, has_aux=has_aux)(params, *args)
        nested = torch.is_grad_enabled() and any(p.requires_grad for p in params.values())
        inputs = {k: p if nested and p.requires_grad else p.detach().requires_grad_() for k, p in params.items()}
        with torch.enable_grad():
            out = fn(inputs, *args)
            loss, aux = out if has_aux else (out, None)
            grads = torch.autograd.grad(loss, list(inputs.values()), create_graph=nested, allow_unused=True)
        grads = {k: torch.zeros_like(p) if g is None else g for (k, p), g in zip(inputs.items(), grads, strict=True)}
        return (grads, aux) if has_aux else grads

    return gradient
