"""Which parameters the L2 term (weight decay) covers: ``weight_decay_on: all | kernels``.

- ``all``: every trainable parameter (PyTorch's ``weight_decay`` on one parameter group).
- ``kernels``: the weights of convolutions and dense (``nn.Linear``) layers only, as Keras'
  ``kernel_regularizer`` (the authors' code): biases, BatchNorm scales and shifts, embeddings
  and LSTM weights are not decayed.

Keras' ``l2(λ)`` adds λ‖w‖² to the loss, whose gradient is 2λw; PyTorch's ``weight_decay = wd``
adds wd·w (the loss (wd/2)‖w‖²). The same objective is therefore ``weight_decay = 2λ``: the
paper's "L2 regularization with a regularization parameter of 0.005" (ResNet-32) is
``weight_decay: 0.01, weight_decay_on: kernels``; the authors' code's default ``l2 = 1e-4`` is
``weight_decay: 2e-4``.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["DECAY_TARGETS", "decayed_parameters", "kernel_parameters"]

DECAY_TARGETS = ("all", "kernels")


def kernel_parameters(model: nn.Module) -> list[Tensor]:
    """The trainable weights of the model's convolutions and dense layers, in
    ``model.parameters()`` order.
    """
    kernels = {id(m.weight) for m in model.modules()
               if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)
               and isinstance(getattr(m, "weight", None), Tensor)}
    return [p for p in model.parameters() if p.requires_grad and id(p) in kernels]


def decayed_parameters(model: nn.Module, on: str = "all") -> list[Tensor]:
    """The trainable parameters weight decay applies to (see the module docstring)."""
    if on == "all":
        return [p for p in model.parameters() if p.requires_grad]
    if on == "kernels":
        found = kernel_parameters(model)
        if not found:
            raise ValueError(f"weight_decay_on: kernels, but {type(model).__name__} has no "
                             "convolution or nn.Linear weight")
        return found
    raise ValueError(f"weight_decay_on must be one of {', '.join(DECAY_TARGETS)} (got {on!r})")
