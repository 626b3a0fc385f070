"""Code written for TRL's trainers runs on ours as a migrating user types it (issue 8): ``args=``
and ``processing_class=``, a model object without a tokenizer (the one saved with it is used),
a model path given as ``pathlib.Path``."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain import testing
from posttrain.algorithms.dpo import DPOTrainer
from posttrain.algorithms.kto import KTOConfig, KTOTrainer
from posttrain.algorithms.sft import SFTConfig, SFTTrainer
from posttrain.errors import ConfigError, ModelError
from posttrain.tasks import ArithmeticTask

QUIET = dict(progress_bar=False, logging_steps=0, save_final_model=False, mixed_precision="no", max_length=48)


def _weights(model) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _changed(before: dict, model) -> bool:
    return any(not torch.equal(before[name], p.detach()) for name, p in model.named_parameters())


def test_kto_with_trl_keyword_names(tmp_path):
    path = testing.fixture_path("llama")
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ds = ArithmeticTask(seed=0).unpaired("train", 8)
    trainer = KTOTrainer(
        model=model,
        args=KTOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3, **QUIET),
        processing_class=tokenizer,
        train_dataset=ds,
    )
    assert trainer.tokenizer is tokenizer and trainer.config.max_steps == 2
    before = _weights(trainer.model)
    assert trainer.train().step == 2
    assert _changed(before, trainer.model)


def test_dpo_model_object_without_tokenizer_uses_the_one_saved_with_it(tmp_path):
    path = testing.fixture_path("llama")
    ds = ArithmeticTask(seed=0).preference_pairs("train", 8)
    trainer = DPOTrainer(
        AutoModelForCausalLM.from_pretrained(path), train_dataset=ds, beta=0.1,
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3, **QUIET,
    )
    # the tokenizer came from the model's name_or_path: the saved fixture directory
    assert trainer.tokenizer.get_vocab() == AutoTokenizer.from_pretrained(path).get_vocab()
    before = _weights(trainer.model)
    assert trainer.train().step == 2
    assert _changed(before, trainer.model)


def test_a_pathlib_path_is_a_model_path(tmp_path):
    rows = ArithmeticTask(seed=0).prompt_completion("train", 8)
    trainer = SFTTrainer(testing.fixture_path("llama"), SFTConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, **QUIET), train_dataset=rows)
    assert trainer.train().step == 1
    # in a config too (the CLI's route), as a string or a path
    assert SFTConfig(model=testing.fixture_path("llama")).model == str(testing.fixture_path("llama"))


def test_no_tokenizer_anywhere_is_the_only_error(tmp_path):
    model = testing.build_causal_lm("llama", testing.build_tokenizer("chatml"))  # built in memory: no name_or_path
    rows = ArithmeticTask(seed=0).prompt_completion("train", 4)
    with pytest.raises(ModelError, match=r"no tokenizer given.*pass tokenizer=.*processing_class="):
        SFTTrainer(model, output_dir=str(tmp_path), train_dataset=rows)


def test_config_and_args_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="both config= and args="):
        SFTTrainer(testing.fixture_path("llama"), SFTConfig(), args=SFTConfig(), train_dataset=[{"text": "a b"}])
