"""Bad-input corpus, part 1: options (Python API, YAML, overrides) and model paths. Every case
ends in a ConfigError/ModelError whose message names the option (or path) and what is allowed,
or in a correctly built config."""

from __future__ import annotations

import pytest
import torch

from posttrain.algorithms.dpo import DPOConfig
from posttrain.algorithms.grpo import GRPOConfig
from posttrain.algorithms.kto import KTOConfig
from posttrain.algorithms.ppo import PPOConfig
from posttrain.algorithms.reward import RewardConfig
from posttrain.algorithms.sft import SFTConfig
from posttrain.config import TrainConfig, load_config
from posttrain.errors import ConfigError, ModelError, UserError

# (config class, keyword values, fragments the message must contain)
BAD_OPTIONS = [
    (TrainConfig, {"num_epochs": 0}, ["'num_epochs'", "(0, inf)", "got 0.0"]),
    (TrainConfig, {"max_steps": -5}, ["'max_steps'", "[0, inf)", "got -5"]),
    (TrainConfig, {"save_steps": -1}, ["'save_steps'", "[0, inf)"]),
    (TrainConfig, {"eval_steps": -2}, ["'eval_steps'", "[0, inf)"]),
    (TrainConfig, {"eval_fraction": -0.5}, ["'eval_fraction'", "[0, 1)", "-0.5"]),
    (TrainConfig, {"eval_fraction": 1.0}, ["'eval_fraction'", "[0, 1)"]),
    (TrainConfig, {"warmup_ratio": 5}, ["'warmup_ratio'", "[0, 1]"]),
    (TrainConfig, {"warmup_steps": -1}, ["'warmup_steps'"]),
    (TrainConfig, {"learning_rate": -1e-4}, ["'learning_rate'", "[0, inf)"]),
    (TrainConfig, {"max_grad_norm": -1}, ["'max_grad_norm'"]),
    (TrainConfig, {"per_device_train_batch_size": 0}, ["'per_device_train_batch_size'", "[1, inf)"]),
    (TrainConfig, {"gradient_accumulation_steps": 0}, ["'gradient_accumulation_steps'", "[1, inf)"]),
    (TrainConfig, {"lora_dropout": 1.0}, ["'lora_dropout'", "[0, 1)"]),
    (TrainConfig, {"seed": -1}, ["'seed'"]),
    (TrainConfig, {"adam_beta2": 1.5}, ["'adam_beta2'", "[0, 1)"]),
    (DPOConfig, {"beta": -1}, ["'beta'", "(0, inf)", "KL anchor"]),
    (DPOConfig, {"beta": 0}, ["'beta'", "(0, inf)"]),
    (DPOConfig, {"label_smoothing": 1.0}, ["'label_smoothing'", "[0, 1)"]),
    (KTOConfig, {"desirable_weight": -1}, ["'desirable_weight'", "(0, inf)"]),
    (KTOConfig, {"undesirable_weight": 0}, ["'undesirable_weight'", "(0, inf)"]),
    (RewardConfig, {"center_rewards_coefficient": -0.01}, ["'center_rewards_coefficient'"]),
    (SFTConfig, {"max_length": 1}, ["'max_length'", "[2, inf)"]),
    # wrong types name the option and the type it needs
    (TrainConfig, {"learning_rate": "fast"}, ["'learning_rate'", "a number", "'fast'"]),
    (TrainConfig, {"max_steps": "ten"}, ["'max_steps'", "an integer", "'ten'"]),
    (TrainConfig, {"max_steps": 1.5}, ["'max_steps'", "an integer"]),
    (TrainConfig, {"use_lora": "maybe"}, ["'use_lora'", "true or false"]),
    (SFTConfig, {"max_length": "abc"}, ["'max_length'", "an integer or null"]),
    (TrainConfig, {"output_dir": ["a", "b"]}, ["'output_dir'", "a string"]),
    # choices
    (TrainConfig, {"mixed_precision": "fp8"}, ["'mixed_precision'", "auto, no, bf16, fp16", "'fp8'"]),
    (TrainConfig, {"model_dtype": "fp32"}, ["'model_dtype'", "float32"]),
    (SFTConfig, {"loss_mode": "assistants"}, ["'loss_mode'", "last_assistant"]),
    (SFTConfig, {"overlong": "cut"}, ["'overlong'", "truncate, drop"]),
    (DPOConfig, {"reference_mode": "frozen"}, ["'reference_mode'", "adapters_disabled"]),
    (GRPOConfig, {"kl_estimator": "k9"}, ["'kl_estimator'", "k1, k2, k3", "'k9'"]),
    (GRPOConfig, {"reference_mode": "precomputed"}, ["'reference_mode'", "auto, model, adapters_disabled"]),
    # contradictions between options
    (SFTConfig, {"packing": True, "padding_free": True}, ["'packing'", "'padding_free'", "only one"]),
    (DPOConfig, {"packing": True, "padding_free": True}, ["'packing'", "'padding_free'"]),
    (SFTConfig, {"packing": True, "max_length": None}, ["'packing'", "max_length"]),
    (DPOConfig, {"loss_type": "dpo"}, ["'loss_type'", "dpo", "sigmoid"]),
    (DPOConfig, {"loss_type": ["sigmoid", "nll"], "loss_weights": [1.0]}, ["'loss_weights'", "1 weight", "2 loss type"]),
    (DPOConfig, {"loss_type": "robust", "label_smoothing": 0.6}, ["'label_smoothing'", "below 0.5", "robust"]),
    (PPOConfig, {"critic": "twin"}, ["critic must be one of", "'twin'"]),
    (PPOConfig, {"batch_size": 12}, ["batch_size = 12", "multiple of the mini-batch"]),
]


@pytest.mark.parametrize("config_cls, values, fragments", BAD_OPTIONS, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_bad_option_names_the_option_and_what_is_allowed(config_cls, values, fragments):
    with pytest.raises(ConfigError) as error:
        config_cls(**values)
    for fragment in fragments:
        assert fragment in str(error.value), (fragment, str(error.value))


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid on a GPU machine")
def test_fp16_on_a_cpu_only_machine_is_refused():
    with pytest.raises(ConfigError, match=r"'mixed_precision' is fp16, but this machine has no GPU.*mixed_precision=no"):
        TrainConfig(mixed_precision="fp16")


def test_values_of_the_right_type_are_converted():
    # a string number from Python, an int for a float, a pathlib path for a string option
    from pathlib import Path

    config = SFTConfig(learning_rate="3e-4", num_epochs=2, output_dir=Path("out") / "run")
    assert config.learning_rate == pytest.approx(3e-4) and config.num_epochs == 2.0 and config.output_dir == str(Path("out/run"))


# ----------------------------------------------------------------------------- YAML and overrides


def _yaml(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, overrides, fragments",
    [
        (None, ["learning_rte=1e-4"], ["unknown option 'learning_rte'", "did you mean learning_rate"]),
        (None, ["totally_unknown=1"], ["unknown option 'totally_unknown'", "--help-config"]),
        (None, ["max_steps"], ["'max_steps' is not key=value"]),
        (None, ["train_data={path: x"], ["override", "invalid YAML"]),
        ("learning_rate: [1e-4\nmax_steps: 3\n", [], ["run.yaml", "line", "invalid YAML"]),
        ("- learning_rate\n- max_steps\n", [], ["run.yaml", "expected a mapping of option: value", "list"]),
        ("max_steps: -5\n", [], ["'max_steps'", "[0, inf)"]),
        ("learning_rate: fast\n", [], ["'learning_rate'", "a number"]),
    ],
)
def test_bad_yaml_and_overrides(tmp_path, text, overrides, fragments):
    path = _yaml(tmp_path, text) if text is not None else None
    with pytest.raises(ConfigError) as error:
        load_config(SFTConfig, path, overrides)
    for fragment in fragments:
        assert fragment in str(error.value), (fragment, str(error.value))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*nope.yaml does not exist"):
        load_config(SFTConfig, tmp_path / "nope.yaml")


def test_yaml_no_and_yes_are_strings_or_booleans_as_the_option_needs(tmp_path):
    # YAML 1.1 reads `no` as false; mixed_precision takes the string "no", use_lora a boolean
    config = load_config(SFTConfig, _yaml(tmp_path, "mixed_precision: no\nuse_lora: yes\nlearning_rate: 1e-4\n"), ["padding_free=on"])
    assert config.mixed_precision == "no" and config.use_lora is True and config.padding_free is True
    assert config.learning_rate == pytest.approx(1e-4)


# ----------------------------------------------------------------------------- models


def _trainer(model, tmp_path, **extra):
    from posttrain.algorithms.sft import SFTTrainer

    return SFTTrainer(model, output_dir=str(tmp_path / "out"), train_dataset=[{"text": "a b c"}], progress_bar=False, **extra)


@pytest.mark.parametrize(
    "make_source, fragments",
    [
        (lambda tmp: str(tmp / "no-such-model"), ["no model at", "no-such-model", "no such directory"]),
        (lambda tmp: "./relative/missing", ["no model at ./relative/missing"]),
        (lambda tmp: tmp / "missing-as-path", ["no model at", "missing-as-path"]),
        (lambda tmp: (tmp / "empty").mkdir() or str(tmp / "empty"), ["no model at", "config.json", "save_pretrained"]),
        (lambda tmp: (tmp / "weights.bin").write_text("x") and str(tmp / "weights.bin"), ["no model at", "it is a file"]),
    ],
)
def test_model_path_that_holds_no_model(tmp_path, make_source, fragments):
    with pytest.raises(ModelError) as error:
        _trainer(make_source(tmp_path), tmp_path)
    for fragment in fragments:
        assert fragment in str(error.value), (fragment, str(error.value))


def test_tokenizer_path_that_holds_no_tokenizer(tmp_path, model_path):
    with pytest.raises(ModelError, match=r"no tokenizer at /nowhere/tok"):
        _trainer(model_path("llama"), tmp_path, tokenizer="/nowhere/tok")


def test_no_model_at_all(tmp_path):
    from posttrain.algorithms.sft import SFTTrainer

    with pytest.raises(ConfigError, match=r"no model given: pass model=.*option 'model'"):
        SFTTrainer(output_dir=str(tmp_path), train_dataset=[{"text": "a"}])


def test_every_user_error_is_a_value_error_for_python_callers():
    # code that caught ValueError before the hierarchy existed keeps working
    for cls in (ConfigError, ModelError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError)
