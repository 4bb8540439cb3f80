"""The `scoresde` command line: a click group (`main`) whose command bodies build a config and call the
library."""
from .main import cli, main

__all__ = ["cli", "main"]
