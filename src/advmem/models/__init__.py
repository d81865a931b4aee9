"""Model registry and families.

`build_model(name, *, in_channels, num_classes, image_size, mean, std, **kwargs)` returns a
`Classifier` whose first layer is `Normalize(mean, std)`; it takes [0,1] NCHW inputs and returns
logits. Every family adapts to any image size, channel count and class count.
"""

from advmem.models.normalize import Classifier, Normalize
from advmem.models.registry import MODELS, build_model, count_parameters, model_kwargs_of

MODEL_NAMES: list[str] = MODELS.names()  # imports the family modules (one file each in this package)

__all__ = [
    "MODELS",
    "MODEL_NAMES",
    "Classifier",
    "Normalize",
    "build_model",
    "count_parameters",
    "model_kwargs_of",
]
