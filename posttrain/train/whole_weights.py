"""Whole weights of a sharded model, gathered for generation.

``transformers``' ``generate`` calls the model once per new token, through modules that under
FSDP2 hold only 1/N of their weights. We gather instead of generating from the shards: before a
generation batch every process all-gathers the model's parameters once (``DTensor.full_tensor``)
into a copy of the model's structure, generates from that copy with its KV cache and no further
communication, and frees the gathered weights afterwards. Generating from the sharded model
would all-gather every block once per token, and keep all processes stepping together until the
longest completion of any of them ends (``synced_gpus``).

Memory: the whole model, in its training dtype, exists on each process while it generates
(the same as an unsharded run holds all the time); between generation batches the copy holds
no weights (meta tensors), only its buffers (rotary tables) and structure.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from contextlib import contextmanager

import torch
from torch import nn


def _meta_parameter(parameter: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(torch.empty(parameter.shape, dtype=parameter.dtype, device="meta"), requires_grad=False)


class WholeWeights:
    """A weightless copy of ``model`` (a Hugging Face or peft causal LM) that
    :meth:`gathered` fills with the whole weights of the live ``model`` for the duration of a
    block. Build it before the model is sharded (it copies the structure, never the weights).
    ``dtype``: gather floating-point weights in this dtype (the compute dtype of FSDP's mixed
    precision, e.g. bfloat16: half the traffic and memory); None keeps theirs."""

    def __init__(self, model: nn.Module, dtype: torch.dtype | None = None):
        self.model = model
        self.dtype = dtype
        # deepcopy with every parameter mapped to a weightless one: structure, config and buffers
        # are copied, no parameter data is
        memo = {id(p): _meta_parameter(p) for p in model.parameters()}
        self.copy = copy.deepcopy(model, memo).eval()
        # every place a parameter is registered, by parameter: tied weights are one parameter in
        # two modules (embedding and LM head) and must stay one after the swap
        self._slots = defaultdict(list)
        for module in self.copy.modules():
            for attribute, parameter in module._parameters.items():
                if parameter is not None:
                    self._slots[id(parameter)].append((module, attribute))
        self._placeholders = dict(self.copy.named_parameters())  # name -> weightless parameter

    @contextmanager
    def gathered(self):
        """The copy with the live model's whole weights, gathered from every process's shard (a
        collective call: every process enters it; parameters are gathered in the same order)."""
        filled = []
        try:
            with torch.no_grad():
                live = dict(self.model.named_parameters())
                for name, placeholder in self._placeholders.items():
                    whole = _whole(live[name])
                    if self.dtype is not None and whole.is_floating_point():
                        whole = whole.to(self.dtype)
                    replacement = nn.Parameter(whole, requires_grad=False)
                    for module, attribute in self._slots[id(placeholder)]:
                        module._parameters[attribute] = replacement
                    filled.append((placeholder, replacement))
            if filled:
                self._move_buffers(filled[0][1].device)
            yield self.copy
        finally:
            for placeholder, _ in filled:
                for module, attribute in self._slots[id(placeholder)]:
                    module._parameters[attribute] = placeholder

    def _move_buffers(self, device: torch.device) -> None:
        """Put the copy's buffers (rotary tables) where the gathered weights are: the copy was made
        before accelerate moved the model to its device."""
        for module in self.copy.modules():
            for name, buffer in module._buffers.items():
                if buffer is not None and buffer.device != device:
                    module._buffers[name] = buffer.to(device)


def _whole(parameter: torch.Tensor) -> torch.Tensor:
    """The full value of a (possibly sharded) parameter, detached."""
    from torch.distributed.tensor import DTensor

    if isinstance(parameter, DTensor):
        return parameter.full_tensor().detach()
    return parameter.detach()
