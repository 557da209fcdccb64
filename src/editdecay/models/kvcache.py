"""The key/value-cache keyword of transformers forward passes.

transformers 5.24 renamed `past_key_values` to `cache`, in forward arguments and in model outputs (the old
name warns and goes away in 5.40); earlier 5.x releases only know `past_key_values`. Every call that passes
or reads a cache goes through these two helpers, so the same code runs without warnings on both.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from transformers.modeling_outputs import CausalLMOutputWithPast

CACHE_ARG = "cache" if any(f.name == "cache" for f in fields(CausalLMOutputWithPast)) else "past_key_values"


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """`{CACHE_ARG: cache}`, to pass a cache to a model's forward."""
    return {CACHE_ARG: cache}


def output_cache(output: Any) -> Any:
    """The cache a forward pass with `use_cache=True` returned."""
    return getattr(output, CACHE_ARG)
