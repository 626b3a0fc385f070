"""Loading models and tokenizers (a path, a hub name, or an object the caller already built)
and wrapping them with LoRA adapters through peft."""

from __future__ import annotations

import contextlib
import math
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from posttrain.data.files import looks_local
from posttrain.errors import ConfigError, ModelError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
# A directory holds a model when it has one of these (a full checkpoint or peft adapters).
_MODEL_FILES = ("config.json", "adapter_config.json")
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt")


def is_path(source) -> bool:
    """Whether ``source`` names a model/tokenizer (``str`` or any ``os.PathLike``) rather than
    being an object already built."""
    return isinstance(source, (str, os.PathLike))


def tokenizer_source(model):
    """Where ``model``'s tokenizer lives: the path or hub name itself, or, for a model object,
    the ``name_or_path`` it was loaded from (``from_pretrained`` records it); None if unknown."""
    if is_path(model):
        return os.fspath(model)
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(name) if name else None


def resolve_source(source, what: str = "model", files: tuple[str, ...] = _MODEL_FILES) -> str:
    """``source`` as a string for ``from_pretrained``, refusing a local path with nothing there.

    A name that can only be a local path (absolute, ``./``, ``~``, or more than one ``/``) and
    does not exist gives "no model at <path>", instead of the hub's complaint about repo ids."""
    path = os.fspath(source)
    local = Path(path).expanduser()
    if local.is_dir():
        if not any((local / name).is_file() for name in files):
            raise ModelError(f"no {what} at {path}: the directory has none of {', '.join(files)} (write one with save_pretrained)")
        return str(local)
    if local.exists():
        raise ModelError(f"no {what} at {path}: it is a file; give the directory that save_pretrained wrote")
    if looks_local(path):
        raise ModelError(f"no {what} at {path}: no such directory")
    return path


def _load_pretrained(auto_class, source, what: str, files: tuple[str, ...], **kwargs):
    name = resolve_source(source, what, files)
    try:
        return auto_class.from_pretrained(name, **kwargs)
    except OSError as error:  # transformers reports "not found" (local or hub) as OSError
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"could not load the {what} {name!r}: {first}") from error


def load_tokenizer(source, fallback_source=None):
    """A tokenizer object from ``source`` (object, path or hub name), else from
    ``fallback_source`` (the model's path, or where a model object was loaded from).

    A tokenizer without a pad token gets its EOS as pad: our batches weigh the loss explicitly,
    so an EOS that doubles as pad is still trained on.
    """
    from transformers import AutoTokenizer

    what = "tokenizer"
    if source is None:
        source, what = fallback_source, "model"
    if source is None:
        raise ModelError(
            "no tokenizer given, and the model object does not say where it was loaded from (its name_or_path is "
            "empty); pass tokenizer=... (TRL's name, processing_class=..., works too)"
        )
    tokenizer = _load_pretrained(AutoTokenizer, source, what, _MODEL_FILES + _TOKENIZER_FILES) if is_path(source) else source
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ModelError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def set_chat_template(tokenizer, template: str | None) -> None:
    """Replace the tokenizer's chat template with ``template`` (Jinja text or a file path)."""
    if not template:
        return
    path = Path(template)
    tokenizer.chat_template = path.read_text() if "{" not in template and path.is_file() else template


def prepare_attention(attn_implementation: str | None) -> None:
    """Refuse an attention kernel that cannot run here (missing package, wrong device) with the
    fix, before any weights load; register ``torch_varlen`` with transformers when asked for."""
    from posttrain.models.attention import TORCH_VARLEN, attention_problem, register_torch_varlen

    problem = attention_problem(attn_implementation, "cuda" if torch.cuda.is_available() else "cpu")
    if problem is not None:
        raise ConfigError(f"option 'attn_implementation': {problem}")
    if attn_implementation == TORCH_VARLEN:
        register_torch_varlen()


def _from_pretrained(auto_class, source, model_dtype: str, attn_implementation: str | None, **kwargs):
    if model_dtype not in _DTYPES:
        raise ModelError(f"model_dtype must be one of {sorted(_DTYPES)}, got {model_dtype!r}")
    kwargs["dtype"] = _DTYPES[model_dtype]
    if attn_implementation:
        prepare_attention(attn_implementation)
        kwargs["attn_implementation"] = attn_implementation
    return _load_pretrained(auto_class, source, "model", _MODEL_FILES, **kwargs)


def load_causal_lm(source, *, model_dtype: str = "float32", attn_implementation: str | None = "sdpa"):
    """A causal LM from a path (``str`` or ``os.PathLike``) or hub name, or ``source`` itself
    when it is already a model."""
    from transformers import AutoModelForCausalLM

    if not is_path(source):
        return source
    return _from_pretrained(AutoModelForCausalLM, source, model_dtype, attn_implementation)


def load_sequence_classifier(source, *, model_dtype: str = "float32", attn_implementation: str | None = "sdpa", report=print):
    """A one-output sequence classifier (a reward model) from a path/hub name, or ``source``
    itself when it is already a model. A causal-LM checkpoint gets a new, randomly initialised
    score head; ``report`` receives one line saying which weights are new and which of the
    checkpoint's went unused (in place of transformers' LOAD REPORT table)."""
    from transformers import AutoModelForSequenceClassification

    if not is_path(source):
        return source
    with _load_report_replaced():
        model, info = _from_pretrained(AutoModelForSequenceClassification, source, model_dtype, attn_implementation, num_labels=1, output_loading_info=True)
    line = loading_summary(info)
    if line:
        report(f"{os.fspath(source)}: {line}")
    return model


class _load_report_replaced(contextlib.ContextDecorator):  # noqa: N801 - used like a function
    """Drop transformers' LOAD REPORT log record (a table with raw terminal escape codes, even in
    a log file) while a model loads; the caller reports :func:`loading_summary` instead."""

    def __enter__(self):
        import logging

        self._logger = logging.getLogger("transformers.modeling_utils")
        self._logger.addFilter(self._drop)
        return self

    def __exit__(self, *exc):
        self._logger.removeFilter(self._drop)
        return False

    @staticmethod
    def _drop(record) -> bool:
        return "LOAD REPORT" not in str(record.msg)


def loading_summary(info: dict) -> str | None:
    """One line from transformers' loading info: new weights (not in the checkpoint) and the
    checkpoint's unused ones; None when every weight matched."""
    parts = []
    if info.get("missing_keys"):
        parts.append(f"new, randomly initialised (not in the checkpoint): {', '.join(sorted(info['missing_keys']))}")
    if info.get("unexpected_keys"):
        parts.append(f"in the checkpoint but unused: {', '.join(sorted(info['unexpected_keys']))}")
    return "; ".join(parts) or None


def enable_activation_checkpointing(model, fraction: float = 1.0) -> int:
    """Recompute activations in backward, non-reentrant (works with frozen inputs, as under LoRA),
    in the first ``ceil(fraction x blocks)`` transformer blocks; returns how many.
    transformers 5.23 renamed ``gradient_checkpointing_enable``; older releases only have it."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # transformers switches checkpointing on per block (a flag on each block)
    blocks = [block for block in transformer_blocks(model) if block.gradient_checkpointing]
    keep = math.ceil(fraction * len(blocks))
    for block in blocks[keep:]:
        block.gradient_checkpointing = False
    return min(keep, len(blocks))


def transformer_blocks(model) -> list:
    """The repeated blocks of a transformers model, in order (e.g. its ``Qwen2DecoderLayer``s):
    transformers 5 derives every such block from ``GradientCheckpointingLayer``, the unit it
    checkpoints and the unit :mod:`posttrain.models.compile` compiles."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]


def apply_lora(model, config, task_type: str = "CAUSAL_LM"):
    """Wrap ``model`` with LoRA adapters from the ``lora_*`` fields of a TrainConfig."""
    from peft import LoraConfig, get_peft_model

    target = config.lora_target_modules
    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=target if isinstance(target, str) else list(target),
        task_type=task_type,
    )
    return get_peft_model(model, lora_config)


def prepare_for_training(model, config, task_type: str = "CAUSAL_LM"):
    """What every trainer does to a freshly loaded model before training, per its config:
    activation checkpointing (``gradient_checkpointing``, ``gradient_checkpointing_fraction``),
    then LoRA adapters (``use_lora``; a model that has adapters already keeps its own)."""
    if config.gradient_checkpointing:
        enable_activation_checkpointing(model, config.gradient_checkpointing_fraction)
    if config.use_lora and not is_peft_model(model):
        model = apply_lora(model, config, task_type=task_type)
    return model


@contextmanager
def kept_trainable(model):
    """Put every adapter parameter's ``requires_grad`` back after the block. peft's
    ``set_adapter`` and ``disable_adapter`` leave only the active adapter trainable; PPO trains
    two adapter sets (policy and critic) under one optimizer."""
    flags = [(p, p.requires_grad) for n, p in model.named_parameters() if "lora_" in n]
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


@contextmanager
def adapters_disabled(model):
    """Run the block with a peft model's adapters switched off (the frozen base model), every
    adapter's ``requires_grad`` unchanged afterwards."""
    with kept_trainable(model), model.disable_adapter():
        yield


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but keep the check harmless without it
        return False
    return isinstance(model, PeftModel)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


_DROPOUT_ATTRIBUTES = ("attention_dropout", "dropout", "dropout_p")
_DROPOUT_CONFIG_KEYS = ("attn_pdrop", "resid_pdrop", "embd_pdrop", "summary_first_dropout", "hidden_dropout", "attention_probs_dropout_prob", "hidden_dropout_prob", "classifier_dropout")


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability in ``model`` to 0 (modules and attention-dropout config
    values), so two forwards of the same batch give the same numbers."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        # attention layers keep their probability as a float read at every forward (e.g. Llama's
        # `attention_dropout`, passed to sdpa) rather than in an nn.Dropout
        for name in _DROPOUT_ATTRIBUTES:
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    config = getattr(model, "config", None)
    for name in _DROPOUT_ATTRIBUTES + _DROPOUT_CONFIG_KEYS:
        if isinstance(getattr(config, name, None), float):
            setattr(config, name, 0.0)
