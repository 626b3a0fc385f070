"""One multi-turn episode at the token level: what the model sampled, kept exactly, and what was
inserted between its turns, rendered by the chat template.

The sequence after the prompt grows turn by turn:

- a **model turn** appends the ids the model sampled, as they are: never decoded and encoded
  again, so the log-probs of the update are those of what the policy generated;
- after a turn that called tools, the **inserted tokens** are the chat template's own rendering
  of what follows the turn: the end of the assistant turn the model did not write (ChatML's
  newline after ``<|im_end|>``), the tool messages, and the header of the next assistant turn.
  They are found as the *delta* of two renderings: the conversation through the assistant turn,
  and the conversation with the tool messages and the generation prompt. The assistant turn's own
  text is never taken from the rendering (the model's sampled ids stand for it); only what comes
  after it, which starts after the rendered turn with its trailing whitespace removed (a template
  ends a turn with its end-of-turn token, which the model sampled, then whitespace it did not).
  The second rendering must extend the first (a template that rewrites earlier turns cannot be
  extended turn by turn: :class:`~posttrain.data.chat.NotPrefixPreservingError`).

``generated`` marks, per token after the prompt, which tokens the model sampled: those get loss,
KL and advantage; the inserted ones are context only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from posttrain.data.chat import NotPrefixPreservingError, render
from posttrain.data.prompts import encode_prompt
from posttrain.rollout.sampling import Completion

FINISH_REASONS = ("eos", "stop", "length")


@dataclass
class Episode:
    """One rollout of one prompt, possibly over several model turns.

    Attributes:
        prompt_ids: the prompt's token ids (rendered with the tools' schemas).
        prompt_messages: the prompt as messages.
        token_ids: every token after the prompt: model turns and inserted tokens, in order.
        generated: one flag per entry of ``token_ids``: True where the model sampled it.
        messages: the conversation after the prompt: assistant turns (as parsed from the
            model's tokens) and tool messages, in order.
        finish_reason: why the last model turn ended (``"eos"``, ``"stop"``, ``"length"``);
            ``"length"`` also when inserted tokens filled the budget.
        turns: model turns taken.
        tool_calls: calls made (malformed ones included).
        tool_errors: failed calls by kind (:data:`~posttrain.rollout.agents.execution.ERROR_KINDS`).
        hit_limit: the last turn called tools after ``max_tool_calling_iterations`` rounds had
            run, so its calls were not run.
        environment: the episode's environment (None without ``environment_factory``).
        done: no more turns will be taken.
        turn_texts: what the model wrote in each turn, decoded (special tokens skipped).
    """

    prompt_ids: list[int]
    prompt_messages: list[dict]
    token_ids: list[int] = field(default_factory=list)
    generated: list[bool] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    finish_reason: str = "eos"
    turns: int = 0
    tool_calls: int = 0
    tool_errors: Counter = field(default_factory=Counter)
    hit_limit: bool = False
    environment: object = None
    done: bool = False
    turn_texts: list[str] = field(default_factory=list)

    def context_ids(self) -> list[int]:
        """The ids the next model turn continues: the prompt and everything after it so far."""
        return self.prompt_ids + self.token_ids

    @property
    def text(self) -> str:
        """The content of the last assistant message (the episode's answer), '' if none."""
        return next((m.get("content") or "" for m in reversed(self.messages) if m.get("role") == "assistant"), "")

    def add_model_turn(self, ids: list[int], message: dict, finish_reason: str, text: str = "") -> None:
        """Append the ids the model sampled in one turn (kept exactly), its parsed message and
        its decoded ``text``."""
        if finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason must be one of {FINISH_REASONS}, got {finish_reason!r}")
        self.turn_texts.append(text)
        self.token_ids += list(ids)
        self.generated += [True] * len(ids)
        self.messages.append(message)
        self.finish_reason = finish_reason
        self.turns += 1

    def add_inserted(self, ids: list[int], messages: list[dict]) -> None:
        """Append tokens the model did not sample (tool results and template text) and the
        messages they render."""
        self.token_ids += list(ids)
        self.generated += [False] * len(ids)
        self.messages += messages

    def transcript(self) -> str:
        """The episode after the prompt as one text, in order: what the model wrote in each turn,
        and each tool result as ``[tool <name>: <content>]`` (the completion log shows this)."""
        parts, turn = [], 0
        for message in self.messages:
            if message.get("role") == "assistant":
                parts.append(self.turn_texts[turn] if turn < len(self.turn_texts) else message.get("content") or "")
                turn += 1
            else:
                parts.append(f"[{message.get('role')} {message.get('name') or ''}: {message.get('content')}]".replace(" :", ":"))
        return "\n".join(parts)

    def as_completion(self) -> Completion:
        """The episode as one :class:`~posttrain.rollout.Completion`: every token after the prompt,
        ``generated`` marking the model's own, the transcript as its text."""
        return Completion(list(self.token_ids), self.transcript(), self.finish_reason, tuple(self.generated))

    def finish(self, finish_reason: str | None = None) -> None:
        if finish_reason is not None:
            self.finish_reason = finish_reason
        self.done = True


def inserted_text(tokenizer, conversation: list[dict], tool_messages: list[dict], *, tools=None, chat_template_kwargs=None) -> str:
    """The template's text between the end of the last (assistant) message of ``conversation``
    and the next assistant reply: ``tool_messages`` rendered, then the generation prompt (see the
    module docstring). Raises :class:`~posttrain.data.chat.NotPrefixPreservingError` when the
    longer rendering does not extend the shorter one."""
    kwargs = dict(chat_template_kwargs or {})
    through_turn = render(tokenizer, conversation, tools=tools, **kwargs)
    turn_end = len(through_turn.rstrip())
    following = render(tokenizer, [*conversation, *tool_messages], tools=tools, add_generation_prompt=True, **kwargs)
    if not following.startswith(through_turn[:turn_end]):
        raise NotPrefixPreservingError(
            "the chat template is not prefix-preserving: adding tool messages after an assistant turn changes the text "
            "before them, so a multi-turn episode cannot be extended turn by turn. Fix: use a template that renders "
            "earlier turns the same way whatever follows"
        )
    return following[turn_end:]


def encode_inserted(tokenizer, text: str) -> list[int]:
    """Token ids of inserted template text (no special tokens added: the template writes its own)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_tool_prompt(tokenizer, messages: list[dict], tools=None, chat_template_kwargs=None) -> list[int]:
    """Token ids of a message-list prompt rendered with the tools' schemas and the generation
    prompt (:func:`posttrain.data.prompts.encode_prompt`, as the trainers render prompts)."""
    return encode_prompt(tokenizer, messages, chat_template_kwargs, tools=tools)
