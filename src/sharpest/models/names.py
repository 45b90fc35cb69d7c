"""The models' names, without torch: the config checks them, and the CLI's config errors and
``sharpest presets`` answer without loading torch (``models.registry`` checks that the
builders match).
"""

from __future__ import annotations

__all__ = ["MODEL_NAMES", "canonical_name"]

MODEL_NAMES: tuple[str, ...] = ("simplecnn", "resnet32", "vgg11", "lstm", "mnist1d_cnn", "mlp",
                                 "gpt")

# Spellings seen in the paper, the authors' code and configs; matched after _normalise.
_ALIASES = {"mnist1d": "mnist1d_cnn", "scnn": "simplecnn", "ptblstm": "lstm"}


def _normalise(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def canonical_name(name: str) -> str:
    """The registry name for ``name`` (case, ``-`` and ``_`` ignored; a few aliases).

    Raises:
        ValueError: listing the valid names, when ``name`` is unknown.

    Example:
        >>> canonical_name("SCNN")
        'simplecnn'
    """
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {name!r}")
    key = _normalise(name)
    table = {_normalise(n): n for n in MODEL_NAMES}
    table.update({_normalise(a): n for a, n in _ALIASES.items()})
    if key not in table:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    return table[key]
