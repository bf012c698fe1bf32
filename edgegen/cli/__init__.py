"""The `edgegen` command. Thin: parse, call the API, print; one module per group of commands."""

from edgegen.cli._app import main
from edgegen.cli import convert, generate  # noqa: F401  (each module registers its commands)

__all__ = ["main"]
