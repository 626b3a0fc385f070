"""Loading models and tokenizers (a path, a hub name, or an object the caller already built)
and wrapping them with LoRA adapters through peft."""

from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def load_tokenizer(source, fallback_source=None):
    """A tokenizer object from ``source`` (object or path), else from ``fallback_source``.

    A tokenizer without a pad token gets its EOS as pad: our batches weigh the loss explicitly,
    so an EOS that doubles as pad is still trained on.
    """
    from transformers import AutoTokenizer

    if source is None:
        source = fallback_source
    if source is None:
        raise ValueError("no tokenizer given and the model was passed as an object; pass tokenizer=...")
    tokenizer = AutoTokenizer.from_pretrained(source) if isinstance(source, str) else source
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def set_chat_template(tokenizer, template: str | None) -> None:
    """Replace the tokenizer's chat template with ``template`` (Jinja text or a file path)."""
    if not template:
        return
    from pathlib import Path

    path = Path(template)
    tokenizer.chat_template = path.read_text() if "{" not in template and path.is_file() else template


def _from_pretrained(auto_class, source: str, model_dtype: str, attn_implementation: str | None, **kwargs):
    if model_dtype not in _DTYPES:
        raise ValueError(f"model_dtype must be one of {sorted(_DTYPES)}, got {model_dtype!r}")
    kwargs["dtype"] = _DTYPES[model_dtype]
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return auto_class.from_pretrained(source, **kwargs)


def load_causal_lm(source, *, model_dtype: str = "float32", attn_implementation: str | None = "sdpa"):
    """A causal LM from a path/hub name, or ``source`` itself when it is already a model."""
    from transformers import AutoModelForCausalLM

    if not isinstance(source, str):
        return source
    return _from_pretrained(AutoModelForCausalLM, source, model_dtype, attn_implementation)


def load_sequence_classifier(source, *, model_dtype: str = "float32", attn_implementation: str | None = "sdpa"):
    """A one-output sequence classifier (a reward model) from a path/hub name, or ``source``
    itself when it is already a model. A causal-LM checkpoint gets a new, randomly initialised
    score head."""
    from transformers import AutoModelForSequenceClassification

    if not isinstance(source, str):
        return source
    return _from_pretrained(AutoModelForSequenceClassification, source, model_dtype, attn_implementation, num_labels=1)


def enable_activation_checkpointing(model) -> None:
    """Recompute activations in backward, non-reentrant (works with frozen inputs, as under LoRA).
    transformers 5.23 renamed ``gradient_checkpointing_enable``; older releases only have it."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


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
