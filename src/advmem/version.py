"""The package version (a module of its own so that every layer can name it without importing
advmem/__init__.py, which re-exports the Python API lazily)."""

__version__ = "0.1.0"
