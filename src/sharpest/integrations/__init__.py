"""Sharpness tracking inside other people's training loops.

- :class:`sharpest.integrations.lightning.SharpestCallback`: a PyTorch Lightning ``Callback``;
- :class:`sharpest.integrations.transformers.SharpestTrainerCallback`: a Hugging Face
  ``transformers`` ``TrainerCallback``.

Both track the top-k Hessian eigenpairs on a fixed subset with an
:class:`~sharpest.train.tracker.EigenTracker`, refresh the basis of an optimizer that has
``set_basis`` (``NudgedSGD``) at epoch starts or every ``refresh_every`` steps, keep the records
in ``callback.records`` and mirror them to sinks (TensorBoard, Weights & Biases, CSV; see
:mod:`sharpest.runs.sinks`). Each module imports its library only when used (optional extras).
"""

__all__ = ["lightning", "transformers"]
