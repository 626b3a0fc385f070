"""The interface every generation backend implements, and the throughput it reports.

A trainer talks to a backend through four things only:

- ``generate(prompt_ids, options, num_generations=1) -> list[Completion]``: one completion per
  prompt and generation, ``len(prompt_ids) * num_generations`` of them, the ``num_generations``
  completions of prompt ``i`` contiguous at ``[i * G, (i + 1) * G)``. Sampling draws from
  torch's global RNG (or, for a backend with its own sampler, from a seed drawn from it), so a
  checkpoint of the RNG states makes a resumed run sample the same completions.
- ``holds_weights``: whether the engine keeps its own copy of the weights. The Hugging Face
  engine generates with the live module (False); a vLLM engine holds a copy (True).
- ``update_weights(model)``: for an engine that holds weights, called by the trainer before a
  ``generate`` whenever an optimizer step changed the policy since the last call (and before
  the first), with the trained policy (the unwrapped model; the engine gathers shards and merges
  LoRA adapters as it needs).
- ``last_stats``: a :class:`GenerationStats` for the latest ``generate`` call, for the
  trainer's throughput metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from posttrain.rollout.sampling import Completion, SamplingOptions


@dataclass(frozen=True)
class GenerationStats:
    """What one ``generate`` call produced and how long it took.

    Attributes:
        sequences: completions returned.
        tokens: generated tokens kept in the completions (stop tokens included, padding not).
        seconds: wall time of the call, tokenization of the output included.
    """

    sequences: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def metrics(self, prefix: str = "generation/") -> dict[str, float]:
        """``{"generation/tokens": ..., "generation/seconds": ..., "generation/tokens_per_second": ...}``."""
        return {
            f"{prefix}tokens": float(self.tokens),
            f"{prefix}seconds": self.seconds,
            f"{prefix}tokens_per_second": self.tokens_per_second,
        }


@runtime_checkable
class RolloutEngine(Protocol):
    """A generation backend (see the module docstring for the contract)."""

    last_stats: GenerationStats
    holds_weights: bool

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], options: SamplingOptions, num_generations: int = 1
    ) -> list[Completion]: ...

    def update_weights(self, model) -> None: ...


def check_prompt_ids(prompt_ids, num_generations: int) -> list[list[int]]:
    """Validate the arguments every engine's ``generate`` takes; returns the ids as lists."""
    if isinstance(num_generations, bool) or not isinstance(num_generations, int) or num_generations < 1:
        raise ValueError(f"num_generations must be a positive integer, got {num_generations!r}")
    if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, Sequence):
        raise TypeError(
            "prompt_ids must be a list of token-id lists (one per prompt); encode text with encode_prompts() first"
        )
    checked = []
    for index, ids in enumerate(prompt_ids):
        ids = list(ids) if isinstance(ids, Sequence) and not isinstance(ids, str) else None
        if not ids or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids):
            raise ValueError(
                f"prompt {index}: expected a non-empty list of token ids (ints >= 0), got {prompt_ids[index]!r:.200}; "
                "encode text with encode_prompts() first"
            )
        checked.append(ids)
    return checked
