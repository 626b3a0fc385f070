"""The one shape every language-modelling row is turned into before batching.

A :class:`TokenizedExample` is a plain dict (so it lives happily in a ``datasets.Dataset``):

- ``input_ids``: ``list[int]``, the full token sequence.
- ``loss_weights``: ``list[float]``, same length. ``loss_weights[i]`` weighs the loss of predicting
  ``input_ids[i]`` from ``input_ids[:i]``; 0 means "not trained on". ``loss_weights[0]`` is always
  0 because nothing predicts the first token — which is also what keeps packed examples from
  training on a prediction that crosses into them from the previous example.
- ``turn_index``: ``list[int]``, same length: the 0-based index of the assistant turn (or the
  completion, index 0) a token belongs to, -1 elsewhere. Used to log the loss per turn.
- ``row``: ``int``, index of the source row, so any later message can name it.
"""

from __future__ import annotations

from typing import TypedDict


class TokenizedExample(TypedDict):
    input_ids: list[int]
    loss_weights: list[float]
    turn_index: list[int]
    row: int


def num_loss_tokens(example: TokenizedExample) -> int:
    """How many tokens of ``example`` carry a non-zero loss weight."""
    return sum(1 for weight in example["loss_weights"] if weight != 0)
