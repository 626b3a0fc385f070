"""A causal LM that returns per-token log-probs of its own input instead of full logits.

Every objective needs ``log p(x_t | x_<t)`` for the tokens it trains on, never the
``(B, T, V)`` logits themselves. :class:`TokenLogProbs` runs the transformer body, then the LM
head in chunks (``posttrain.ops.token_logps``), so the logits of a long batch with a large
vocabulary never exist all at once.

It is an ``nn.Module`` wrapping the Hugging Face model, and it is *this* module that accelerate
wraps in DDP/FSDP, so the head computation happens inside the wrapped forward and gradient
synchronisation stays correct.
"""

from __future__ import annotations

import torch
from torch import nn

from posttrain.ops import TokenStats, auto_chunk_size, token_logps


class TokenLogProbs(nn.Module):
    """Per-token log-probs aligned with the input tokens.

    ``forward(input_ids (B, T), position_ids (B, T) | None, attention_mask | None)`` returns a
    :class:`~posttrain.ops.TokenStats` whose ``logps[:, t]`` is ``log p(input_ids[:, t] |
    input_ids[:, :t])`` for ``t >= 1``; column 0 (no prediction) is 0. ``entropy`` and
    ``argmax_correct`` follow the same alignment when ``with_stats=True``.

    ``chunk_size``: tokens per LM-head chunk; None chooses automatically, 0 never chunks.
    """

    def __init__(self, model: nn.Module, chunk_size: int | None = None):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self._split_head_ok: bool | None = None  # decided on the first forward

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        temperature: float = 1.0,
        with_stats: bool = False,
    ) -> TokenStats:
        inputs = {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": attention_mask}
        return self.stats_and_hidden(inputs, temperature=temperature, with_stats=with_stats)[0]

    def stats_and_hidden(self, inputs: dict, *, temperature: float = 1.0, with_stats: bool = False, keep_hidden: bool = False):
        """``(TokenStats, hidden)``: the forward's result and, with ``keep_hidden``, the last hidden
        states ``(B, T, H)`` it was computed from (a value head on the policy's trunk reads them),
        else None. ``inputs`` holds ``input_ids``, ``position_ids`` and ``attention_mask``."""
        labels = inputs["input_ids"][:, 1:]
        if self._split_head_ok is None:
            self._split_head_ok = self._head_is_plain_linear(inputs)
        if self._split_head_ok:
            full_hidden = self._body(inputs)
            head = self.model.get_output_embeddings()
            vocab = head.out_features if hasattr(head, "out_features") else None
            chunk = self._chunk(labels.numel(), vocab)
            stats = token_logps(full_hidden[:, :-1], head, labels, chunk_size=chunk, temperature=temperature, with_stats=with_stats)
        else:
            output = self.model(**inputs, use_cache=False, output_hidden_states=keep_hidden)
            full_hidden = output.hidden_states[-1] if keep_hidden else None
            stats = token_logps(output.logits[:, :-1], nn.Identity(), labels, temperature=temperature, with_stats=with_stats)
        return _pad_first_column(stats), (full_hidden if keep_hidden else None)

    def _body(self, inputs: dict) -> torch.Tensor:
        decoder = self.model.get_decoder()
        return decoder(**inputs, use_cache=False).last_hidden_state

    def _chunk(self, num_tokens: int, vocab_size: int | None) -> int | None:
        if self.chunk_size == 0:
            return None
        if self.chunk_size is not None:
            return self.chunk_size
        return auto_chunk_size(num_tokens, vocab_size) if vocab_size else None

    @torch.no_grad()
    def _head_is_plain_linear(self, inputs: dict) -> bool:
        """Whether ``lm_head(decoder(x))`` reproduces the model's logits. Some architectures
        post-process logits (soft-capping, scaling); for those we fall back to the model's own
        forward. Checked once, on a few tokens of the first row."""
        probe = {k: (v[:1, :8] if v is not None and v.dim() == 2 else v) for k, v in inputs.items()}
        if probe["attention_mask"] is not None and probe["attention_mask"].dim() != 2:
            probe["attention_mask"] = None
        try:
            split = self.model.get_output_embeddings()(self._body(probe))
        except (AttributeError, TypeError):
            return False
        full = self.model(**probe, use_cache=False).logits
        return split.shape == full.shape and torch.allclose(split.float(), full.float(), atol=1e-4, rtol=1e-4)


def _pad_first_column(stats: TokenStats) -> TokenStats:
    """Shift ``(B, T-1)`` predictions to ``(B, T)`` aligned with the tokens they predict."""

    def pad(values, fill):
        if values is None:
            return None
        first = torch.full_like(values[:, :1], fill)
        return torch.cat([first, values], dim=1)

    return TokenStats(
        logps=pad(stats.logps, 0.0),
        entropy=pad(stats.entropy, 0.0),
        argmax_correct=pad(stats.argmax_correct, False),
    )
