"""The loss a model computes itself from the labels, as the curvature operators' ``loss_fn``.

Hugging Face models (and others written the same way) return their training loss when given
the labels: ``model(**inputs, labels=labels).loss``. A causal language model scores the logits
at position t against the label at t + 1 (it shifts the labels itself); every model skips the
labels equal to ``-100``; and the loss is the **mean over the tokens that count**, not over
the sequences. :class:`ModelLoss` is that loss as a ``loss_fn``: it puts the labels into the
inputs, reads ``outputs.loss``, and counts the units the model averages over,

    u(y) = #{(b, t) : y[b, t] ≠ −100, t ≥ 1}     (causal: after the shift)
    u(y) = #{(b, t) : y[b, t] ≠ −100}            (otherwise, e.g. a masked LM)

so that :class:`~sharpest.curvature.risk.EmpiricalRisk` (and the Hessian and GGN operators
on it) weights chunk c by u_c / Σ u and its loss over the chunks equals the model's loss on
the whole subset as one batch.

Why a loss object and not a wrapper operator: the three things that must agree (the call with
the labels, the value read from the outputs, the unit of the mean) travel together through
everything that takes a ``loss_fn`` (the risk, the operators, the tracker, the callbacks), and
``loss_fn=None`` anywhere means :func:`model_loss` of the model, as the callbacks' contract
(``SharpestTrainerCallback(data, loss_fn=None)``) has it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

__all__ = ["IGNORE_INDEX", "ModelLoss", "is_causal_lm", "model_loss"]

#: The label Hugging Face losses skip (``CrossEntropyLoss``'s ``ignore_index``).
IGNORE_INDEX = -100


class ModelLoss:
    """``loss_fn(outputs, labels) = outputs.loss`` of a model called with ``labels=labels``.

    Args:
        causal: the model scores position t against label t + 1 (a causal LM), so the first
            label of every sequence is not counted.
        ignore_index: the label that is not counted (``-100``).
        label_key: the keyword under which the labels go into the inputs (``"labels"``).

    Used by :class:`~sharpest.curvature.risk.EmpiricalRisk` through two methods besides the
    call: :meth:`with_labels` (the inputs the model is called with) and :meth:`units` (the
    weight of a chunk: the tokens its mean is over).
    """

    def __init__(self, causal: bool, ignore_index: int = IGNORE_INDEX,
                 label_key: str = "labels") -> None:  # fmt: skip
        self.causal, self.ignore_index, self.label_key = bool(causal), ignore_index, label_key

    def __call__(self, outputs: Any, labels: Tensor) -> Tensor:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(
            outputs, "loss", None)
        if loss is None:
            raise TypeError(
                f"the model's own loss is its outputs' .loss, but the model returned "
                f"{type(outputs).__name__} without one (called with {self.label_key}=...). "
                "Pass a loss_fn(outputs, targets) instead."
            )
        return loss

    def with_labels(self, inputs: Any, labels: Tensor) -> Any:
        """``inputs`` with the labels added under ``label_key`` (a Mapping or a dataclass)."""
        if isinstance(inputs, Mapping):
            return {**inputs, self.label_key: labels}
        if dataclasses.is_dataclass(inputs) and not isinstance(inputs, type):
            return dataclasses.replace(inputs, **{self.label_key: labels})
        raise TypeError(
            f"the model's own loss needs inputs it can add {self.label_key}= to (a Mapping "
            f"such as {{'input_ids': ...}}), got {type(inputs).__name__}. Pass a "
            "loss_fn(outputs, targets) instead."
        )

    def units(self, labels: Tensor) -> int:
        """The number of labels the model's mean is over (after the shift, ``≠ ignore_index``).

        Example:
            >>> import torch
            >>> labels = torch.tensor([[5, 7, -100], [9, -100, -100]])
            >>> ModelLoss(causal=True).units(labels), ModelLoss(causal=False).units(labels)
            (1, 3)
        """
        counted = labels[..., 1:] if self.causal else labels
        return int((counted != self.ignore_index).sum())

    def __repr__(self) -> str:
        return f"ModelLoss(causal={self.causal}, ignore_index={self.ignore_index})"


def _causal_lm_names() -> set[str]:
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # transformers not installed, or moved: fall back on the names
        return set()
    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` shifts its labels (scores position t against label t + 1).

    True when its class or a base class is one of ``transformers``' causal LMs
    (``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``: ``GPT2LMHeadModel``, ``LlamaForCausalLM``, …) or is
    named ``…ForCausalLM``, or its config says ``loss_type="ForCausalLM"``; False otherwise
    (masked LMs, classifiers, models of one's own).
    """
    config_type = getattr(getattr(model, "config", None), "loss_type", None)
    if config_type is not None:
        return config_type == "ForCausalLM"
    names = _causal_lm_names()
    return any(cls.__name__ in names or cls.__name__.endswith("ForCausalLM")
               for cls in type(model).__mro__)


def model_loss(model: nn.Module, *, causal: bool | None = None,
               ignore_index: int = IGNORE_INDEX, label_key: str = "labels") -> ModelLoss:
    """The loss ``model`` computes itself from the labels, as a ``loss_fn``.

    ``HessianOperator(model, model_loss(model), (inputs, labels))`` is the Hessian of
    ``model(**inputs, labels=labels).loss`` over the whole subset as one batch: chunks are
    weighted by the tokens that count (see the module docstring). ``loss_fn=None`` does the
    same with ``causal`` detected.

    Args:
        model: the model; ``causal=None`` detects whether it shifts its labels
            (:func:`is_causal_lm`).
        causal: force it: ``True`` for a model that scores position t against label t + 1.
        ignore_index: the label not counted.
        label_key: the keyword the labels are passed under.
    """
    if causal is None:
        causal = is_causal_lm(model)
    return ModelLoss(causal, ignore_index=ignore_index, label_key=label_key)
