"""The `edgegen` command. Thin: parse, call the API, print; one module per group of commands."""

from edgegen.cli._app import main
from edgegen.cli import bench, complete, convert, generate, image, perplexity, serve  # noqa: F401  (each registers its commands)

__all__ = ["main"]
