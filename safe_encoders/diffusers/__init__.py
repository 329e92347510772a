"""The diffusers adapter: which pipeline components `make_safe` swaps."""

from .pipelines import DIFFUSERS_PIPELINE, pipeline_slots

__all__ = ["DIFFUSERS_PIPELINE", "pipeline_slots"]
