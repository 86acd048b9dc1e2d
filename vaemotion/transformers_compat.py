# Copyright 2026 The VAEmotion Authors. Licensed under the Apache License, Version 2.0.
"""What differs between the transformers releases VAEmotion's code runs on (5.20 to 5.25), found by feature checks.

A checkpoint pushed with `vaemotion push` carries this file as remote code, so it is loaded by whatever transformers
its users have. Every difference is settled here by looking for the feature itself, never by comparing version
numbers, and the rest of the code imports the names below instead of the release-specific ones:

* the key-value cache is `cache` in 5.24+ (argument and output field), `past_key_values` before (`CACHE_NAME`);
* `MultimodalCausalLMOutputWithPast` exists from 5.24 (`CausalLMOutputBase` falls back to `CausalLMOutputWithPast`,
  whose cache field has the older name, which is what that release's `generate()` reads);
* `modeling_utils.slice_logits_to_keep` exists from 5.21 (`slice_logits_to_keep` falls back to the same slicing).

>>> CACHE_NAME in ("cache", "past_key_values")
True
>>> CACHE_NAME in {field.name for field in dataclasses.fields(CausalLMOutputBase)}
True
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from transformers import modeling_outputs, modeling_utils
from transformers.utils.deprecation import deprecate_kwarg

# The name of the key-value cache, as argument of forward() and as field of the outputs.
CACHE_NAME = (
    "cache" if "cache" in {field.name for field in dataclasses.fields(modeling_outputs.BaseModelOutputWithPast)}
    else "past_key_values"
)  # fmt: skip

CausalLMOutputBase = getattr(
    modeling_outputs, "MultimodalCausalLMOutputWithPast", modeling_outputs.CausalLMOutputWithPast
)


def _slice_logits_to_keep(hidden_states: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """The positions of `hidden_states` (batch, seq, width) whose logits are kept, as 5.21+ defines them: an int keeps
    the last `logits_to_keep` (0: all), a 1-D tensor the given positions of every row, a 2-D integer tensor
    (batch, k) each row's own positions, a 2-D boolean mask its `True` positions (flattened to (num_true, width))."""
    if isinstance(logits_to_keep, int):
        return hidden_states[:, -logits_to_keep:, :] if logits_to_keep else hidden_states
    if logits_to_keep.dim() == 2:
        if logits_to_keep.dtype == torch.bool:
            return hidden_states[logits_to_keep]
        return torch.take_along_dim(hidden_states, logits_to_keep[..., None], dim=1)
    return hidden_states[:, logits_to_keep, :]


slice_logits_to_keep = getattr(modeling_utils, "slice_logits_to_keep", _slice_logits_to_keep)


def cache_argument(forward):
    """Let `forward(..., cache=...)` take the cache under either name: in 5.24+ `past_key_values` goes through
    transformers' deprecation (it warns and is mapped to `cache`); before, it is the name `generate()` passes and is
    mapped silently."""
    if CACHE_NAME == "cache":
        return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")(forward)

    @functools.wraps(forward)
    def forward_taking_past_key_values(*args, **kwargs):
        if "past_key_values" in kwargs:
            if kwargs.get("cache") is not None:
                raise ValueError("pass the cache once, as cache or as past_key_values")
            kwargs["cache"] = kwargs.pop("past_key_values")
        return forward(*args, **kwargs)

    return forward_taking_past_key_values
