"""The paper's networks, built by name.

```python
from sharpest.models import build_model, MODEL_NAMES
model = build_model("simplecnn", num_classes=10, padding="code")
```

Image models (``simplecnn``, ``resnet32``, ``vgg11``) take ``(B, 3, 32, 32)`` floats and return
logits ``(B, C)``; ``lstm`` and ``gpt`` (a small decoder-only transformer) take token ids
``(B, T)`` and return ``(B, T, V)`` (``num_classes`` is the vocabulary size); ``mnist1d_cnn``
and ``mlp`` take ``(B, 40)`` floats. Initialisation is reproducible given ``torch.manual_seed``.
Each builder's keyword arguments are its options; ``model_options(name)`` lists them with their
defaults.
"""

# Names resolve on first use (sharpest._lazy): `sharpest.models.names` (what the config
# checks) then loads without torch.
from sharpest._lazy import lazy_getattr

_EXPORTS = {
    "GPT": "sharpest.models.gpt",
    "MLP": "sharpest.models.mnist1d",
    "MNIST1DCNN": "sharpest.models.mnist1d",
    "MODEL_NAMES": "sharpest.models.names",
    "VGG": "sharpest.models.vgg",
    "LSTMLanguageModel": "sharpest.models.lstm",
    "ResNet": "sharpest.models.resnet",
    "SimpleCNN": "sharpest.models.simplecnn",
    "build_model": "sharpest.models.registry",
    "canonical_name": "sharpest.models.names",
    "decayed_parameters": "sharpest.models.decay",
    "kernel_parameters": "sharpest.models.decay",
    "model_options": "sharpest.models.registry",
    "num_parameters": "sharpest.models.registry",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
