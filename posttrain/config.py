"""Configuration dataclasses, loaded from YAML plus ``key=value`` overrides.

Every field carries its documentation in ``metadata["help"]`` (shown by
``posttrain <command> --help-config``). Values from YAML and the command line are converted to
the field's declared type, and an unknown key is refused with the closest valid names, so a
typo like ``learning_rte=1e-4`` can never be silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def option(default: Any, help: str, **kwargs) -> Any:  # noqa: A002 - "help" reads best here
    """A dataclass field with documentation; lists/dicts get a copy per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class TrainConfig:
    """Options shared by every trainer: optimisation, schedule, precision, logging, checkpoints."""

    # --- model and data sources (the CLI reads these; Python callers may pass objects instead)
    model: str | None = option(None, "Model path or hub name (the CLI loads it; Python callers may pass a model object).")
    tokenizer: str | None = option(None, "Tokenizer path or hub name; defaults to the model's.")
    train_data: Any = option(None, "Training data for the CLI: a .json/.jsonl/.parquet/.csv file, a hub dataset name, or {path, name, split}.")
    eval_data: Any = option(None, "Evaluation data, same forms as train_data.")
    rename_columns: dict = option({}, "Rename dataset columns before the format is detected, e.g. {question: prompt} for a dataset published with a 'question' column.")
    eval_fraction: float = option(0.0, "When no eval_data is given, hold out this fraction of the training rows for evaluation.")
    output_dir: str = option("outputs/run", "Directory for checkpoints, logs, metrics.jsonl and the final model.")
    seed: int = option(42, "Seed for model init of new heads, data order and dropout.")

    # --- optimisation
    learning_rate: float = option(2e-5, "Peak learning rate (AdamW).")
    weight_decay: float = option(0.0, "AdamW weight decay, applied to matrices only (not biases or norms).")
    adam_beta1: float = option(0.9, "AdamW beta1.")
    adam_beta2: float = option(0.999, "AdamW beta2.")
    adam_epsilon: float = option(1e-8, "AdamW epsilon.")
    lr_scheduler: str = option("cosine", "Schedule after warm-up: any transformers scheduler name (linear, cosine, constant_with_warmup, ...).")
    warmup_ratio: float = option(0.0, "Warm-up length as a fraction of all optimizer steps (ignored if warmup_steps > 0).")
    warmup_steps: int = option(0, "Warm-up length in optimizer steps.")
    max_grad_norm: float = option(1.0, "Clip the global gradient norm to this value; 0 disables clipping.")
    num_epochs: float = option(1.0, "Passes over the training data (fractions allowed). Ignored when max_steps > 0.")
    max_steps: int = option(0, "Total optimizer steps; overrides num_epochs when > 0.")
    per_device_train_batch_size: int = option(8, "Rows per device per micro-batch (a packed row counts as one).")
    gradient_accumulation_steps: int = option(1, "Micro-batches per optimizer step. The loss is normalised over the whole accumulated batch.")
    per_device_eval_batch_size: int = option(8, "Rows per device per evaluation batch.")

    # --- precision and memory
    mixed_precision: str = option("auto", "auto (bf16 on GPUs that support it, else none), no, bf16 or fp16.")
    model_dtype: str = option("float32", "dtype to load weights in: float32, bfloat16, float16 or auto (the checkpoint's).")
    attn_implementation: str | None = option("sdpa", "Attention kernel: sdpa, eager, flash_attention_2, ... (None: transformers' default).")
    gradient_checkpointing: bool = option(False, "Recompute activations in backward to save memory.")
    disable_dropout: bool = option(False, "Switch off dropout in the model (and reference). On by default in every trainer that compares two forward passes (DPO, KTO, reward models, GRPO, PPO), whose differences would otherwise carry dropout noise.")
    logits_chunk_size: int | None = option(None, "Tokens per chunk of the LM head when computing log-probs; None picks one so a chunk's logits stay under ~256 MB, 0 never chunks.")

    # --- LoRA (peft)
    use_lora: bool = option(False, "Train LoRA adapters (peft) instead of all weights.")
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: int = option(32, "LoRA alpha (scale = alpha / r).")
    lora_dropout: float = option(0.0, "Dropout on the LoRA input.")
    lora_target_modules: Any = option("all-linear", "Modules to adapt: 'all-linear' or a list of module names.")

    # --- evaluation, logging, checkpoints
    eval_steps: int = option(0, "Evaluate every N optimizer steps (0: only at the end, when there is eval data).")
    logging_steps: int = option(10, "Log metrics every N optimizer steps.")
    report_to: Any = option([], "Trackers besides the console and metrics.jsonl: tensorboard, wandb.")
    run_name: str | None = option(None, "Run name for trackers.")
    progress_bar: bool = option(True, "Show a Rich progress bar.")
    log_completions_steps: int = option(0, "Show sampled completions every N optimizer steps (console panel and completions.jsonl; online trainers log their rollouts with rewards, the others generate for a few fixed prompts); 0: never.")
    num_completions_to_print: int = option(8, "Rows of the console's completion panel (completions.jsonl gets every row).")
    log_unique_prompts: bool = option(False, "In the completion panel, show one completion per prompt.")
    save_steps: int = option(0, "Write a checkpoint every N optimizer steps (0: none during training).")
    save_total_limit: int = option(2, "Keep only the newest K checkpoints.")
    resume_from_checkpoint: Any = option(None, "'latest' (the newest in output_dir), a checkpoint path, or None.")
    overwrite_output_dir: bool = option(False, "Delete an earlier run found in output_dir (its checkpoints, final model, config.yaml, metrics.jsonl, completions.jsonl, logs) and start afresh; without it such a run is refused unless resumed.")
    save_final_model: bool = option(True, "Save the final model and tokenizer with save_pretrained to output_dir/final.")
    dataloader_num_workers: int = option(0, "DataLoader worker processes.")

    def __post_init__(self):
        if self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("per_device_train_batch_size and gradient_accumulation_steps must be >= 1")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to] if self.report_to not in ("", "none") else []


# ----------------------------------------------------------------------------- loading


def load_config(config_cls: type, path: str | Path | None = None, overrides: list[str] | None = None, **values):
    """Build ``config_cls`` from a YAML file, then ``key=value`` overrides, then keyword values."""
    merged: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of option: value at the top level")
        merged.update(loaded)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        merged[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    merged.update(values)
    return config_from_dict(config_cls, merged)


def config_from_dict(config_cls: type, values: dict[str, Any]):
    """Instantiate ``config_cls`` with each value converted to its field's type."""
    hints = typing.get_type_hints(config_cls)
    names = {f.name for f in dataclasses.fields(config_cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown option {key!r} for {config_cls.__name__}{hint}")
        kwargs[key] = coerce(value, hints[key], key)
    return config_cls(**kwargs)


def coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert a YAML/CLI value to ``annotation`` (int, float, bool, str, lists, optionals)."""
    if annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option_type in options:
            if option_type is type(None):
                continue
            try:
                return coerce(value, option_type, name)
            except (TypeError, ValueError) as error:
                errors.append(str(error))
        raise ValueError(f"option {name!r}: cannot use {value!r} ({'; '.join(errors)})")
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"option {name!r}: expected a list, got {value!r}")
        args = typing.get_args(annotation)
        return [coerce(v, args[0], name) for v in value] if args else list(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(f"option {name!r}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"option {name!r}: expected an integer, got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, bool):
            raise ValueError(f"option {name!r}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, int, float)):
            raise ValueError(f"option {name!r}: expected a string, got {value!r}")
        return str(value)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ValueError(f"option {name!r}: expected a mapping, got {value!r}")
        return value
    return value


def describe_config(config_cls: type) -> str:
    """One line per option: name, type, default and help (for --help-config)."""
    lines = []
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  {f.name} = {default!r}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def config_to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)
