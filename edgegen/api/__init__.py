"""The Python API: `load()` a model and generate, stream, chat, complete or score with it.

A `Model` is safe to share between threads: its calls are serialized by one lock around the KV
cache and the runtime session, so concurrent calls give the results sequential calls would.
"""

from edgegen.api.model import Generation, Model, load, peak_rss_mb
from edgegen.core.options import GenerateOptions
from edgegen.core.stats import GenerationStats

__all__ = ["Generation", "GenerationStats", "GenerateOptions", "Model", "load", "peak_rss_mb"]
