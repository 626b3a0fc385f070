"""The Hugging Face rollout engine: padding does not change greedy completions, finish reasons
are exact, sampling follows torch's global RNG and the options, and the model comes back as it
went in (modes, generation config), also under peft and DDP."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

from posttrain.rollout import Completion, HFGenerationEngine, SamplingOptions, encode_prompts

PROMPTS = ["What is 3+4?", "Hello!", "Compute 120+31 and answer with the number only.", "What is 47+38? The answer is"]


def _load(model_path, name: str = "llama"):
    """A fixture model with its matrices redrawn with a large spread: as initialised, the tiny
    models greedily repeat the prompt's last token forever, which would hide padding and
    stopping bugs; redrawn, they write varied (if meaningless) text."""
    path = model_path(name)
    model = AutoModelForCausalLM.from_pretrained(path)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, 0.5 if "emb" in name or name.startswith("transformer.w") else 0.3, generator=generator)
    return model, AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def llama(model_path):
    return _load(model_path)


def _greedy(max_length: int = 10, **kwargs) -> SamplingOptions:
    return SamplingOptions(max_completion_length=max_length, do_sample=False, **kwargs)


def _ids(completions: list[Completion]) -> list[list[int]]:
    return [c.token_ids for c in completions]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_left_padding_gives_the_completions_of_one_prompt_at_a_time(arch, model_path):
    model, tokenizer = _load(model_path, arch)
    prompt_ids = encode_prompts(tokenizer, PROMPTS)
    assert len({len(ids) for ids in prompt_ids}) == len(PROMPTS)  # every row but the longest is padded
    batched = HFGenerationEngine(model, tokenizer, batch_size=64).generate(prompt_ids, _greedy(12))
    alone = HFGenerationEngine(model, tokenizer, batch_size=1).generate(prompt_ids, _greedy(12))
    assert _ids(batched) == _ids(alone)
    assert all(len(set(c.token_ids)) > 6 for c in batched)  # varied text, not one repeated token


class ScriptedTokens(LogitsProcessor):
    """Forces row ``r`` to produce ``scripts[r][s]`` at completion step ``s``: finish reasons
    then follow from the script alone."""

    def __init__(self, scripts: list[list[int]], prompt_width: int):
        self.scripts, self.prompt_width = scripts, prompt_width

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_width
        forced = torch.full_like(scores, float("-inf"))
        for row, script in enumerate(self.scripts):
            forced[row, script[min(step, len(script) - 1)]] = 0.0
        return forced


def _scripted(engine, tokenizer, scripts, options_kwargs, max_length=12):
    prompt_ids = encode_prompts(tokenizer, ["What is 3+4?"] * len(scripts))
    processor = ScriptedTokens(scripts, max(len(ids) for ids in prompt_ids))
    options = _greedy(max_length, generation_kwargs={"logits_processor": LogitsProcessorList([processor])}, **options_kwargs)
    return engine.generate(prompt_ids, options)


def test_finish_reasons_eos_stop_string_stop_token_and_length(llama):
    model, tokenizer = llama
    enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos, im_end = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")
    before, stop, after = enc(" The answer"), enc("</answer>"), enc(" and more words here")
    filler = enc(" The quick brown fox jumps over the lazy dog. Once upon a time")
    assert len(filler) > 12 and "</answer>" not in tokenizer.decode(before)
    scripts = [
        enc(" 12") + [eos] + filler,  # EOS
        before + stop + after + [eos],  # a stop string, EOS only later
        enc(" 7") + [im_end] + filler,  # an extra stop token id
        filler,  # neither: runs to max_completion_length
    ]
    engine = HFGenerationEngine(model, tokenizer)
    out = _scripted(engine, tokenizer, scripts, {"stop_strings": ("</answer>",), "stop_token_ids": (im_end,)})
    assert [c.finish_reason for c in out] == ["eos", "stop", "eos", "length"]
    assert out[0].token_ids == enc(" 12") + [eos] and out[0].text == " 12"  # EOS kept in ids, not in text
    assert out[1].token_ids == before + stop and out[1].text == " The answer</answer>"
    assert out[2].token_ids == enc(" 7") + [im_end] and out[2].text == " 7"
    assert out[3].token_ids == filler[:12] and out[3].truncated


def test_a_token_that_is_both_a_stop_id_and_completes_a_stop_string_is_eos(llama):
    model, tokenizer = llama
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    one = tokenizer(" 1", add_special_tokens=False)["input_ids"]
    out = _scripted(HFGenerationEngine(model, tokenizer), tokenizer, [one + [im_end] * 12],
                    {"stop_strings": ("<|im_end|>",), "stop_token_ids": (im_end,)})
    assert out[0].finish_reason == "eos" and out[0].token_ids == one + [im_end]
    stop_only = _scripted(HFGenerationEngine(model, tokenizer), tokenizer, [one + [im_end] * 12], {"stop_strings": ("<|im_end|>",)})
    assert stop_only[0].finish_reason == "stop" and stop_only[0].token_ids == one + [im_end]


def test_stop_token_ids_and_stop_strings_cut_the_unconstrained_greedy_completion(llama):
    """Greedy decoding is prefix-consistent, so stopping early must return a prefix of the
    unconstrained completion, cut exactly at the first stop token / the token completing the
    first occurrence of the stop string."""
    model, tokenizer = llama
    engine = HFGenerationEngine(model, tokenizer)
    prompt_ids = encode_prompts(tokenizer, PROMPTS)
    free = engine.generate(prompt_ids, _greedy(16))
    checked_strings = 0
    for completion, ids in zip(free, prompt_ids):
        tokens = completion.token_ids
        stop_id = tokens[5]
        cut = engine.generate([ids], _greedy(16, stop_token_ids=(stop_id,)))[0]
        assert cut.finish_reason == "eos" and cut.token_ids == tokens[: tokens.index(stop_id) + 1]
        prompt_text = tokenizer.decode(ids)
        windows = (tokenizer.decode(tokens[k : k + 2]).strip() for k in range(3, len(tokens) - 2))
        text = next((w for w in windows if len(w) >= 2 and w.isascii() and w.isprintable()), None)
        if text is None or any(prompt_text.endswith(text[:i]) for i in range(1, len(text) + 1)):
            continue  # need plain text, and a stop string that could start inside the prompt stops earlier
        end = next(k for k in range(len(tokens)) if text in tokenizer.decode(tokens[: k + 1]))
        cut = engine.generate([ids], _greedy(16, stop_strings=(text,)))[0]
        assert cut.finish_reason == "stop" and cut.token_ids == tokens[: end + 1], text
        checked_strings += 1
    assert checked_strings >= 2


def test_sampling_follows_the_global_seed(llama):
    model, tokenizer = llama
    engine = HFGenerationEngine(model, tokenizer)
    prompt_ids = encode_prompts(tokenizer, PROMPTS[:2])
    options = SamplingOptions(max_completion_length=10, temperature=1.3, top_p=0.95)

    def sample(seed):
        torch.manual_seed(seed)
        return _ids(engine.generate(prompt_ids, options, num_generations=4))

    first = sample(0)
    assert sample(0) == first
    assert sample(1) != first
    assert len({tuple(ids) for ids in first}) > 1  # generations of one prompt differ


def test_top_k_one_is_greedy_and_the_models_own_top_k_does_not_leak(llama):
    model, tokenizer = llama
    model = copy.deepcopy(model)
    model.generation_config.top_k = 1  # a checkpoint default that must not reach a rollout
    before = model.generation_config.to_dict()
    engine = HFGenerationEngine(model, tokenizer)
    prompt_ids = encode_prompts(tokenizer, PROMPTS)
    greedy = _ids(engine.generate(prompt_ids, _greedy(10)))
    torch.manual_seed(0)
    assert _ids(engine.generate(prompt_ids, SamplingOptions(max_completion_length=10, top_k=1))) == greedy
    torch.manual_seed(0)
    assert _ids(engine.generate(prompt_ids, SamplingOptions(max_completion_length=10, top_k=0))) != greedy
    torch.manual_seed(0)
    assert _ids(engine.generate(prompt_ids, SamplingOptions(max_completion_length=10, min_p=1.0))) == greedy
    assert model.generation_config.to_dict() == before


def test_num_generations_are_contiguous_per_prompt(llama):
    model, tokenizer = llama
    prompt_ids = encode_prompts(tokenizer, PROMPTS[:3])
    single = _ids(HFGenerationEngine(model, tokenizer).generate(prompt_ids, _greedy(8)))
    assert len({tuple(ids) for ids in single}) == 3  # the prompts are told apart by their completions
    # batch_size 5 splits the 12 rows across batches in the middle of groups
    grouped = _ids(HFGenerationEngine(model, tokenizer, batch_size=5).generate(prompt_ids, _greedy(8), num_generations=4))
    assert grouped == [ids for ids in single for _ in range(4)]


def test_eval_mode_and_no_grad_during_generation_and_modes_restored_after(llama):
    model, tokenizer = llama
    model = copy.deepcopy(model).train()
    frozen = model.model.layers[0].eval()  # a submodule deliberately in eval mode
    seen = []
    hook = model.model.register_forward_hook(
        lambda module, args, output: seen.append((module.training, torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
    )
    engine = HFGenerationEngine(model, tokenizer)
    engine.generate(encode_prompts(tokenizer, PROMPTS[:2]), SamplingOptions(max_completion_length=4))
    hook.remove()
    assert seen and set(seen) == {(False, False, False)}
    assert model.training and model.model.training and not frozen.training
    assert all(m.training for name, m in model.named_modules() if not name.startswith("model.layers.0"))


def test_stats_count_the_generated_tokens(llama):
    model, tokenizer = llama
    engine = HFGenerationEngine(model, tokenizer)
    completions = engine.generate(encode_prompts(tokenizer, PROMPTS), _greedy(6), num_generations=2)
    stats = engine.last_stats
    assert stats.sequences == 8 and stats.tokens == sum(len(c.token_ids) for c in completions) == 48
    assert stats.seconds > 0 and stats.tokens_per_second == pytest.approx(48 / stats.seconds)
    assert stats.metrics()["generation/tokens"] == 48.0


def test_lora_model_generates_through_its_adapters(llama):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = llama
    prompt_ids = encode_prompts(tokenizer, PROMPTS)
    base = _ids(HFGenerationEngine(model, tokenizer).generate(prompt_ids, _greedy(10)))
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])).train()
    engine = HFGenerationEngine(lora, tokenizer)
    assert _ids(engine.generate(prompt_ids, _greedy(10))) == base  # lora_B starts at zero
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 2.0, generator=torch.Generator().manual_seed(0))
    assert _ids(engine.generate(prompt_ids, _greedy(10))) != base
    assert lora.training


def test_ddp_wrapped_model_is_unwrapped(llama, tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    model, tokenizer = llama
    prompt_ids = encode_prompts(tokenizer, PROMPTS)
    expected = _ids(HFGenerationEngine(model, tokenizer).generate(prompt_ids, _greedy(8)))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(copy.deepcopy(model))
        assert not hasattr(wrapped, "generate")
        assert _ids(HFGenerationEngine(wrapped, tokenizer).generate(prompt_ids, _greedy(8))) == expected
        assert wrapped.training
    finally:
        dist.destroy_process_group()


def test_bad_prompt_ids_are_refused(llama):
    model, tokenizer = llama
    engine = HFGenerationEngine(model, tokenizer)
    with pytest.raises(ValueError, match="prompt 1: expected a non-empty list of token ids"):
        engine.generate([[1, 2], []], _greedy())
    with pytest.raises(TypeError, match="encode_prompts"):
        engine.generate("What is 3+4?", _greedy())
    with pytest.raises(ValueError, match="num_generations must be a positive integer"):
        engine.generate([[1, 2]], _greedy(), num_generations=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        HFGenerationEngine(model, tokenizer, batch_size=0)
