"""What to generate (:class:`SamplingOptions`) and what comes back (:class:`Completion`).

Both are plain data, independent of any backend: the Hugging Face engine and a later vLLM engine
take the same options and return the same completions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

FINISH_REASONS = ("eos", "stop", "length")

# Keys of ``generation_kwargs`` that the engine sets itself; each maps to the option to use.
RESERVED_GENERATE_KWARGS = {
    "input_ids": "the prompt ids given to generate()",
    "attention_mask": "the engine's left padding",
    "max_new_tokens": "max_completion_length",
    "max_length": "max_completion_length",
    "do_sample": "do_sample",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "eos_token_id": "stop_token_ids",
    "pad_token_id": "the tokenizer's pad token",
    "stop_strings": "stop_strings",
    "stopping_criteria": "stop_strings / stop_token_ids",
    "tokenizer": "the engine's tokenizer",
    "num_return_sequences": "num_generations (an argument of generate())",
    "num_beams": "nothing: rollouts sample or decode greedily, beam search is not supported",
    "generation_config": "the options themselves (model.generation_config is never changed)",
}


def _require(condition: bool, option: str, problem: str) -> None:
    if not condition:
        raise ValueError(f"SamplingOptions.{option}: {problem}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SamplingOptions:
    """How completions are generated (frozen: derive variants with ``dataclasses.replace``).

    Attributes:
        max_completion_length: new tokens per completion at most (the stop token included).
        temperature: softmax temperature (> 0) when sampling.
        top_p: nucleus sampling mass in (0, 1]; 1 keeps every token.
        top_k: keep the k most likely tokens; 0 or None turns it off. Passed explicitly, so a
            model's own ``generation_config`` (``top_k=50`` by default in transformers, 20 in
            Qwen's) never leaks into a rollout.
        min_p: drop tokens less likely than ``min_p`` x the most likely one; None = off.
        repetition_penalty: > 0; 1 = off (applies to greedy decoding too).
        do_sample: False = greedy decoding (temperature, top_p, top_k and min_p are ignored).
        stop_strings: strings that end a completion when generated (the text keeps them).
            A single string is taken as one stop string.
        stop_token_ids: token ids that end a completion, on top of the tokenizer's EOS and the
            model's ``generation_config.eos_token_id`` (e.g. a chat template's end-of-turn
            token such as ChatML's ``<|im_end|>`` when it is not EOS).
        generation_kwargs: any other ``transformers`` ``generate`` keyword (e.g.
            ``no_repeat_ngram_size``, ``logits_processor``); the keys the options above set are
            refused with the option to use instead.
        chat_template_kwargs: extra variables for the chat template of message-list prompts
            (e.g. ``{"enable_thinking": False}``); used by :func:`encode_prompts`.
    """

    max_completion_length: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = 0
    min_p: float | None = None
    repetition_penalty: float = 1.0
    do_sample: bool = True
    stop_strings: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    generation_kwargs: dict = field(default_factory=dict)
    chat_template_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        # Frozen so that options stay validated; ``dataclasses.replace`` validates the copy.
        stop_strings = (self.stop_strings,) if isinstance(self.stop_strings, str) else self.stop_strings
        object.__setattr__(self, "stop_strings", tuple(stop_strings or ()))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids or ()))
        object.__setattr__(self, "generation_kwargs", dict(self.generation_kwargs or {}))
        object.__setattr__(self, "chat_template_kwargs", dict(self.chat_template_kwargs or {}))
        self._validate_lengths_and_flags()
        self._validate_sampling()
        self._validate_stops()
        self._validate_generation_kwargs()

    def _validate_lengths_and_flags(self) -> None:
        _require(
            _is_count(self.max_completion_length) and self.max_completion_length >= 1,
            "max_completion_length",
            f"must be a positive integer, got {self.max_completion_length!r}",
        )
        _require(isinstance(self.do_sample, bool), "do_sample", f"must be True or False, got {self.do_sample!r}")

    def _validate_sampling(self) -> None:
        _require(_is_number(self.temperature) and self.temperature > 0, "temperature",
                 f"must be a number > 0 (use do_sample=False for greedy decoding), got {self.temperature!r}")
        _require(_is_number(self.top_p) and 0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p!r}")
        _require(self.top_k is None or (_is_count(self.top_k) and self.top_k >= 0), "top_k",
                 f"must be an integer >= 0 (0 or None = off), got {self.top_k!r}")
        _require(self.min_p is None or (_is_number(self.min_p) and 0 <= self.min_p <= 1), "min_p",
                 f"must be in [0, 1] or None (off), got {self.min_p!r}")
        _require(_is_number(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty",
                 f"must be a number > 0 (1 = off), got {self.repetition_penalty!r}")

    def _validate_stops(self) -> None:
        for text in self.stop_strings:
            _require(isinstance(text, str) and text != "", "stop_strings",
                     f"every stop string must be a non-empty string, got {text!r} in {self.stop_strings!r}")
        for token in self.stop_token_ids:
            _require(_is_count(token) and token >= 0, "stop_token_ids",
                     f"every stop token id must be an integer >= 0, got {token!r} in {self.stop_token_ids!r}")

    def _validate_generation_kwargs(self) -> None:
        for key in self.generation_kwargs:
            _require(key not in RESERVED_GENERATE_KWARGS, "generation_kwargs",
                     f"'{key}' is set by the rollout engine; use {RESERVED_GENERATE_KWARGS.get(key)} instead")


@dataclass(frozen=True)
class Completion:
    """One generated completion.

    Attributes:
        token_ids: the generated ids, no padding; the stop token is included when an EOS / stop
            token id ended it, and the token that completed the stop string when one did.
        text: ``token_ids`` decoded with special tokens skipped (so it never shows EOS, and
            does show a stop string: the reward sees exactly what is trained on).
        finish_reason: ``"eos"`` (an EOS or stop token id ended it; it wins when the same
            token also completes a stop string), ``"stop"`` (a stop string ended it) or
            ``"length"`` (``max_completion_length`` reached without either).
        generated: one flag per token, True where the model sampled it; None when it sampled
            every token (one reply). An engine that inserts tokens between the model's turns (a
            tool's result in a multi-turn episode) marks those False: they get no loss.
    """

    token_ids: list[int]
    text: str
    finish_reason: str
    generated: tuple[bool, ...] | None = None

    @property
    def truncated(self) -> bool:
        """True when it ran out of length rather than stopping by itself."""
        return self.finish_reason == "length"

    @property
    def last_sampled(self) -> int:
        """Index of the last token the model sampled (where the sequence's score goes; tokens
        inserted after it get no loss)."""
        if self.generated is None:
            return len(self.token_ids) - 1
        return max((i for i, g in enumerate(self.generated) if g), default=len(self.token_ids) - 1)
