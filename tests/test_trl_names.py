"""TRL's and transformers' option names: each alias gives the option it stands for, each
refusal names the replacement, typos get suggestions, notes are shown once. No model is loaded."""

from __future__ import annotations

import json

import pytest

from posttrain import DPOConfig, GRPOConfig, KTOConfig, PPOConfig, SFTConfig, load_config, trl_names
from posttrain.errors import ConfigError


@pytest.fixture(autouse=True)
def _fresh_notes(monkeypatch):
    monkeypatch.setattr(trl_names, "_shown_notes", set())


@pytest.mark.parametrize(
    "config_cls, trl, ours",
    [
        (SFTConfig, {"num_train_epochs": 3}, {"num_epochs": 3.0}),
        (SFTConfig, {"lr_scheduler_type": "linear"}, {"lr_scheduler": "linear"}),
        (SFTConfig, {"max_seq_length": 256}, {"max_length": 256}),
        (SFTConfig, {"bf16": True}, {"mixed_precision": "bf16"}),
        (SFTConfig, {"bf16": False, "fp16": False}, {"mixed_precision": "no"}),
        (SFTConfig, {"assistant_only_loss": True}, {"loss_mode": "assistant"}),
        (SFTConfig, {"completion_only_loss": False}, {"loss_mode": "all"}),
        (SFTConfig, {"completion_only_loss": True}, {"loss_mode": "auto"}),  # TRL: completion for prompt-completion rows only
        (SFTConfig, {"eval_strategy": "steps", "logging_steps": 5}, {"eval_steps": 5}),  # TRL: eval_steps defaults to logging_steps
        (SFTConfig, {"eval_strategy": "steps", "eval_steps": 7}, {"eval_steps": 7}),
        (SFTConfig, {"save_strategy": "no"}, {"save_steps": 0}),
        (SFTConfig, {"save_strategy": "steps"}, {"save_steps": 500}),  # transformers' default save_steps
        (SFTConfig, {"logging_strategy": "no"}, {"logging_steps": 0}),
        (SFTConfig, {"optim": "adamw_torch_fused"}, {"adamw_implementation": "fused"}),
        (SFTConfig, {"dataset_text_field": "content"}, {"rename_columns": {"content": "text"}}),
        (SFTConfig, {"model_init_kwargs": {"torch_dtype": "bfloat16", "attn_implementation": "eager"}}, {"model_dtype": "bfloat16", "attn_implementation": "eager"}),
        (SFTConfig, {"peft_config": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}}, {"use_lora": True, "lora_r": 8, "lora_alpha": 16, "lora_target_modules": ["q_proj"]}),
        (SFTConfig, {"max_steps": -1}, {"max_steps": 0}),
        (SFTConfig, {"save_total_limit": None}, {"save_total_limit": 0}),
        (SFTConfig, {"activation_checkpointing": True}, {"gradient_checkpointing": True}),
        (DPOConfig, {"precompute_ref_log_probs": True}, {"reference_mode": "precomputed"}),
        (GRPOConfig, {"log_completions": True, "logging_steps": 4}, {"log_completions_steps": 4}),
        (GRPOConfig, {"use_vllm": False, "wandb_log_unique_prompts": True}, {"log_unique_prompts": True}),
        (PPOConfig, {"num_ppo_epochs": 2, "response_length": 24, "stop_token_id": 7}, {"ppo_epochs": 2, "max_completion_length": 24, "stop_token_ids": [7]}),
        # a YAML written for TRL's command line (ScriptArguments and ModelConfig)
        (SFTConfig, {"model_name_or_path": "org/model", "dataset_name": "org/data", "dataset_config": "main", "dataset_test_split": "test",
                     "use_peft": True, "lora_r": 8, "torch_dtype": "bfloat16", "trust_remote_code": False},
         {"model": "org/model", "train_data": {"path": "org/data", "name": "main", "split": "train"},
          "eval_data": {"path": "org/data", "name": "main", "split": "test"}, "use_lora": True, "lora_r": 8, "model_dtype": "bfloat16"}),
    ],
)
def test_alias_means_our_option(config_cls, trl, ours):
    config = config_cls(**trl)
    assert {name: getattr(config, name) for name in ours} == ours
    # the same through key=value (parsed as YAML, of which JSON is a part), the CLI's route
    from_cli = load_config(config_cls, None, [f"{key}={json.dumps(value)}" for key, value in trl.items()])
    assert {name: getattr(from_cli, name) for name in ours} == ours


@pytest.mark.parametrize(
    "config_cls, trl, fragments",
    [
        (GRPOConfig, {"use_vllm": True}, ["use_vllm=True is not available", "transformers' generate"]),
        (GRPOConfig, {"vllm_mode": "server"}, ["vllm_mode is not available"]),
        (SFTConfig, {"eval_strategy": "epoch"}, ["eval_strategy='epoch' has no counterpart", "eval_steps=N"]),
        (SFTConfig, {"save_strategy": "best"}, ["save_strategy='best' has no counterpart", "save_steps=N"]),
        (SFTConfig, {"optim": "adafactor"}, ["optim='adafactor' is not available", "adamw_implementation"]),
        (DPOConfig, {"rpo_alpha": 0.5}, ["rpo_alpha=0.5 is written loss_type=[sigmoid, nll] with loss_weights=[1.0, 0.5]"]),
        (SFTConfig, {"use_liger_kernel": True}, ["use_liger_kernel=True is not available"]),
        (SFTConfig, {"load_best_model_at_end": True}, ["load_best_model_at_end is not available", "should_training_stop"]),
        (SFTConfig, {"deepspeed": "ds.json"}, ["deepspeed is set up by accelerate", "accelerate launch --config_file"]),
        (SFTConfig, {"hub_token": "hf_x"}, ["hub_token is not an option", "HF_TOKEN"]),
        (DPOConfig, {"max_completion_length": 64}, ["max_completion_length applies to GRPO and PPO only", "max_length"]),
        (GRPOConfig, {"max_seq_length": 64}, ["'max_seq_length' is 'max_length' here, which GRPOConfig does not have"]),
        (SFTConfig, {"warmup_steps": 0.1}, ["warmup_ratio=0.1"]),
        (SFTConfig, {"bf16": True, "fp16": True}, ["choose one"]),
        (SFTConfig, {"bf16": True, "mixed_precision": "no"}, ["'bf16' and 'mixed_precision' contradict"]),
        (SFTConfig, {"eval_strategy": "no", "eval_steps": 50}, ["'eval_strategy' and 'eval_steps' contradict"]),
        (SFTConfig, {"gradient_checkpointing_kwargs": {"use_reentrant": True}}, ["always non-reentrant"]),
        (SFTConfig, {"loss_type": "dft"}, ["loss_type='dft' is not available for SFT"]),
        (SFTConfig, {"peft_config": {"r": 8, "modules_to_save": ["score"]}}, ["peft_config sets modules_to_save"]),
        (SFTConfig, {"model_init_kwargs": {"device_map": "auto"}}, ["model_init_kwargs device_map: not applied here"]),
        (SFTConfig, {"load_in_4bit": True}, ["load_in_4bit=True is not available", "model_dtype=bfloat16"]),
        (SFTConfig, {"trust_remote_code": True}, ["trust_remote_code=True is not available"]),
        (SFTConfig, {"dataset_train_split": "train"}, ["need dataset_name"]),
        (KTOConfig, {"learnig_rate": 1e-5}, ["unknown option 'learnig_rate' for KTOConfig; did you mean learning_rate"]),
        (SFTConfig, {"num_train_epoch": 1}, ["did you mean num_train_epochs"]),
    ],
)
def test_refused_with_the_replacement(config_cls, trl, fragments):
    with pytest.raises(ConfigError) as refused:
        config_cls(**trl)
    for fragment in fragments:
        assert fragment in str(refused.value)


def test_peft_lora_config_object():
    from peft import LoraConfig

    config = SFTConfig(peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["v_proj", "q_proj"], task_type="CAUSAL_LM"))
    assert (config.use_lora, config.lora_r, config.lora_alpha, config.lora_dropout, sorted(config.lora_target_modules)) == (True, 4, 8, 0.1, ["q_proj", "v_proj"])
    with pytest.raises(ConfigError, match="peft_config sets use_dora"):
        SFTConfig(peft_config=LoraConfig(r=4, use_dora=True))


def test_each_note_is_shown_once(capsys):
    SFTConfig(num_train_epochs=2, bf16=False)
    SFTConfig(num_train_epochs=3)
    err = capsys.readouterr().err.splitlines()
    assert err == ["posttrain: num_train_epochs is num_epochs here", "posttrain: bf16=False is mixed_precision='no' here"]


def test_positional_options_are_refused():
    with pytest.raises(ConfigError, match=r"SFTConfig takes options by name, e.g. SFTConfig\(output_dir="):
        SFTConfig("outputs/x")  # TrainingArguments' first positional argument is output_dir; ours would be the model


def test_report_to_values():
    assert SFTConfig(report_to="none").report_to == [] and SFTConfig(report_to=None).report_to == []
    assert SFTConfig(report_to="tensorboard").report_to == ["tensorboard"]  # installed with the dev extra
    assert "tensorboard" in SFTConfig(report_to="all").report_to
    with pytest.raises(ConfigError, match="'neptune' is not a tracker accelerate serves"):
        SFTConfig(report_to=["neptune"])


def test_schedules_are_checked_when_the_config_is_made():
    assert SFTConfig(lr_scheduler="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1}).lr_scheduler == "cosine_with_min_lr"
    with pytest.raises(ConfigError, match="cosine_with_min_lr cannot be built with lr_scheduler_kwargs={}"):
        SFTConfig(lr_scheduler="cosine_with_min_lr")
    with pytest.raises(ConfigError, match="reduce_lr_on_plateau steps on an evaluation metric"):
        SFTConfig(lr_scheduler="reduce_lr_on_plateau")
    with pytest.raises(ConfigError, match="unknown schedule 'cosin'; did you mean cosine"):
        SFTConfig(lr_scheduler="cosin")


def test_trl_trainer_keywords_are_refused_by_name(model_path):
    from posttrain import SFTTrainer

    with pytest.raises(ConfigError, match="formatting_func is not taken: format the rows before passing them"):
        SFTTrainer(model_path("llama"), train_dataset=[{"text": "a b"}], formatting_func=lambda row: row["text"])
    # an object of the wrong type is named by its type, never by a multi-line repr
    import torch

    with pytest.raises(ConfigError, match=r"^option 'ref_model' must be a string or null, got a Sequential object \(Sequential\)$"):
        DPOConfig(ref_model=torch.nn.Sequential(torch.nn.Linear(2, 2)))
