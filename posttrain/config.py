"""Configuration dataclasses, loaded from YAML plus ``key=value`` overrides.

Every field carries its documentation in ``metadata["help"]`` (shown by
``posttrain <command> --help-config``). Values from YAML and the command line are converted to
the field's declared type, and an unknown key is refused with the closest valid names, so a
typo like ``learning_rte=1e-4`` can never be silently ignored -- in a YAML file, on the
command line and in ``SFTConfig(learnig_rate=...)`` alike. TRL's and transformers' names for
the same options (``num_train_epochs``, ``bf16``, ...) are translated or refused with the
replacement (:mod:`posttrain.trl_names`).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from posttrain.errors import ConfigError
from posttrain.options import coerce, field_rules, option, validate_config
from posttrain.trl_names import translate_options

__all__ = ["TrainConfig", "coerce", "config_from_dict", "config_to_dict", "describe_config", "load_config", "option"]


# accelerate's trackers -> the packages that provide them (any one of them will do)
TRACKERS = {
    "tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "trackio": ("trackio",), "comet_ml": ("comet_ml",),
    "mlflow": ("mlflow",), "aim": ("aim",), "clearml": ("clearml",), "dvclive": ("dvclive",), "swanlab": ("swanlab",),
}


class _ConfigType(type):
    """Every config is built through :func:`~posttrain.trl_names.translate_options`: a typo gets
    the closest valid names and TRL's names are translated (or refused with the replacement),
    where a plain dataclass would raise a bare ``TypeError``."""

    def __call__(cls, *args, **kwargs):
        if args:
            raise ConfigError(f"{cls.__name__} takes options by name, e.g. {cls.__name__}(output_dir='outputs/my-run', learning_rate=1e-5)")
        return super().__call__(**translate_options(cls, kwargs))


@dataclass
class TrainConfig(metaclass=_ConfigType):
    """Options shared by every trainer: optimisation, schedule, precision, logging, checkpoints."""

    # --- model and data sources (the CLI reads these; Python callers may pass objects instead)
    model: str | None = option(None, "Model path or hub name (the CLI loads it; Python callers may pass a model object).")
    tokenizer: str | None = option(None, "Tokenizer path or hub name; defaults to the model's.")
    train_data: Any = option(None, "Training data for the CLI: a .json/.jsonl/.parquet/.csv file, a hub dataset name, or {path, name, split}.")
    eval_data: Any = option(None, "Evaluation data, same forms as train_data.")
    rename_columns: dict = option({}, "Rename dataset columns before the format is detected, e.g. {question: prompt} for a dataset published with a 'question' column.")
    eval_fraction: float = option(0.0, "When no eval_data is given, hold out this fraction of the training rows for evaluation.", range="[0, 1)")
    output_dir: str | None = option(None, "Directory for config.yaml, metrics.jsonl, checkpoints, logs and the final model; None: a new outputs/<algorithm>-<date>-<time> per run (printed at the start).")
    seed: int = option(42, "Seed for model init of new heads, data order and dropout.", range="[0, inf)")

    # --- optimisation
    learning_rate: float = option(2e-5, "Peak learning rate (AdamW).", range="[0, inf)")
    weight_decay: float = option(0.0, "AdamW weight decay, applied to matrices only (not biases or norms).", range="[0, inf)")
    adam_beta1: float = option(0.9, "AdamW beta1.", range="[0, 1)")
    adam_beta2: float = option(0.999, "AdamW beta2.", range="[0, 1)")
    adam_epsilon: float = option(1e-8, "AdamW epsilon.", range="(0, inf)")
    adamw_implementation: str = option("auto", "AdamW kernels: auto (fused on CUDA, foreach elsewhere), fused (one kernel for all parameters; CUDA and CPU), foreach, for_loop (least memory). All give the same update up to float rounding.", choices=("auto", "fused", "foreach", "for_loop"))
    lr_scheduler: str = option("cosine", "Schedule after warm-up, by its transformers name: linear, cosine, cosine_with_restarts, polynomial, constant, constant_with_warmup, inverse_sqrt; cosine_with_min_lr, cosine_warmup_with_min_lr and warmup_stable_decay with lr_scheduler_kwargs.")
    lr_scheduler_kwargs: dict = option({}, "Extra arguments of the schedule, e.g. {min_lr_rate: 0.1} for cosine_with_min_lr, {num_decay_steps: 100} for warmup_stable_decay.")
    warmup_ratio: float = option(0.0, "Warm-up length as a fraction of all optimizer steps (ignored if warmup_steps > 0).", range="[0, 1]")
    warmup_steps: int = option(0, "Warm-up length in optimizer steps.", range="[0, inf)")
    max_grad_norm: float = option(1.0, "Clip the global gradient norm to this value; 0 disables clipping.", range="[0, inf)")
    num_epochs: float = option(1.0, "Passes over the training data (fractions allowed). Ignored when max_steps > 0.", range="(0, inf)")
    max_steps: int = option(0, "Total optimizer steps; overrides num_epochs when > 0.", range="[0, inf)")
    per_device_train_batch_size: int = option(8, "Rows per device per micro-batch (a packed row counts as one).", range="[1, inf)")
    gradient_accumulation_steps: int = option(1, "Micro-batches per optimizer step. The loss is normalised over the whole accumulated batch.", range="[1, inf)")
    per_device_eval_batch_size: int = option(8, "Rows per device per evaluation batch.", range="[1, inf)")

    # --- precision and memory
    mixed_precision: str = option("auto", "auto (bf16 on GPUs that support it, else none), no, bf16 or fp16 (GPU only).", choices=("auto", "no", "bf16", "fp16"))
    model_dtype: str = option("float32", "dtype to load weights in: float32, bfloat16, float16 or auto (the checkpoint's). bfloat16 with master_weights is the fast GPU setting: no weight cast at every matmul, half-size activations, float32 updates.", choices=("float32", "bfloat16", "float16", "auto"))
    master_weights: bool = option(True, "With 16-bit trainable weights (model_dtype bfloat16/float16), keep float32 master copies in the optimizer and update those, so updates smaller than 16-bit resolution are not lost (+4 bytes per parameter). False updates the 16-bit weights directly (bfloat16 only: AdamW's state underflows in float16).")
    attn_implementation: str | None = option("sdpa", "Attention kernel: sdpa, eager, flex_attention (CUDA), torch_varlen (PyTorch's FlashAttention varlen kernel, CUDA: packed rows without a materialised mask), flash_attention_2 (needs flash-attn) (None: transformers' default). Packed and padding-free runs are probed at start-up whichever kernel is chosen.")
    torch_compile: bool = option(False, "Compile each transformer block and the log-prob head with torch.compile (fuses elementwise work, saves activation memory; the first steps pay the compile time, minutes on CPU).")
    gradient_checkpointing: bool = option(False, "Recompute activations in backward to save memory.")
    gradient_checkpointing_fraction: float = option(1.0, "With gradient_checkpointing, the share of transformer blocks recomputed in backward (the first ceil(fraction x layers)); the others keep their activations. Activation memory and the extra forward both scale with it, so take the smallest share that fits.", range="(0, 1]")
    disable_dropout: bool = option(False, "Switch off dropout in the model (and reference). On by default in every trainer that compares two forward passes (DPO, KTO, reward models, GRPO, PPO), whose differences would otherwise carry dropout noise.")
    logits_chunk_size: int | None = option(None, "Tokens per chunk of the LM head when computing log-probs; None picks one so a chunk's logits stay under ~256 MB, 0 never chunks.", range="[0, inf)")

    # --- sharding (FSDP2)
    fsdp: bool = option(False, "Shard parameters, gradients and AdamW state over all processes with PyTorch FSDP2 (each transformer block a unit; checkpoints sharded with torch.distributed.checkpoint; final/ an ordinary Hugging Face checkpoint). Launch with torchrun or accelerate launch; plain Python runs it as one process. Needs model_dtype float32 (mixed_precision bf16 computes in bf16).")
    fsdp_reshard_after_forward: bool = option(True, "With fsdp: free each block's gathered weights after its forward and gather them again for the backward (least memory); false keeps them from forward to backward (one all-gather less per block and micro-batch).")

    # --- LoRA (peft)
    use_lora: bool = option(False, "Train LoRA adapters (peft) instead of all weights.")
    lora_r: int = option(16, "LoRA rank.", range="[1, inf)")
    lora_alpha: int = option(32, "LoRA alpha (scale = alpha / r).", range="(0, inf)")
    lora_dropout: float = option(0.0, "Dropout on the LoRA input.", range="[0, 1)")
    lora_target_modules: Any = option("all-linear", "Modules to adapt: 'all-linear' or a list of module names.")

    # --- evaluation, logging, checkpoints
    eval_steps: int = option(0, "Evaluate every N optimizer steps (0: only at the end, when there is eval data).", range="[0, inf)")
    logging_steps: int = option(10, "Log metrics every N optimizer steps (0: never).", range="[0, inf)")
    report_to: Any = option([], "Trackers besides the console and metrics.jsonl (through accelerate): tensorboard, wandb, trackio, comet_ml, mlflow, aim, clearml, dvclive, swanlab; all: every one installed; none.")
    run_name: str | None = option(None, "Run name for trackers.")
    progress_bar: bool = option(True, "Show a Rich progress bar.")
    log_completions_steps: int = option(0, "Show sampled completions every N optimizer steps (console panel and completions.jsonl; online trainers log their rollouts with rewards, the others generate for a few fixed prompts); 0: never.")
    num_completions_to_print: int = option(8, "Rows of the console's completion panel (completions.jsonl gets every row).")
    log_unique_prompts: bool = option(False, "In the completion panel, show one completion per prompt.")
    save_steps: int = option(0, "Write a checkpoint every N optimizer steps (0: none during training).", range="[0, inf)")
    save_total_limit: int = option(2, "Keep only the newest K checkpoints (0: keep all).", range="[0, inf)")
    resume_from_checkpoint: Any = option(None, "'latest' (the newest in output_dir), a checkpoint path, or None.")
    overwrite_output_dir: bool = option(False, "Delete an earlier run found in output_dir (its checkpoints, final model, config.yaml, metrics.jsonl, completions.jsonl, logs) and start afresh; without it such a run is refused unless resumed.")
    save_final_model: bool = option(True, "Save the final model and tokenizer with save_pretrained to output_dir/final.")
    push_to_hub: bool = option(False, "At the end of training, upload output_dir/final to the Hugging Face Hub (hub_model_id; the token of `hf auth login` or HF_TOKEN).")
    hub_model_id: str | None = option(None, "Hub repository for push_to_hub, e.g. my-org/my-model; default: the output_dir's name under your account.")
    hub_private_repo: bool | None = option(None, "Create the hub repository private (None: the hub's default).")
    dataloader_num_workers: int = option(0, "DataLoader worker processes.", range="[0, inf)")

    def __post_init__(self):
        self.report_to = checked_trackers(self.report_to)
        validate_config(self)


def checked_trackers(report_to) -> list[str]:
    """``report_to`` as a list of installed trackers accelerate serves; "all" is every installed
    one, "none" or None none. Anything else is refused with the fix."""
    if report_to in (None, "", "none"):
        return []
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    if names in (["all"], ["none"]):
        return [name for name in TRACKERS if _installed(name)] if names == ["all"] else []
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"option 'report_to': {name!r} is not a tracker accelerate serves; choose from {', '.join(TRACKERS)}, all or none")
        if not _installed(name):
            raise ConfigError(f"option 'report_to': {name} is not installed; pip install {TRACKERS[name][0]}, or remove {name} from report_to")
    return names


def _installed(tracker: str) -> bool:
    return any(importlib.util.find_spec(package) is not None for package in TRACKERS[tracker])


# ----------------------------------------------------------------------------- loading


class _YamlLoader(yaml.SafeLoader):
    """YAML with only true/false as booleans (as YAML 1.2): ``mixed_precision: no`` stays the
    string "no" instead of becoming False."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def parse_yaml(text: str, where: str):
    """``text`` parsed as YAML; a syntax error becomes a ConfigError naming ``where`` and the line."""
    try:
        return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{where}{line}: invalid YAML ({problem}). Fix the syntax, e.g. `learning_rate: 1.0e-4` per line") from None


def load_config(config_cls: type, path: str | Path | None = None, overrides: list[str] | None = None, **values):
    """Build ``config_cls`` from a YAML file, then ``key=value`` overrides, then keyword values."""
    merged: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist; give the path of a YAML file of option: value lines")
        loaded = parse_yaml(Path(path).read_text(), str(path)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of option: value at the top level, got {type(loaded).__name__}")
        merged.update(loaded)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            hint = f"; to read options from the file, pass --config {item}" if item.endswith((".yaml", ".yml", ".json")) or Path(item).is_file() else ""
            raise ConfigError(f"override {item!r} is not key=value (e.g. learning_rate=1e-4){hint}")
        merged[key.strip()] = parse_yaml(raw, f"override {item!r}") if raw.strip() else None
    merged.update(values)
    return config_from_dict(config_cls, merged)


def config_from_dict(config_cls: type, values: dict[str, Any]):
    """Instantiate ``config_cls`` with each value converted to its field's type (TRL's names
    translated first)."""
    hints = typing.get_type_hints(config_cls)
    translated = translate_options(config_cls, values)
    return config_cls(**{key: coerce(value, hints[key], key) for key, value in translated.items()})


def describe_config(config_cls: type) -> str:
    """One line per option: name, default, allowed values, and help (for --help-config)."""
    lines, rules = [], field_rules(config_cls)
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rule = rules.get(f.name, {})
        allowed = f" in {rule['range'].text}" if "range" in rule else ""
        allowed += f" (one of {', '.join(map(str, rule['choices']))})" if "choices" in rule else ""
        lines.append(f"  {f.name} = {default!r}{allowed}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def config_to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def yaml_value(value: Any) -> Any:
    """``value`` in a form YAML writes and :func:`load_config` reads back as the same option
    value: tuples and sets as lists, paths as strings, enums as their values; None for an
    object with no YAML form (the caller says what it was)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return yaml_value(value.value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(key): yaml_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [yaml_value(item) for item in (sorted(value) if isinstance(value, (set, frozenset)) else value)]
    return None
