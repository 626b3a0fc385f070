"""The generation paths of the Hugging Face engine (posttrain/rollout/decoding.py): where the maths
is that of the plain path (dynamic cache, whole prompt prefilled per row), greedy and sampled
completions are the same token for token; what does not apply is refused by name or noted once
under ``auto``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_generation_engine import PROMPTS, _greedy, _ids, _load

from posttrain.models.prompt_groups import plain_cache_problem
from posttrain.rollout import HFGenerationEngine, SamplingOptions, encode_prompts
from posttrain.rollout.decoding import (
    COMPILED_CACHE_MULTIPLE,
    cache_length,
    default_path,
    plan_generation,
    prompt_runs,
)

SAMPLED = SamplingOptions(max_completion_length=12, temperature=1.3, top_p=0.95)


@pytest.fixture(scope="module")
def llama(model_path):
    return _load(model_path)


def _prompts(tokenizer) -> list[list[int]]:
    """Prompts of different widths (left padding), one of a single token (its shared prefill is
    padding only)."""
    prompt_ids = encode_prompts(tokenizer, PROMPTS)
    return [*prompt_ids, prompt_ids[0][:1]]


def _run(model, tokenizer, options, path="dynamic", share=False, batch_size=64, seed=0, generations=3):
    engine = HFGenerationEngine(model, tokenizer, batch_size=batch_size, path=path, share_prompt_prefill=share)
    torch.manual_seed(seed)
    return _ids(engine.generate(_prompts(tokenizer), options, num_generations=generations)), engine


@pytest.mark.parametrize(("path", "share"), [("dynamic", True), ("static", False), ("static", True)])
@pytest.mark.parametrize("batch_size", [64, 5])  # 5: batches cut groups of 3 in the middle
def test_greedy_and_sampled_completions_are_those_of_the_plain_path(llama, path, share, batch_size):
    model, tokenizer = llama
    for options in (_greedy(12), SAMPLED):
        plain, _ = _run(model, tokenizer, options, batch_size=batch_size)  # sampling draws per batch
        assert len({tuple(ids) for ids in plain}) > 3  # varied completions, not one repeated row
        assert _run(model, tokenizer, options, path, share, batch_size)[0] == plain, (path, share, options.do_sample)


@pytest.mark.slow  # compiles the decoding step: tens of seconds on a CPU
def test_the_compiled_static_path_gives_the_plain_completions(llama):
    model, tokenizer = llama
    for options in (_greedy(12), SAMPLED):
        plain, _ = _run(model, tokenizer, options)
        compiled, engine = _run(model, tokenizer, options, "static_compiled", True)
        assert engine.plan.path == "static_compiled" and compiled == plain


def test_continuous_batching_greedy_is_the_plain_path_and_sampling_follows_the_seed(llama):
    model, tokenizer = llama
    plain, _ = _run(model, tokenizer, _greedy(8), generations=2)
    greedy, engine = _run(model, tokenizer, _greedy(8), "continuous_batching", generations=2)
    assert engine.plan.path == "continuous_batching" and greedy == plain
    # sampled: its own per-request sampling draws other random numbers than generate(), so
    # the same seed gives the same completions, another seed others
    options = SamplingOptions(max_completion_length=8, temperature=1.3)
    first, _ = _run(model, tokenizer, options, "continuous_batching", seed=0)
    assert _run(model, tokenizer, options, "continuous_batching", seed=0)[0] == first
    assert _run(model, tokenizer, options, "continuous_batching", seed=1)[0] != first
    assert all(len({tuple(ids) for ids in first[i : i + 3]}) > 1 for i in range(0, len(first), 3))  # a group's samples differ


def test_a_path_that_does_not_apply_is_refused_by_name_and_noted_once_under_auto(llama):
    model, tokenizer = llama
    with pytest.raises(ValueError, match="generation_path='continuous_batching' cannot run: it does not support stop_strings"):
        plan_generation("continuous_batching", model, "cpu", _greedy(4, stop_strings=("x",)), True)
    with pytest.raises(ValueError, match="path must be one of"):
        HFGenerationEngine(model, tokenizer, path="vllm")
    no_static = SimpleNamespace(config=model.config, _can_compile_fullgraph=False)
    with pytest.raises(ValueError, match="generation_path='static' cannot run: .*static cache"):
        plan_generation("static", no_static, "cpu", _greedy(4), True)
    plan = plan_generation("auto", no_static, "cpu", _greedy(4), True)
    assert plan.path == "dynamic" and plan.share_prompt_prefill
    assert plan.notes == ("generation path static does not apply (SimpleNamespace does not declare support for a static cache "
                          "(_can_compile_fullgraph)); using dynamic",)
    notes = []
    engine = HFGenerationEngine(model, tokenizer, notify=notes.append)
    model._can_compile_fullgraph = False  # an instance attribute hides the class's
    try:
        for _ in range(2):
            engine.generate(_prompts(tokenizer), _greedy(4))
    finally:
        del model._can_compile_fullgraph
    assert engine.plan.path == "dynamic" and len(notes) == 1 and "using dynamic" in notes[0]


def test_auto_is_the_static_cache_on_every_device(llama):
    model, _ = llama
    # static everywhere until a GPU measurement says otherwise (static_compiled compiles per shape)
    assert default_path(torch.device("cpu")) == "static" and default_path(torch.device("cuda", 0)) == "static"
    plan = plan_generation("auto", model, "cpu", _greedy(4), True)
    assert (plan.path, plan.share_prompt_prefill, plan.notes) == ("static", True, ())
    assert plan_generation("continuous_batching", model, "cpu", _greedy(4), True).share_prompt_prefill is False


def test_the_prefill_is_not_shared_for_a_cache_with_sliding_window_layers():
    from transformers import MistralConfig

    config = MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           sliding_window=8, vocab_size=16)
    model = SimpleNamespace(config=config, _can_compile_fullgraph=True)
    assert plain_cache_problem(model) == "its cache has DynamicSlidingWindowLayer layers"
    plan = plan_generation("dynamic", model, "cpu", _greedy(4), True)
    assert not plan.share_prompt_prefill
    assert plan.notes == ("the prompt prefill is not shared by a group's completions (its cache has DynamicSlidingWindowLayer layers)",)


def test_prompt_runs_and_cache_length():
    assert prompt_runs([[1, 2], [1, 2], [1, 2], [3], [1, 2]]) == [3, 1, 1]
    assert prompt_runs([[5]]) == [1] and prompt_runs([]) == []
    assert cache_length(33, 128, compiled=False) == 161
    assert cache_length(33, 128, compiled=True) == 192 == 3 * COMPILED_CACHE_MULTIPLE
    assert cache_length(64, 128, compiled=True) == 192
