"""Turn one language-modelling row into token ids and loss weights: one function per format.

A row goes in; a list of :class:`~posttrain.data.example.TokenizedExample` and the counts of
what was changed come out (usually one example; a conversation whose chat template rewrites
earlier turns becomes one example per trained turn). Nothing here knows about batches, models
or the training loop.

Rules (docs/design.md, "Data"):

- Plain text and string completions end with the tokenizer's EOS, appended when missing and
  never doubled. Because weights are explicit, a pad token equal to EOS does not unmask it.
- The prompt/completion boundary is the common prefix of ``tokenize(prompt)`` and
  ``tokenize(prompt + completion)``; a token merged across the boundary is trained on and the
  row is counted.
- Conversations take their assistant spans from :mod:`posttrain.data.chat`, end-of-turn token
  included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from posttrain.data import formats
from posttrain.data.chat import NotPrefixPreservingError, tokenize_conversation
from posttrain.data.errors import DataFormatError
from posttrain.data.example import TokenizedExample
from posttrain.data.report import PreparationReport
from posttrain.errors import ConfigError, ModelError

LOSS_MODES = ("auto", "all", "completion", "assistant", "last_assistant")
OVERLONG_POLICIES = ("truncate", "drop")


# Shared by the SFT, preference and reward configs, which all expose the option.
MAX_PROMPT_LENGTH_HELP = (
    "Longest prompt in tokens for prompt-completion rows: a longer prompt loses tokens from its start "
    "(after BOS), counted, before max_length truncation, so the completion is kept. None: no limit."
)


@dataclass(frozen=True)
class LMDataOptions:
    """How language-modelling rows become training examples (the data half of SFTConfig)."""

    max_length: int | None = 1024
    max_prompt_length: int | None = None
    loss_mode: str = "auto"
    turn_weights: str | Sequence[float] = "uniform"
    overlong: str = "truncate"
    add_eos: bool = True
    chat_template_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.loss_mode not in LOSS_MODES:
            raise ConfigError(f"loss_mode must be one of {LOSS_MODES}, got {self.loss_mode!r}")
        if self.overlong not in OVERLONG_POLICIES:
            raise ConfigError(f"overlong must be one of {OVERLONG_POLICIES}, got {self.overlong!r}")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max_length must be at least 2, got {self.max_length}")
        if self.max_prompt_length is not None and self.max_prompt_length < 2:
            raise ConfigError(f"max_prompt_length must be at least 2, got {self.max_prompt_length}")
        parse_turn_weights(self.turn_weights)


def resolve_loss_mode(loss_mode: str, data_format: formats.DataFormat) -> str:
    """The concrete loss mode for a dataset: ``auto`` becomes ``completion`` for
    prompt-completion data and ``all`` otherwise; a mode the format cannot support is refused."""
    name, conversational = data_format.name, data_format.conversational
    if loss_mode == "auto":
        return "completion" if name == formats.PROMPT_COMPLETION else "all"
    allowed = {"all"}
    if name == formats.PROMPT_COMPLETION:
        allowed.add("completion")
    if conversational:
        allowed.update({"assistant", "last_assistant"})
    if loss_mode not in allowed:
        raise ConfigError(
            f"loss_mode={loss_mode!r} does not apply to {data_format} data; "
            f"choose one of {sorted(allowed)}"
        )
    return loss_mode


# ----------------------------------------------------------------------------- turn weights


def parse_turn_weights(spec: str | Sequence[float]) -> tuple[str, object]:
    """``"uniform"``, ``"decay:<gamma>"`` (turn i of n weighs gamma**(n-1-i): the last turn
    weighs 1, earlier ones less) or an explicit list indexed from the first trained turn."""
    if isinstance(spec, str):
        if spec == "uniform":
            return ("uniform", None)
        if spec.startswith("decay:"):
            try:
                gamma = float(spec.split(":", 1)[1])
            except ValueError:
                gamma = -1.0
            if not 0.0 < gamma <= 1.0:
                raise ConfigError(f"option 'turn_weights' {spec!r}: the decay must be a number in (0, 1]")
            return ("decay", gamma)
        raise ConfigError(f"option 'turn_weights' must be 'uniform', 'decay:<gamma>' or a list of numbers, got {spec!r}")
    try:
        weights = [float(w) for w in spec]
    except (TypeError, ValueError):
        raise ConfigError(f"option 'turn_weights' must be 'uniform', 'decay:<gamma>' or a list of numbers, got {spec!r}") from None
    if not weights or any(not w >= 0 for w in weights):
        raise ConfigError(f"option 'turn_weights': a list must be non-empty and non-negative, got {list(spec)}")
    return ("list", weights)


def turn_weight_values(spec: str | Sequence[float], num_turns: int, row: int) -> list[float]:
    """The weight of each of ``num_turns`` trained turns of one row."""
    kind, value = parse_turn_weights(spec)
    if kind == "uniform":
        return [1.0] * num_turns
    if kind == "decay":
        return [value ** (num_turns - 1 - i) for i in range(num_turns)]
    if num_turns > len(value):
        raise DataFormatError(
            row,
            "messages",
            f"{num_turns} trained turns but turn_weights lists only {len(value)} weights",
            "give a weight for every turn, or use 'decay:<gamma>'",
        )
    return list(value[:num_turns])


# ----------------------------------------------------------------------------- one row


def tokenize_row(
    row: Mapping, index: int, tokenizer, data_format: formats.DataFormat, loss_mode: str, options: LMDataOptions
) -> tuple[list[TokenizedExample], PreparationReport]:
    """Validate and tokenize one row; ``loss_mode`` must already be resolved.

    Returns the kept examples (truncated to ``max_length``) and the counts for this row.
    """
    report = PreparationReport(rows=1)
    require_assistant = loss_mode in ("assistant", "last_assistant")
    formats.validate_row(row, index, data_format, require_assistant=require_assistant)
    if data_format.name == formats.TEXT:
        raw = [_tokenize_text(row["text"], tokenizer, options, report)]
    elif data_format.name == formats.PROMPT_COMPLETION and not data_format.conversational:
        raw = [_tokenize_prompt_completion(row, tokenizer, loss_mode, options, report)]
    elif data_format.name in (formats.MESSAGES, formats.PROMPT_COMPLETION):
        raw = _tokenize_conversation_row(row, index, tokenizer, data_format, loss_mode, options, report)
    else:
        raise ValueError(f"{data_format} rows are not language-modelling rows")
    kept = []
    special_ids = set(tokenizer.all_special_ids)
    for example in raw:
        example["row"] = index
        if data_format.name == formats.PROMPT_COMPLETION and options.max_prompt_length is not None:
            _shorten_prompt(example, options.max_prompt_length, special_ids, report)
        example = _fit_length(example, options, report)
        if example is None:
            continue
        if not any(example["loss_weights"]):
            report.dropped_no_loss += 1
            continue
        report.examples += 1
        report.tokens += len(example["input_ids"])
        report.loss_tokens += sum(1 for w in example["loss_weights"] if w)
        kept.append(example)
    return kept, report


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ModelError(
            "the tokenizer has no eos_token, so the model could never learn to stop; "
            "set tokenizer.eos_token (or eos_token in the tokenizer config)"
        )
    return tokenizer.eos_token_id


def _with_eos(ids: list[int], tokenizer, options: LMDataOptions, report: PreparationReport) -> list[int]:
    eos = _eos_id(tokenizer)
    if options.add_eos and (not ids or ids[-1] != eos):
        report.eos_appended += 1
        return ids + [eos]
    return ids


def _tokenize_text(text: str, tokenizer, options, report) -> TokenizedExample:
    ids = _with_eos(tokenizer(text, add_special_tokens=True)["input_ids"], tokenizer, options, report)
    return {"input_ids": ids, "loss_weights": [0.0] + [1.0] * (len(ids) - 1), "turn_index": [-1] * len(ids)}


def _tokenize_prompt_completion(row, tokenizer, loss_mode, options, report) -> TokenizedExample:
    prompt_ids = tokenizer(row["prompt"], add_special_tokens=True)["input_ids"]
    full_ids = tokenizer(row["prompt"] + row["completion"], add_special_tokens=True)["input_ids"]
    full_ids = _with_eos(full_ids, tokenizer, options, report)
    boundary = _common_prefix_length(prompt_ids, full_ids)
    if boundary < len(prompt_ids):
        # The tokenizer merged the end of the prompt with the start of the completion: the
        # merged token is part of what the model must produce, so it is trained on.
        report.boundary_mismatch_rows += 1
    start = max(boundary, 1)
    if loss_mode == "all":
        weights = [0.0] + [1.0] * (len(full_ids) - 1)
    else:
        weights = [0.0] * start + [1.0] * (len(full_ids) - start)
    turns = [-1] * start + [0] * (len(full_ids) - start)
    return {"input_ids": full_ids, "loss_weights": weights, "turn_index": turns}


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _trained_messages(messages: list[dict], loss_mode: str, first_completion: int) -> list[int]:
    """Indices of the messages whose spans are located (for weights or per-turn logging)."""
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if loss_mode == "completion":
        return list(range(first_completion, len(messages)))
    if loss_mode == "last_assistant":
        return assistant[-1:]
    return assistant  # "all" (for per-turn logging) and "assistant"


def _tokenize_conversation_row(row, index, tokenizer, data_format, loss_mode, options, report):
    if data_format.name == formats.MESSAGES:
        messages, first_completion = list(row["messages"]), len(row["messages"])
    else:
        messages, first_completion = list(row["prompt"]) + list(row["completion"]), len(row["prompt"])
    trained = _trained_messages(messages, loss_mode, first_completion)
    if loss_mode != "all" and not trained:
        raise DataFormatError(
            index, "messages", "no assistant turn to train on", "add an assistant reply or use loss_mode='all'"
        )
    weights = turn_weight_values(options.turn_weights, len(trained), index) if loss_mode != "all" else None
    field = "messages" if data_format.name == formats.MESSAGES else "prompt/completion"
    kwargs = {"row": index, "chat_template_kwargs": options.chat_template_kwargs, "tools": row.get("tools"), "field": field}
    try:
        tokens = tokenize_conversation(tokenizer, messages, span_messages=trained, **kwargs)
        pieces = [(tokens, trained, weights)]
    except NotPrefixPreservingError:
        if loss_mode == "all":
            # Every token is trained on anyway; only the per-turn bookkeeping is lost.
            pieces = [(tokenize_conversation(tokenizer, messages, span_messages=[], **kwargs), [], None)]
        else:
            report.split_rows += 1
            pieces = [
                (tokenize_conversation(tokenizer, messages[: k + 1], span_messages=[k], **kwargs), [k], [w])
                for k, w in zip(trained, weights)
            ]
    examples = []
    for tokens, span_messages, span_weights in pieces:
        if tokens.boundary_mismatches:
            report.boundary_mismatch_rows += 1
        examples.append(_conversation_example(tokens, trained, span_messages, span_weights))
    return examples


def _conversation_example(tokens, trained, span_messages, span_weights) -> TokenizedExample:
    """Weights and turn indices from the per-token message index. ``span_weights`` None means
    every token is trained on (loss_mode 'all')."""
    turn_of_message = {m: trained.index(m) for m in span_messages}
    weight_of_message = dict(zip(span_messages, span_weights)) if span_weights is not None else None
    weights, turns = [], []
    for message in tokens.message_index:
        turns.append(turn_of_message.get(message, -1))
        if weight_of_message is None:
            weights.append(1.0)
        else:
            weights.append(weight_of_message.get(message, 0.0))
    if weights:
        weights[0] = 0.0
    return {"input_ids": list(tokens.input_ids), "loss_weights": weights, "turn_index": turns}


def _shorten_prompt(example: TokenizedExample, limit: int, special_ids: set[int], report: PreparationReport) -> None:
    """Cut the prompt (the tokens before the first trained one) to ``limit`` tokens by removing
    tokens from its start, after a leading special token such as BOS: the end of the prompt, next
    to the completion, is what the completion depends on most. Done before ``max_length``
    truncation, so a long prompt no longer costs the completion."""
    weights = example["loss_weights"]
    start = next((i for i, w in enumerate(weights) if w), None)
    if start is None or start <= limit:
        return
    head = 1 if example["input_ids"][0] in special_ids else 0
    removed = start - limit
    for key in ("input_ids", "loss_weights", "turn_index"):
        example[key] = example[key][:head] + example[key][head + removed :]
    report.shortened_prompts += 1
    report.shortened_prompt_tokens += removed


def _fit_length(example: TokenizedExample, options: LMDataOptions, report: PreparationReport):
    limit = options.max_length
    length = len(example["input_ids"])
    if limit is None or length <= limit:
        return example
    if options.overlong == "drop":
        report.dropped_overlong += 1
        return None
    report.truncated_rows += 1
    report.truncated_tokens += length - limit
    for key in ("input_ids", "loss_weights", "turn_index"):
        example[key] = example[key][:limit]
    return example
