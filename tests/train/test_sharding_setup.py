"""The parts of sharded training that run in one unsharded process: refusing what cannot be
sharded, refusing a checkpoint of the other kind or another global batch, the whole-weights copy
that rollouts generate from, and re-tying gathered weights. The sharded runs themselves are in
tests/train/test_sharded.py (spawned processes)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain import SFTConfig, SFTTrainer
from posttrain.errors import ConfigError
from posttrain.models.loading import apply_lora
from posttrain.rollout import HFGenerationEngine, SamplingOptions
from posttrain.tasks import ArithmeticTask
from posttrain.train import sharding
from posttrain.train.whole_weights import WholeWeights


def test_a_module_of_plain_tensors_is_refused_as_unsharded():
    """What DDP (or no wrapper) leaves: ordinary parameters. The run stops instead of training."""
    with pytest.raises(sharding.ShardingError, match=r"2 parameter\(s\) are not sharded over the 2 process\(es\), e.g. weight"):
        sharding.check_sharded(torch.nn.Linear(4, 4), num_processes=2)


@pytest.mark.parametrize(("option", "value"), [("model_dtype", "bfloat16"), ("torch_compile", True)])
def test_options_fsdp_cannot_honour_are_refused(option, value):
    with pytest.raises(ConfigError, match="option 'fsdp'"):
        SFTConfig(fsdp=True, **{option: value})
    SFTConfig(fsdp=False, **{option: value})  # fine without sharding


def test_accelerate_asking_for_fsdp1_is_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    assert sharding.sharding_requested(SFTConfig())  # the launcher's request counts as the option
    with pytest.raises(ConfigError, match="--fsdp_version 2"):
        sharding.build_plugin(SFTConfig(), "no")


def test_bf16_plugin_gathers_in_bf16_and_reduces_in_fp32():
    policy = sharding.build_plugin(SFTConfig(fsdp=True), "bf16").mixed_precision_policy
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert sharding.build_plugin(SFTConfig(fsdp=True), "no").mixed_precision_policy is None


def test_checkpoint_of_the_other_kind_is_refused(tmp_path):
    sharded, whole = tmp_path / "sharded", tmp_path / "whole"
    (sharded / sharding.SHARDED_MODEL_DIR).mkdir(parents=True)
    whole.mkdir()
    (whole / sharding.UNSHARDED_MODEL_FILE).write_bytes(b"")
    with pytest.raises(ConfigError, match="written by a sharded run"):
        sharding.check_checkpoint_kind(sharded, sharded=False)
    with pytest.raises(ConfigError, match="written by an unsharded run"):
        sharding.check_checkpoint_kind(whole, sharded=True)
    sharding.check_checkpoint_kind(sharded, sharded=True)
    sharding.check_checkpoint_kind(whole, sharded=False)


def test_resume_with_another_global_batch_is_refused(model_path, tmp_path, kill_at):
    """A checkpoint's position in the epoch counts micro-batches; with another number of rows per
    micro-batch over all processes it would point at other rows."""
    rows = ArithmeticTask(seed=2).prompt_completion("train", 8)
    options = dict(output_dir=str(tmp_path), max_steps=2, save_steps=1, progress_bar=False, logging_steps=0, save_final_model=False)
    with pytest.raises(RuntimeError, match="killed at step 1"):  # an unfinished run: resuming it is allowed
        SFTTrainer(model_path("llama"), SFTConfig(**options, per_device_train_batch_size=2), train_dataset=rows, callbacks=[kill_at(1)]).train()
    resumed = SFTConfig(**options, per_device_train_batch_size=4, resume_from_checkpoint=str(tmp_path / "checkpoints" / "checkpoint-1"))
    with pytest.raises(ConfigError, match="loaded 2 items per micro-batch over all processes; this run loads 4"):
        SFTTrainer(model_path("llama"), resumed, train_dataset=rows).train()


@pytest.mark.parametrize("lora", [False, True])
def test_whole_weights_copy_generates_as_the_model_and_holds_nothing_after(model_path, lora):
    model = AutoModelForCausalLM.from_pretrained(model_path("llama"))
    tokenizer = AutoTokenizer.from_pretrained(model_path("llama"))
    if lora:  # a peft model generates through its adapters: give them weights that change the samples
        model = apply_lora(model, SFTConfig(use_lora=True, lora_r=4))
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(generator=torch.Generator().manual_seed(0))
    whole = WholeWeights(model)
    assert all(p.is_meta for p in whole.copy.parameters())  # the structure only
    prompts, options = [[5, 6, 7], [8, 9]], SamplingOptions(max_completion_length=6, temperature=1.5)
    torch.manual_seed(0)
    expected = HFGenerationEngine(model, tokenizer).generate(prompts, options)
    torch.manual_seed(0)
    actual = HFGenerationEngine(model, tokenizer, weights=whole.gathered).generate(prompts, options)
    assert [c.token_ids for c in actual] == [c.token_ids for c in expected]
    with whole.gathered() as copy:
        assert copy.get_output_embeddings().weight is copy.get_input_embeddings().weight  # still tied
        live = dict(model.named_parameters())
        assert all(torch.equal(parameter, live[name]) for name, parameter in copy.named_parameters())
    assert all(p.is_meta for p in whole.copy.parameters())  # gathered weights freed
    assert not any(p.is_meta for p in model.parameters())


def test_retie_makes_gathered_tied_weights_one_tensor(model_path):
    model = AutoModelForCausalLM.from_pretrained(model_path("llama"))
    gathered = {name: value.clone() for name, value in model.state_dict().items()}  # as from shards: no sharing
    tied = sharding.retie(gathered, model)
    assert tied["lm_head.weight"] is tied["model.embed_tokens.weight"]
    assert tied["model.norm.weight"] is gathered["model.norm.weight"]


MIXED_RUNS = """
import sys
from torch.distributed.tensor import DTensor
from posttrain import SFTConfig, SFTTrainer
from posttrain.tasks import ArithmeticTask

rows = ArithmeticTask(seed=1).prompt_completion("train", 8)
for index, fsdp in enumerate((True, False, True)):
    config = SFTConfig(output_dir=f"{sys.argv[2]}/{index}", per_device_train_batch_size=4, max_steps=1, progress_bar=False,
                       logging_steps=0, save_final_model=False, fsdp=fsdp)
    trainer = SFTTrainer(sys.argv[1], config, train_dataset=rows)
    trainer.train()
    print("RESULT", "SHARDED" if isinstance(next(trainer.module.parameters()), DTensor) else "WHOLE", trainer.accelerator.distributed_type.value)
"""


def test_one_process_trains_sharded_then_unsharded_then_sharded(model_path, tmp_path):
    """Plain Python, no launcher: fsdp makes the process a world of one and shards; an unsharded
    trainer after it in the same process trains unsharded (accelerate's process-wide state and the
    variable it sets when given a plugin must not carry FSDP over), and the next sharded one shards."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run([sys.executable, "-c", MIXED_RUNS, model_path("llama"), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    results = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert results == [["SHARDED", "FSDP"], ["WHOLE", "MULTI_CPU"], ["SHARDED", "FSDP"]]
