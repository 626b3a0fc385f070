"""Counting what data preparation changed: nothing is truncated or dropped silently."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class PreparationReport:
    """What happened to a dataset on its way to token ids. Every counter is a number of rows
    unless its name says tokens."""

    rows: int = 0
    examples: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    eos_appended: int = 0
    truncated_rows: int = 0
    truncated_tokens: int = 0
    shortened_prompts: int = 0
    shortened_prompt_tokens: int = 0
    dropped_overlong: int = 0
    dropped_no_loss: int = 0
    boundary_mismatch_rows: int = 0
    split_rows: int = 0

    def add(self, other: PreparationReport) -> PreparationReport:
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))
        return self

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def lines(self) -> list[str]:
        """Human-readable summary; the loud lines (anything lost or altered) come first."""
        notes = []
        if self.truncated_rows:
            notes.append(
                f"truncated {self.truncated_rows} row(s) to max_length, losing {self.truncated_tokens} token(s)"
            )
        if self.shortened_prompts:
            notes.append(
                f"shortened {self.shortened_prompts} prompt(s) to max_prompt_length from the start, "
                f"losing {self.shortened_prompt_tokens} token(s)"
            )
        if self.dropped_overlong:
            notes.append(f"dropped {self.dropped_overlong} row(s) longer than max_length (overlong='drop')")
        if self.dropped_no_loss:
            notes.append(f"dropped {self.dropped_no_loss} row(s) with no tokens left to train on")
        if self.boundary_mismatch_rows:
            notes.append(
                f"{self.boundary_mismatch_rows} row(s) had a token straddling the prompt/completion "
                "or turn boundary; it was trained on (see `posttrain inspect`)"
            )
        if self.split_rows:
            notes.append(
                f"{self.split_rows} conversation(s) were split into one example per trained turn because "
                "the chat template rewrites earlier turns"
            )
        if self.eos_appended:
            notes.append(f"appended EOS to {self.eos_appended} row(s)")
        notes.append(
            f"{self.rows} row(s) -> {self.examples} example(s), {self.tokens} tokens, "
            f"{self.loss_tokens} trained on"
        )
        return notes
