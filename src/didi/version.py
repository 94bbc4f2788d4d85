"""The package version, in a module of its own so that every layer can record it without importing ``didi``."""

__version__ = "0.1.0"
