"""TRL's and ``transformers.TrainingArguments``' option names: mapped where they mean the same
here, refused with the exact replacement where they do not.

Users arrive with TRL code: ``SFTConfig(num_train_epochs=3, bf16=True, max_seq_length=512)``,
a ``trl.SFTConfig`` object, or a YAML file written for TRL. Every config constructor, every
YAML / ``key=value`` load and every trainer handed a foreign config object passes the option
names through :func:`translate_options`:

- an option of the config class itself is kept as given (our names always win);
- a name in :data:`ALIASES` means the same thing here under another name (or another value):
  it is translated, and a note says once per process "num_train_epochs is num_epochs here";
- a name in :data:`REFUSED`, or an alias value without a counterpart here (``eval_strategy=
  'epoch'``, ``use_vllm=True``), is refused with what to write instead and why;
- anything else is refused with the closest valid names (``learnig_rate`` -> ``learning_rate``).

The table is the single source of the README's "Coming from TRL" section (a test checks that
every name in it is listed there). Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from posttrain.errors import ConfigError
from posttrain.options import coerce

# value, every value given (after earlier translations) -> our options
Translate = Callable[[Any, Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Alias:
    """A foreign option with a counterpart here: ``translate`` maps its value to our options
    (or raises :class:`ConfigError` for a value that has none); ``note`` overrides the default
    note "<name>=<value> is <ours>=<value> here"."""

    translate: Translate
    note: str | None = None


def _plain(value: Any) -> Any:
    """An enum (transformers' ``SchedulerType.COSINE``) as its value; anything else as is."""
    return value.value if isinstance(value, enum.Enum) else value


def _renamed(ours: str) -> Alias:
    return Alias(lambda value, given: {ours: _plain(value)}, f"is {ours} here")


def _flag(name: str, value: Any) -> bool:
    return coerce(value, bool, name)


# ----------------------------------------------------------------------------- value mappings


def _precision(value: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    bf16, fp16 = _flag("bf16", given.get("bf16", False)), _flag("fp16", given.get("fp16", False))
    if bf16 and fp16:
        raise ConfigError("bf16=true and fp16=true both given; choose one: mixed_precision=bf16 or mixed_precision=fp16")
    return {"mixed_precision": "bf16" if bf16 else "fp16" if fp16 else "no"}


def _loss_mode(value: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    # TRL: assistant_only_loss trains on assistant turns; completion_only_loss=False on every
    # token; completion_only_loss None/True on the completion of prompt-completion rows and on
    # everything else otherwise, which is loss_mode=auto here.
    if _flag("assistant_only_loss", given.get("assistant_only_loss", False)):
        return {"loss_mode": "assistant"}
    completion_only = given.get("completion_only_loss")
    if completion_only is not None and not _flag("completion_only_loss", completion_only):
        return {"loss_mode": "all"}
    return {"loss_mode": "auto"}


def _strategy(steps_option: str, default_steps: Callable[[Mapping[str, Any]], int]) -> Translate:
    """``eval_strategy`` / ``save_strategy`` / ``logging_strategy``: "no" and "steps" have
    counterparts (every N optimizer steps), "epoch" and "best" do not."""

    def translate(value: Any, given: Mapping[str, Any]) -> dict[str, Any]:
        value = str(_plain(value))
        if value == "no":
            return {steps_option: 0}
        if value == "steps":
            return {} if given.get(steps_option) else {steps_option: default_steps(given)}
        raise ConfigError(
            f"{steps_option.replace('_steps', '_strategy')}={value!r} has no counterpart here: every schedule counts optimizer "
            f"steps. Use {steps_option}=N (the number of optimizer steps per epoch is printed at the start of training)"
        )

    return translate


_OPTIMIZERS = {"adamw_torch": "auto", "adamw_torch_fused": "fused"}


def _optimizer(value: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    name = str(_plain(value))
    if name in _OPTIMIZERS:
        return {"adamw_implementation": _OPTIMIZERS[name]}
    raise ConfigError(
        f"optim={name!r} is not available: every trainer here uses AdamW (torch.optim.AdamW, weight decay on matrices "
        "only). Remove optim, or choose AdamW's kernels with adamw_implementation=auto|fused|foreach|for_loop"
    )


def _log_completions(value: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    if not _flag("log_completions", value):
        return {"log_completions_steps": 0}
    return {"log_completions_steps": int(given.get("logging_steps") or 10)}


_LORA_FIELDS = {"r": "lora_r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout", "target_modules": "lora_target_modules"}
# LoraConfig fields that do not change the adapters (the trainer sets the task type itself)
_LORA_IGNORED = ("task_type", "inference_mode", "peft_type", "base_model_name_or_path", "revision")


def _lora(value: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        options = dict(value)
    else:
        try:
            from peft import LoraConfig
        except ImportError:  # peft is a dependency; without it no config object can exist either
            LoraConfig = None  # noqa: N806
        if LoraConfig is None or not isinstance(value, LoraConfig):
            raise ConfigError(f"peft_config: only LoRA is available here, got {type(value).__name__}; pass a peft LoraConfig")
        default = LoraConfig()
        options = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if getattr(value, f.name) != getattr(default, f.name)}
        options.setdefault("r", value.r)
        options.setdefault("lora_alpha", value.lora_alpha)
        options.setdefault("target_modules", value.target_modules)
    options = {key: _plain(val) for key, val in options.items() if key not in _LORA_IGNORED}
    unsupported = sorted(key for key in options if key not in _LORA_FIELDS)
    if unsupported:
        raise ConfigError(
            f"peft_config sets {', '.join(unsupported)}, which this trainer does not apply (it builds LoRA from r, "
            "lora_alpha, lora_dropout and target_modules only). Remove them, or give those four as use_lora=true, "
            "lora_r, lora_alpha, lora_dropout, lora_target_modules"
        )
    translated = {"use_lora": True}
    for key, val in options.items():
        translated[_LORA_FIELDS[key]] = sorted(val) if isinstance(val, (set, frozenset)) else val
    return translated


_DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "auto": "auto", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _model_init_kwargs(value: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    if not value:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"model_init_kwargs must be a mapping, got {value!r}")
    translated, unsupported = {}, []
    for key, val in value.items():
        if key in ("dtype", "torch_dtype"):
            name = str(val).removeprefix("torch.")
            if name not in _DTYPE_NAMES:
                raise ConfigError(f"model_init_kwargs {key}={val!r}: use model_dtype=float32|bfloat16|float16|auto")
            translated["model_dtype"] = _DTYPE_NAMES[name]
        elif key == "attn_implementation":
            translated["attn_implementation"] = val
        else:
            unsupported.append(key)
    if unsupported:
        raise ConfigError(
            f"model_init_kwargs {', '.join(sorted(unsupported))}: not applied here (models load with model_dtype and "
            "attn_implementation; accelerate places them on devices). Remove them, or load the model yourself and pass the object"
        )
    return translated


def _text_field(value: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    if value in (None, "text"):
        return {}
    renames = dict(given.get("rename_columns") or {})
    renames[str(value)] = "text"
    return {"rename_columns": renames}


def _checkpointing_kwargs(value: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    options = dict(value or {})
    if options.pop("use_reentrant", False) or options:
        raise ConfigError(
            f"gradient_checkpointing_kwargs={dict(value)!r}: checkpointing here is always non-reentrant (use_reentrant=False, "
            "which also works with LoRA's frozen inputs) and takes no other keywords; remove the option"
        )
    return {}


def _sft_loss_type(value: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    if value in (None, "nll", "chunked_nll"):
        return {}
    raise ConfigError(
        f"loss_type={value!r} is not available for SFT here: the loss is the token NLL, with the LM head run only on "
        "the trained tokens in chunks (TRL's chunked_nll). Remove loss_type"
    )


def _dataset(value: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """TRL's script arguments (``dataset_name``, ``dataset_config``, ``dataset_train_split``,
    ``dataset_test_split``) as ``train_data`` / ``eval_data`` specs."""
    name = given.get("dataset_name")
    if name is None:
        raise ConfigError("dataset_config, dataset_train_split and dataset_test_split need dataset_name; or give train_data (a file, a hub name or {path, name, split})")
    spec = {"path": name, **({"name": given["dataset_config"]} if given.get("dataset_config") else {})}
    translated = {"train_data": {**spec, "split": given.get("dataset_train_split") or "train"}}
    if given.get("dataset_test_split"):
        translated["eval_data"] = {**spec, "split": given["dataset_test_split"]}
    return translated


def _dtype(value: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    return _model_init_kwargs({"dtype": value}, given) if value is not None else {}


def _precompute(value: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    return {"reference_mode": "precomputed"} if _flag("precompute_ref_log_probs", value) else {}


def _no_op(name: str) -> Translate:
    """A flag whose off value is what happens here anyway and whose on value is refused."""

    def translate(value: Any, given: Mapping[str, Any]) -> dict[str, Any]:
        if _flag(name, value):
            raise ConfigError(REFUSED[name])
        return {}

    return translate


def _ignored(value: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    return {}


# ----------------------------------------------------------------------------- the tables

ALIASES: dict[str, Alias] = {
    "num_train_epochs": _renamed("num_epochs"),
    "lr_scheduler_type": _renamed("lr_scheduler"),
    "max_seq_length": _renamed("max_length"),
    "activation_checkpointing": _renamed("gradient_checkpointing"),
    "wandb_log_unique_prompts": _renamed("log_unique_prompts"),
    "num_ppo_epochs": _renamed("ppo_epochs"),
    "response_length": _renamed("max_completion_length"),
    "stop_token_id": Alias(lambda value, given: {"stop_token_ids": [] if value is None else [value]}, "stop_token_id=N is stop_token_ids=[N] here"),
    "bf16": Alias(_precision),
    "fp16": Alias(_precision),
    "assistant_only_loss": Alias(_loss_mode),
    "completion_only_loss": Alias(_loss_mode),
    "eval_strategy": Alias(_strategy("eval_steps", lambda given: int(given.get("logging_steps") or 10))),
    "evaluation_strategy": Alias(_strategy("eval_steps", lambda given: int(given.get("logging_steps") or 10))),
    "save_strategy": Alias(_strategy("save_steps", lambda given: 500)),
    "logging_strategy": Alias(_strategy("logging_steps", lambda given: 10)),
    "optim": Alias(_optimizer),
    "log_completions": Alias(_log_completions),
    "peft_config": Alias(_lora),
    "model_init_kwargs": Alias(_model_init_kwargs),
    "dataset_text_field": Alias(_text_field),
    "gradient_checkpointing_kwargs": Alias(_checkpointing_kwargs, "gradient_checkpointing_kwargs={'use_reentrant': False} is what checkpointing does here"),
    "loss_type": Alias(_sft_loss_type, "loss_type nll/chunked_nll is SFT's loss here (the head runs only on the trained tokens, in chunks)"),
    "precompute_ref_log_probs": Alias(_precompute),
    "use_vllm": Alias(_no_op("use_vllm"), "use_vllm=False is how completions are generated here (transformers' generate)"),
    "use_liger_kernel": Alias(_no_op("use_liger_kernel"), "use_liger_kernel=False: the plain PyTorch head is used here"),
    "remove_unused_columns": Alias(_ignored, "remove_unused_columns has no effect here: each trainer reads its format's columns, and GRPO/PPO pass the others to the reward functions"),
    "do_train": Alias(_ignored, "do_train has no effect (transformers' Trainer ignores it too)"),
    "do_eval": Alias(_ignored, "do_eval has no effect (transformers' Trainer ignores it too): evaluation runs when there is eval data"),
    # TRL's command-line script arguments and ModelConfig, as they appear in TRL's YAML files
    "model_name_or_path": _renamed("model"),
    "dataset_name": Alias(_dataset),
    "dataset_config": Alias(_dataset),
    "dataset_train_split": Alias(_dataset),
    "dataset_test_split": Alias(_dataset),
    "use_peft": _renamed("use_lora"),
    "torch_dtype": Alias(_dtype),
    "dtype": Alias(_dtype),
    "trust_remote_code": Alias(_no_op("trust_remote_code"), "trust_remote_code=False is how models load here"),
    "load_in_4bit": Alias(_no_op("load_in_4bit"), "load_in_4bit=False: weights load as model_dtype here"),
    "load_in_8bit": Alias(_no_op("load_in_8bit"), "load_in_8bit=False: weights load as model_dtype here"),
}

_DISTRIBUTED = (
    "is set up by accelerate here: write it in an accelerate config (`accelerate config`) and launch with "
    "`accelerate launch --config_file <file> -m posttrain <command> ...` (or your script)"
)
_BEST_MODEL = (
    "is not available: the final model is the last step's. Pick a checkpoint (save_steps) by its eval metrics in "
    "metrics.jsonl, or stop early with a TrainerCallback that sets control.should_training_stop"
)
_VLLM = (
    "is not available: completions are generated with transformers' generate (KV cache, batched) on the training "
    "processes; there is no vLLM engine here yet. Remove the option"
)

REFUSED: dict[str, str] = {
    "use_vllm": f"use_vllm=True {_VLLM}",
    "trust_remote_code": "trust_remote_code=True is not available: models load with transformers' own classes only. Remove it",
    "load_in_4bit": "load_in_4bit=True is not available: quantized (bitsandbytes) loading is not supported here; use model_dtype=bfloat16 (with use_lora for less memory)",
    "load_in_8bit": "load_in_8bit=True is not available: quantized (bitsandbytes) loading is not supported here; use model_dtype=bfloat16 (with use_lora for less memory)",
    "use_liger_kernel": (
        "use_liger_kernel=True is not available: the LM head here already runs only on the trained tokens, in chunks "
        "(logits_chunk_size), so the full logits never exist. Remove it"
    ),
    "deepspeed": f"deepspeed {_DISTRIBUTED}",
    "fsdp": f"fsdp {_DISTRIBUTED}",
    "fsdp_config": f"fsdp_config {_DISTRIBUTED}",
    "load_best_model_at_end": f"load_best_model_at_end {_BEST_MODEL}",
    "metric_for_best_model": f"metric_for_best_model {_BEST_MODEL}",
    "greater_is_better": f"greater_is_better {_BEST_MODEL}",
    "hub_token": (
        "hub_token is not an option here (config.yaml records every option, so the token would be written to disk): "
        "log in with `hf auth login` or set HF_TOKEN"
    ),
    "rpo_alpha": (
        "rpo_alpha={value} is written loss_type=[sigmoid, nll] with loss_weights=[1.0, {value}] here. The NLL term differs slightly "
        "from TRL's: each pair's per-token mean over its chosen tokens, averaged over pairs (TRL averages over all "
        "chosen tokens of the batch)"
    ),
    "sync_ref_model": "sync_ref_model (TR-DPO) is not available: the reference stays fixed. Remove it",
    "ref_model_sync_steps": "ref_model_sync_steps (TR-DPO) is not available: the reference stays fixed. Remove it",
    "ref_model_mixup_alpha": "ref_model_mixup_alpha (TR-DPO) is not available: the reference stays fixed. Remove it",
    "steps_per_generation": (
        "steps_per_generation is not available: here one generation batch is one optimizer step's completions "
        "(per_device_train_batch_size x gradient_accumulation_steps per process), reused for num_iterations steps"
    ),
    "max_completion_length": (
        "max_completion_length applies to GRPO and PPO only; this trainer limits prompt + completion with max_length "
        "and prompts with max_prompt_length"
    ),
    "logging_dir": "logging_dir is fixed here: tracker logs go to output_dir/logs. Remove it (or set output_dir)",
    # keywords of TRL's trainers (not of their configs) that have no counterpart here
    "data_collator": "data_collator is not taken: each trainer batches its own data (padding, packing=true or padding_free=true). Remove it",
    "formatting_func": "formatting_func is not taken: format the rows before passing them (train_dataset=[f(row) for row in rows]), or rename their columns with rename_columns",
    "compute_metrics": "compute_metrics is not taken: evaluation reports each trainer's own metrics (eval/loss, ...); compute others from a TrainerCallback's on_evaluate",
    "preprocess_logits_for_metrics": "preprocess_logits_for_metrics is not taken: full logits are never kept here (the head runs in chunks). Remove it",
    "optimizers": "optimizers is not taken: AdamW and the schedule are built from the config (learning_rate, lr_scheduler, ...). Remove it",
    "model_init": "model_init is not taken: pass the model (a path or an object). Remove it",
}
# every vllm_* option (vllm_mode, vllm_gpu_memory_utilization, ...) is refused like use_vllm
_REFUSED_PREFIXES = {"vllm_": _VLLM}


def _warmup_steps(value: Any) -> Any:
    if isinstance(value, float) and 0 < value < 1:
        raise ConfigError(f"warmup_steps={value} is a ratio of the run (as transformers 5 reads it); here write warmup_ratio={value}")
    return value


# Values of our own options that transformers writes differently (max_steps=-1: no limit).
OWN_VALUES: dict[str, Callable[[Any], Any]] = {
    "max_steps": lambda value: 0 if value == -1 else value,
    "save_total_limit": lambda value: 0 if value is None else value,
    "warmup_steps": _warmup_steps,
}


def known_names() -> list[str]:
    """Every foreign name this module handles (for the README check)."""
    return sorted(set(ALIASES) | set(REFUSED))


# ----------------------------------------------------------------------------- translating

_shown_notes: set[str] = set()


def show_note(key: str, text: str) -> None:
    """Print ``text`` once per process (main process only) on stderr: notes come from config
    construction, before any trainer and its console exist."""
    if key in _shown_notes or int(os.environ.get("RANK", "0")) != 0:
        return
    _shown_notes.add(key)
    print(f"posttrain: {text}", file=sys.stderr)


def _note_text(name: str, value: Any, alias: Alias, result: dict[str, Any]) -> str:
    if alias.note is not None:
        return alias.note if alias.note.startswith(name) else f"{name} {alias.note}"
    ours = ", ".join(f"{key}={val!r}" for key, val in result.items()) or "nothing"
    shown = repr(_plain(value))
    return f"{name}={shown if len(shown) <= 40 else type(value).__name__ + '(...)'} is {ours} here"


def translate_options(config_cls: type, values: Mapping[str, Any], *, source: str | None = None) -> dict[str, Any]:
    """``values`` with TRL/transformers names translated to ``config_cls``'s options.

    Raises :class:`ConfigError` for a refused name or value, a contradiction between a foreign
    name and ours, or an unknown name (with the closest valid names). ``source`` names where
    the values came from in messages (e.g. ``trl.SFTConfig``)."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    out = {key: OWN_VALUES.get(key, _same)(value) for key, value in values.items() if key in fields}
    foreign = [key for key in values if key not in fields]
    given = dict(values)
    where = f" (from {source})" if source else ""
    for name in foreign:
        refusal = _refusal(name)
        if name not in ALIASES and refusal is not None:
            raise ConfigError(refusal.replace("{value}", repr(_plain(values[name]))) + where)
        alias = ALIASES.get(name)
        if alias is None:
            raise _unknown(name, config_cls, fields, where)
        result = alias.translate(values[name], {**given, **out})
        for key, value in result.items():
            _merge(out, key, value, name, config_cls, fields, where)
        show_note(name, _note_text(name, values[name], alias, result))
    return out


def _same(value: Any) -> Any:
    return value


def _refusal(name: str) -> str | None:
    if name in REFUSED:
        return REFUSED[name]
    for prefix, message in _REFUSED_PREFIXES.items():
        if name.startswith(prefix):
            return f"{name} {message}"
    return None


def _merge(out: dict, key: str, value: Any, name: str, config_cls: type, fields: set[str], where: str) -> None:
    if key not in fields:
        raise ConfigError(f"option {name!r}{where} is {key!r} here, which {config_cls.__name__} does not have; remove it (`--help-config` lists the options)")
    if key in out and out[key] != value:
        raise ConfigError(f"options {name!r} and {key!r} contradict{where}: {name} means {key}={value!r} here, but {key}={out[key]!r} is given; keep one")
    out[key] = value


def _unknown(name: str, config_cls: type, fields: set[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(str(name), sorted(fields | set(ALIASES)), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `posttrain <command> --help-config` lists them"
    return ConfigError(f"unknown option {name!r} for {config_cls.__name__}{where}{hint}")


# ----------------------------------------------------------------------------- foreign objects

# Fields of transformers' TrainingArguments derived from others or describing the process, not
# the run: never translated.
_DERIVED = ("logging_dir", "local_rank", "accelerator_config", "distributed_state", "deepspeed_plugin", "report_to_all")


def options_from_object(config: Any, config_cls: type) -> dict[str, Any]:
    """Our options from a TRL / transformers config object: the fields it sets to something
    other than its class's default, translated (all unknown ones refused together)."""
    source = f"{type(config).__module__.split('.')[0]}.{type(config).__name__}"
    reference = _default_instance(config)
    values = {}
    for f in dataclasses.fields(config):
        if not f.init or f.name in _DERIVED or f.name.startswith("_"):
            continue
        value = _plain(getattr(config, f.name))
        if value != _plain(getattr(reference, f.name, _field_default(f))):
            values[f.name] = value
    # output_dir is compared with the class's own default ("trainer_output" for transformers)
    default_dir = getattr(_default_instance(config, same_output_dir=False), "output_dir", None)
    if getattr(config, "output_dir", None) not in (None, default_dir):
        values["output_dir"] = config.output_dir
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(name for name in values if name not in fields and name not in ALIASES and _refusal(name) is None)
    if unknown:
        raise ConfigError(
            f"{source} sets {', '.join(f'{name}={values[name]!r}' for name in unknown)}, which {config_cls.__name__} "
            "has no counterpart for; remove them (`posttrain <command> --help-config` lists the options here)"
        )
    return translate_options(config_cls, values, source=source)


def _default_instance(config: Any, same_output_dir: bool = True) -> Any:
    """A default instance of ``config``'s class (with the same ``output_dir``, so values a
    ``__post_init__`` derives from it compare equal); None when the class cannot be built so."""
    try:
        return type(config)(output_dir=getattr(config, "output_dir", None)) if same_output_dir else type(config)()
    except Exception:  # noqa: BLE001 - any class; fall back to the declared defaults
        return None


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None
