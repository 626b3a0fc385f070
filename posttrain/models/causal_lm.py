"""A causal LM that returns per-token log-probs of its own input instead of full logits.

Every objective needs ``log p(x_t | x_<t)`` for the tokens it trains on, never the
``(B, T, V)`` logits themselves. :class:`TokenLogProbs` runs the transformer body, then the LM
head in chunks (``posttrain.ops.token_logps``), so the logits of a long batch with a large
vocabulary never exist all at once.

It is an ``nn.Module`` wrapping the Hugging Face model, and it is *this* module that accelerate
wraps in DDP/FSDP, so the head computation happens inside the wrapped forward and gradient
synchronisation stays correct.

Objectives that train on a subset of the tokens (SFT's completion/assistant modes, DPO's
completions) pass ``positions``: the flat indices of the tokens whose log-probs they need. The
LM head then runs on those tokens only -- prompts and pads cost no head FLOPs and no
full-vocabulary temporaries -- and the result is scattered back to ``(B, T)`` with zeros
elsewhere, so the loss and its gradients are those of the full computation.
"""

from __future__ import annotations

import torch
from torch import nn

from posttrain.models.attention import varlen_kwargs
from posttrain.models.prompt_groups import PromptGroups, prompt_group_states
from posttrain.ops import TokenStats, auto_chunk_size, token_logps


class TokenLogProbs(nn.Module):
    """Per-token log-probs aligned with the input tokens.

    ``forward(input_ids (B, T), position_ids (B, T) | None, attention_mask | None)`` returns a
    :class:`~posttrain.ops.TokenStats` whose ``logps[:, t]`` is ``log p(input_ids[:, t] |
    input_ids[:, :t])`` for ``t >= 1``; column 0 (no prediction) is 0. ``entropy`` and
    ``argmax_correct`` follow the same alignment when ``with_stats=True``.

    ``chunk_size``: tokens per LM-head chunk; None chooses automatically, 0 never chunks.
    ``stats_fn``: replaces :func:`posttrain.ops.logps_and_stats` (a compiled copy, see
    :mod:`posttrain.models.compile`).

    ``positions`` (optional, ``(n,)`` long): flat indices into ``(B, T)`` of the tokens to
    score, none of them the first token of a row (nothing predicts it). Log-probs, entropy and
    ``argmax_correct`` are then computed for those tokens only and are 0 / False elsewhere.
    """

    def __init__(self, model: nn.Module, chunk_size: int | None = None, stats_fn=None):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.stats_fn = stats_fn
        self._split_head_ok: bool | None = None  # decided on the first forward

    @classmethod
    def for_config(cls, model: nn.Module, config) -> TokenLogProbs:
        """The module a trainer trains, set up by :func:`head_options`."""
        return cls(model, **head_options(model, config))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        temperature: float = 1.0,
        with_stats: bool = False,
        positions: torch.Tensor | None = None,
        groups: PromptGroups | None = None,
    ) -> TokenStats:
        if groups is not None:
            return self.grouped_stats(groups, temperature=temperature, with_stats=with_stats)
        inputs = {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": attention_mask}
        stats, _ = self.stats_and_hidden(inputs, temperature=temperature, with_stats=with_stats, positions=positions)
        return stats

    def stats_and_hidden(
        self,
        inputs: dict,
        *,
        temperature: float = 1.0,
        with_stats: bool = False,
        keep_hidden: bool = False,
        positions: torch.Tensor | None = None,
    ):
        """``(TokenStats, hidden)``: the forward's result and, with ``keep_hidden``, the last hidden
        states ``(B, T, H)`` it was computed from (a value head on the policy's trunk reads them),
        else None. ``inputs`` holds ``input_ids``, ``position_ids`` and ``attention_mask``;
        ``positions`` as in :meth:`forward`."""
        input_ids = inputs["input_ids"]
        options = {"temperature": temperature, "with_stats": with_stats, "stats_fn": self.stats_fn}
        states, head, full_hidden = self._states_and_head(inputs, keep_hidden)
        if positions is not None:
            stats = _scatter(self._score(states, head, input_ids, positions, options), positions, input_ids.shape)
        else:
            labels = input_ids[:, 1:]
            chunk = self._chunk(labels.numel(), _vocab_size(head)) if not isinstance(head, nn.Identity) else None
            stats = _pad_first_column(token_logps(states[:, :-1], head, labels, chunk_size=chunk, **options))
        return stats, (full_hidden if keep_hidden else None)

    def grouped_stats(self, groups: PromptGroups, *, temperature: float = 1.0, with_stats: bool = False) -> TokenStats:
        """Stats ``(S, L)`` of the completion tokens of ``groups``, each prompt run once
        (:mod:`posttrain.models.prompt_groups`); 0 / False after each completion's end. Needs the
        split head (a model whose logits are ``lm_head(decoder(x))``)."""
        if self._split_head_ok is None:
            probe = {"input_ids": groups.prompt_ids[:1, -8:], "position_ids": None, "attention_mask": None}
            self._split_head_ok = self._head_is_plain_linear(probe)
        if not self._split_head_ok:
            raise ValueError(f"{type(self.model).__name__} post-processes its logits: prompt groups need lm_head(decoder(x))")
        states = prompt_group_states(self.model.get_decoder(), groups, self.model.config)
        head, labels = self.model.get_output_embeddings(), groups.completion_ids
        chunk = self._chunk(labels.numel(), _vocab_size(head))
        stats = token_logps(states, head, labels, chunk_size=chunk, temperature=temperature, with_stats=with_stats, stats_fn=self.stats_fn)
        inside = torch.arange(labels.shape[1], device=labels.device) < groups.completion_lengths.unsqueeze(1)

        def keep(values, fill):
            return None if values is None else torch.where(inside, values, fill)

        return TokenStats(logps=keep(stats.logps, 0.0), entropy=keep(stats.entropy, 0.0), argmax_correct=keep(stats.argmax_correct, False))

    def scored_states(self, inputs: dict, positions: torch.Tensor) -> tuple[torch.Tensor, nn.Module]:
        """``(states, head)``: the states ``(n, D)`` that predict the tokens at flat ``positions``
        of ``(B, T)`` (each read one place before its token) and the module that turns them into
        logits. ``D`` is the hidden size and ``head`` the LM head, or, for a model whose logits
        are not ``lm_head(hidden)`` (see :meth:`_head_is_plain_linear`), ``D`` is the vocabulary
        and ``head`` is ``nn.Identity()``. Distillation runs both models' heads on these in
        chunks (:func:`posttrain.losses.distill.chunked_divergence`)."""
        states, head, _ = self._states_and_head(inputs, keep_hidden=False)
        return states.reshape(-1, states.shape[-1]).index_select(0, positions - 1), head

    def _states_and_head(self, inputs: dict, keep_hidden: bool) -> tuple[torch.Tensor, nn.Module, torch.Tensor | None]:
        """``(states (B, T, D), head, last hidden states or None)`` of one forward pass of the body."""
        if self._split_head_ok is None:
            self._split_head_ok = self._head_is_plain_linear(inputs)
        if self._split_head_ok:
            states = self._body(inputs)
            return states, self.model.get_output_embeddings(), states
        output = self.model(**inputs, use_cache=False, output_hidden_states=keep_hidden, **varlen_kwargs(self.model, inputs["position_ids"]))
        return output.logits, nn.Identity(), (output.hidden_states[-1] if keep_hidden else None)

    def _score(self, states: torch.Tensor, head: nn.Module, input_ids: torch.Tensor, positions: torch.Tensor, options: dict) -> TokenStats:
        """Stats ``(1, n)`` of the tokens at flat ``positions``, each predicted from the state
        ``(B, T, H)`` (hidden states or logits) one place before it."""
        flat_states = states.reshape(-1, states.shape[-1])
        picked = flat_states.index_select(0, positions - 1).unsqueeze(0)
        labels = input_ids.reshape(-1).index_select(0, positions).unsqueeze(0)
        chunk = self._chunk(labels.numel(), _vocab_size(head)) if not isinstance(head, nn.Identity) else None
        return token_logps(picked, head, labels, chunk_size=chunk, **options)

    def _body(self, inputs: dict) -> torch.Tensor:
        decoder = self.model.get_decoder()
        return decoder(**inputs, use_cache=False, **varlen_kwargs(self.model, inputs["position_ids"])).last_hidden_state

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


def head_options(model: nn.Module, config) -> dict:
    """``chunk_size`` and ``stats_fn`` of a trainer's :class:`TokenLogProbs` (or subclass):
    ``config.logits_chunk_size``, and with ``config.torch_compile`` the model's blocks compiled
    in place and a compiled head (:mod:`posttrain.models.compile`)."""
    stats_fn = None
    if getattr(config, "torch_compile", False):
        from posttrain.models.compile import compile_blocks, compiled_logps_and_stats

        compile_blocks(model)
        stats_fn = compiled_logps_and_stats()
    return {"chunk_size": config.logits_chunk_size, "stats_fn": stats_fn}


def _vocab_size(head: nn.Module) -> int | None:
    return head.out_features if hasattr(head, "out_features") else None


def _scatter(stats: TokenStats, positions: torch.Tensor, shape: torch.Size) -> TokenStats:
    """``(1, n)`` stats of the tokens at flat ``positions`` -> ``(B, T)`` with 0 / False
    elsewhere (differentiable in the log-probs)."""

    rows, columns = positions // shape[1], positions % shape[1]

    def place(values, fill):
        if values is None:
            return None
        # made (B, T) directly, not reshaped from a flat tensor: a module's output that is a view
        # loses FSDP's pre-backward hook if anything later changes it in place
        out = torch.full(tuple(shape), fill, dtype=values.dtype, device=values.device)
        return out.index_put((rows, columns), values.reshape(-1))

    return TokenStats(logps=place(stats.logps, 0.0), entropy=place(stats.entropy, 0.0), argmax_correct=place(stats.argmax_correct, False))


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
