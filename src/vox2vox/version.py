"""The package's version, in a leaf module: library modules import it from here, never the package root."""

__version__ = "0.1.0"
