"""advmem: adversarial training and the study of memorization in it."""

__version__ = "0.1.0"
