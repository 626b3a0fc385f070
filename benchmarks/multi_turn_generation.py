"""Multi-turn generation against single-turn generation of the same total length (issue 18).

    python benchmarks/multi_turn_generation.py             # 64 episodes, up to 3 tool calls each
    python benchmarks/multi_turn_generation.py --episodes 16 --repeats 1 --force   # a quick look
    python benchmarks/multi_turn_generation.py --tiny --episodes 4 --repeats 1 --force   # the code path (a test)

Both variants run the rollout engine (``HFGenerationEngine``, transformers ``generate`` with the
KV cache, one batch of 64) on the benchmark Llama (~6M parameters, the ``tools`` chat template):

- **multi-turn**: :func:`posttrain.rollout.agents.generate_episodes`, 64 episodes of which a
  quarter each make 0, 1, 2 and 3 tool calls (``multiply``) before answering. Each round is one
  batched ``generate`` over the unfinished episodes; tool results and template text are inserted
  (prefilled, not decoded) between rounds.
- **single-turn**: one ``generate`` call whose 64 completions are, token for token, the 64
  episodes' whole sequences after the prompt (model turns and inserted tokens alike, the last
  token EOS instead of ``<|im_end|>``): the same total length, every token decoded.

A random model writes no tool calls, so a logits processor forces every row to write its scripted
tokens (the same processor in both variants): the forward passes, batching, KV cache and stopping
are the real ones, only the sampled token is fixed. Reported: seconds per batch (median over
``--repeats``, variants alternated), tokens after the prompt, and the ratio multi / single. The
issue asks for a ratio of at most ~1.5. /proc/loadavg is recorded; the script refuses to run under
foreign load unless ``--force``.
"""

from __future__ import annotations

import re
import statistics
import sys
import time

import torch

from common import busy_message, load_average, parse_benchmark_args, save_benchmark_model, save_results

QUESTION = re.compile(r"Question (\d+):")


class ForcedTokens:
    """A ``generate`` logits processor that makes each row write ``script(context_ids)`` (then EOS):
    the scripted sequence of the episode whose context the row continues. A new ``generate`` call
    is recognised by its input being no longer one token past the last one seen."""

    def __init__(self, tokenizer, script, eos_id: int):
        self.tokenizer, self.script, self.eos_id = tokenizer, script, eos_id
        self.width, self.last, self.rows = 0, -1, []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        length = input_ids.shape[1]
        if length != self.last + 1:
            pad = self.tokenizer.pad_token_id
            self.width = length
            self.rows = [self.script([t for t in row if t != pad]) for row in input_ids.tolist()]
        self.last = length
        step = length - self.width
        forced = torch.tensor([row[step] if step < len(row) else self.eos_id for row in self.rows], device=scores.device)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(forced)), forced] = 0.0
        return out


def episode_turns(tokenizer, index: int) -> list[str]:
    """The scripted assistant turns of episode ``index``: ``index % 4`` tool calls, then the answer."""
    a, b = 12 + index, 37 + 2 * index
    calls = [
        f'Let me use the tool for step {k + 1}.<tool_call>{{"name": "multiply", "arguments": {{"a": {a + k}, "b": {b}}}}}</tool_call><|im_end|>'
        for k in range(index % 4)
    ]
    return [*calls, f"The answer is {a * b}.<|im_end|>"]


def build_prompts(tokenizer, count: int):
    from posttrain.rollout.agents import EpisodePrompt, encode_tool_prompt, tool_schema
    from posttrain.tasks.tool_use import multiply

    schemas = [tool_schema(multiply)]
    prompts = []
    for i in range(count):
        messages = [{"role": "user", "content": f"Question {i}: what is {12 + i} times {37 + 2 * i}? Use the tool."}]
        prompts.append(EpisodePrompt(messages, encode_tool_prompt(tokenizer, messages, schemas)))
    return prompts


def run_multi_turn(engine, tokenizer, prompts, processor, max_length: int):
    from posttrain.rollout import SamplingOptions
    from posttrain.rollout.agents import ToolOptions, generate_episodes
    from posttrain.tasks.tool_use import multiply

    options = SamplingOptions(max_completion_length=max_length, generation_kwargs={"logits_processor": [processor]})
    started = time.perf_counter()
    episodes = generate_episodes(engine, tokenizer, prompts, options, ToolOptions(tools=(multiply,), max_tool_calling_iterations=3))
    return time.perf_counter() - started, episodes


def run_single_turn(engine, prompts, processor, max_length: int):
    from posttrain.rollout import SamplingOptions

    options = SamplingOptions(max_completion_length=max_length, generation_kwargs={"logits_processor": [processor]})
    started = time.perf_counter()
    completions = engine.generate([p.prompt_ids for p in prompts], options)
    return time.perf_counter() - started, completions


def main(argv=None) -> None:
    from posttrain.rollout import HFGenerationEngine
    from posttrain.testing import TOOLS_TEMPLATE

    def extra(parser):
        parser.add_argument("--episodes", type=int, default=64, help="episodes (and single-turn rollouts) per batch")
        parser.add_argument("--repeats", type=int, default=3, help="timed batches per variant")
        parser.add_argument("--tiny", action="store_true", help="the ~0.1M-parameter test model instead (checks the code path, not speed)")

    args = parse_benchmark_args(argv, "multi-turn vs single-turn generation", steps=3, warmup=1, add_arguments=extra)
    if (message := busy_message()) and not args.force:
        sys.exit(message)
    load = load_average()
    torch.manual_seed(0)
    if args.tiny:
        from posttrain.testing import build_causal_lm, build_tokenizer

        tokenizer = build_tokenizer("tools")
        model = build_causal_lm("llama", tokenizer, size="tiny")
    else:
        model, tokenizer, _ = save_benchmark_model()
    tokenizer.chat_template = TOOLS_TEMPLATE
    engine = HFGenerationEngine(model, tokenizer, batch_size=args.episodes)
    prompts = build_prompts(tokenizer, args.episodes)
    encoded = [[tokenizer(t, add_special_tokens=False)["input_ids"] for t in episode_turns(tokenizer, i)] for i in range(args.episodes)]

    def scripted_turn(context: list[int]) -> list[int]:
        episode = int(QUESTION.search(tokenizer.decode(context)).group(1))
        done = tokenizer.decode(context).count("<|im_start|>assistant\n") - 1
        return encoded[episode][done]

    eos = tokenizer.eos_token_id
    max_length = 400
    _, episodes = run_multi_turn(engine, tokenizer, prompts, ForcedTokens(tokenizer, scripted_turn, eos), max_length)  # warm-up
    sequences = [e.token_ids[:-1] + [eos] for e in episodes]  # the single-turn rollouts: the same tokens, EOS last

    def scripted_sequence(context: list[int]) -> list[int]:
        return sequences[int(QUESTION.search(tokenizer.decode(context)).group(1))]

    times = {"multi_turn": [], "single_turn": []}
    run_single_turn(engine, prompts, ForcedTokens(tokenizer, scripted_sequence, eos), max_length)  # warm-up
    for _ in range(args.repeats):
        seconds, again = run_multi_turn(engine, tokenizer, prompts, ForcedTokens(tokenizer, scripted_turn, eos), max_length)
        assert [e.token_ids for e in again] == [e.token_ids for e in episodes]
        times["multi_turn"].append(seconds)
        seconds, completions = run_single_turn(engine, prompts, ForcedTokens(tokenizer, scripted_sequence, eos), max_length)
        assert [c.token_ids for c in completions] == sequences, "the single-turn rollouts must be the episodes' sequences"
        times["single_turn"].append(seconds)
    tokens = sum(len(s) for s in sequences)
    generated = sum(sum(e.generated) for e in episodes)
    result = {
        "episodes": args.episodes,
        "tool_calls": sum(e.tool_calls for e in episodes),
        "rounds": max(e.turns for e in episodes),
        "tokens_after_prompt": tokens,
        "tokens_sampled_multi_turn": generated,
        **{f"{name}_seconds": statistics.median(values) for name, values in times.items()},
    }
    result["ratio_multi_to_single"] = result["multi_turn_seconds"] / result["single_turn_seconds"]
    print(
        f"{args.episodes} episodes ({result['tool_calls']} tool calls, up to {result['rounds']} turns), {tokens} tokens after the "
        f"prompts ({generated} sampled, the rest inserted)\n"
        f"multi-turn  {result['multi_turn_seconds']:.2f} s   single-turn (same tokens, all decoded) {result['single_turn_seconds']:.2f} s   "
        f"ratio {result['ratio_multi_to_single']:.2f}\nload average {load} -> {load_average()}"
    )
    save_results(args.json, 0.0, load, [result])


if __name__ == "__main__":
    main()
