"""A static KV cache whose attention reads only the filled part (generation path ``static``).

transformers' ``StaticCache`` writes each step's keys and values in place into tensors of
``max_cache_len`` slots and hands attention the whole tensors, the unfilled slots masked out.
Decoding a small model on a CPU is bound by memory traffic, and the keys and values are most of
it (64 rows x 158 slots x 6 layers of the benchmark Llama: ~120 MB per step against 25 MB of
weights): reading every slot at every step costs about as much again as reading the filled ones
(README, "Online RL at speed"). :class:`FilledStaticCache` keeps the static cache's in-place
writes (no copy of the cache per step, unlike ``DynamicCache``) and returns views of the first
``filled`` slots, with the attention mask sized to match (``get_mask_sizes``); the masked slots
it leaves out contributed exactly zero weight, so the result is that of attending over the
filled tokens, as the dynamic cache does.

The filled length is a Python integer: shapes change every step, so this cache is for eager
decoding, not for a compiled step (``static_compiled`` keeps transformers' ``StaticCache``).
Layers other than full attention (sliding windows, linear attention) stay transformers' own.
"""

from __future__ import annotations

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer


class FilledStaticLayer(StaticLayer):
    """A :class:`~transformers.cache_utils.StaticLayer` that returns, and sizes the mask for,
    only its first ``filled`` slots (keys and values ``(B, heads, filled, head_dim)``)."""

    # shapes change every step: transformers must not compile a decoding step around it (it would
    # on a GPU for a cache that declares itself compileable)
    is_compileable = False

    def __init__(self, max_cache_len: int, **kwargs):
        super().__init__(max_cache_len=max_cache_len)
        self.filled = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        new = key_states.shape[-2]
        if self.filled + new > self.max_cache_len:  # the in-place write would fail less clearly
            raise ValueError(f"the static cache holds {self.max_cache_len} tokens; {self.filled} are filled and {new} more were given")
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        self.filled += new
        return keys[:, :, : self.filled], values[:, :, : self.filled]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # asked before this step's update: the keys attention will see are the filled ones and the new ones
        return self.filled + query_length, 0

    def reset(self) -> None:
        super().reset()
        self.filled = 0

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        self.filled = int(self.cumulative_length)


class FilledStaticCache(StaticCache):
    """``StaticCache(config, max_cache_len)`` with its full-attention layers as
    :class:`FilledStaticLayer`."""

    def __init__(self, config, max_cache_len: int, **kwargs):
        super().__init__(config=config, max_cache_len=max_cache_len, **kwargs)
        self.layers = [FilledStaticLayer(max_cache_len) if type(layer) is StaticLayer else layer for layer in self.layers]
