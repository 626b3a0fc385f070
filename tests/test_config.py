"""YAML + key=value configs: types converted, typos refused."""

import pytest

from posttrain.config import TrainConfig, describe_config, load_config


def test_yaml_then_overrides_then_keywords(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 1.0e-4\nmax_steps: 10\nreport_to: tensorboard\n")
    config = load_config(TrainConfig, path, ["learning_rate=3e-4", "use_lora=true", "lora_target_modules=q_proj,v_proj"], seed=7)
    assert config.learning_rate == pytest.approx(3e-4)  # "3e-4" is a string to YAML 1.1; converted
    assert config.max_steps == 10
    assert config.use_lora is True
    assert config.lora_target_modules == "q_proj,v_proj"  # declared Any: kept as given
    assert config.report_to == ["tensorboard"]
    assert config.seed == 7


def test_unknown_option_suggests_the_close_one():
    with pytest.raises(ValueError, match="unknown option 'learning_rte'.*learning_rate"):
        load_config(TrainConfig, None, ["learning_rte=1e-4"])


def test_bad_types_are_refused():
    with pytest.raises(ValueError, match="max_steps"):
        load_config(TrainConfig, None, ["max_steps=1.5"])
    with pytest.raises(ValueError, match="use_lora"):
        load_config(TrainConfig, None, ["use_lora=maybe"])


def test_optional_fields_accept_null():
    config = load_config(TrainConfig, None, ["logits_chunk_size=null", "run_name=abc"])
    assert config.logits_chunk_size is None and config.run_name == "abc"
    assert load_config(TrainConfig, None, ["logits_chunk_size=4096"]).logits_chunk_size == 4096


def test_invalid_values_fail_in_post_init():
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp8")


def test_every_option_is_documented():
    text = describe_config(TrainConfig)
    for line in text.splitlines()[1::2]:
        assert line.strip(), "an option has no help text"
