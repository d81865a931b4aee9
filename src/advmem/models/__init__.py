"""Model registry and families.

`build_model(name, *, in_channels, num_classes, image_size, mean, std, **kwargs)` returns a
`Classifier` whose first layer is `Normalize(mean, std)`; it takes [0,1] NCHW inputs and returns
logits. Every family adapts to any image size, channel count and class count.
"""

from advmem.models.normalize import Classifier, Normalize
from advmem.models.registry import build_model, count_parameters, model_kwargs_of, register_model

# Importing the family modules registers them.
from advmem.models import mlp, small_cnn, preact_resnet, resnet, wide_resnet, vgg  # noqa: E402,F401
from advmem.models.registry import _names

MODEL_NAMES: list[str] = _names()

__all__ = [
    "MODEL_NAMES",
    "Classifier",
    "Normalize",
    "build_model",
    "count_parameters",
    "model_kwargs_of",
    "register_model",
]
