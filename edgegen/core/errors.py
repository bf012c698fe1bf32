"""One error hierarchy. Every subclass is a *user-facing* error: the CLI prints its message on one
line and exits with code 2. Programming errors stay ordinary Python exceptions."""

from __future__ import annotations


class EdgegenError(Exception):
    """Base of all edgegen errors; the message says what is wrong and what to do."""

    exit_code = 2


class ConfigError(EdgegenError):
    """A checkpoint, manifest or option is malformed or inconsistent."""


class UnsupportedArchitecture(ConfigError):
    """The checkpoint's `model_type` has no implementation."""


class CapabilityError(EdgegenError):
    """A decoding strategy asked for something the model cannot do."""


class BackendUnavailable(EdgegenError):
    """A runtime (MLX, ONNX Runtime, an execution provider) is not installed or usable here."""


class ConversionError(EdgegenError):
    """Converting a checkpoint failed (bad weights, missing files, unreachable hub)."""


class ContextOverflow(EdgegenError):
    """The prompt plus the requested tokens do not fit the model's context."""


class InferenceError(EdgegenError):
    """The runtime failed while running a model (a damaged model file, an unsupported input)."""
