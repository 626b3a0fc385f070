"""Tools and environments from the command line: ``module:function`` / ``file.py:Class`` paths in
the YAML, and ``posttrain inspect`` showing an episode's trained and untrained tokens."""

from __future__ import annotations

import json
import textwrap

import yaml

from posttrain.cli import main
from posttrain.data.inspect import render_plain, show_episode
from posttrain.tasks.tool_use import tool_prompts, tool_task
from posttrain.testing import TOOLS_TEMPLATE, build_tokenizer

TOOL_FILE = textwrap.dedent(
    '''
    def multiply(a: int, b: int) -> int:
        """Multiply two integers.

        Args:
            a: a number
            b: a number
        """
        return a * b


    class Calculator:
        def __init__(self):
            self.calls = 0

        def multiply(self, a: int, b: int) -> int:
            """Multiply two integers.

            Args:
                a: a number
                b: a number
            """
            self.calls += 1
            return a * b


    def used_the_calculator(completions, environments):
        return [float(e.calls > 0) for e in environments]
    '''
)


def _setup(tmp_path, model_path, **values) -> str:
    (tmp_path / "agent_tools.py").write_text(TOOL_FILE)
    (tmp_path / "tools.jinja").write_text(TOOLS_TEMPLATE)
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in tool_prompts(tool_task(), "train", 8)))
    config = {
        "model": model_path("llama"), "train_data": str(data), "chat_template": str(tmp_path / "tools.jinja"), "max_steps": 1,
        "num_generations": 4, "per_device_train_batch_size": 8, "max_completion_length": 24, "logging_steps": 1,
        "progress_bar": False, "save_final_model": False, **values,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_tools_and_environments_from_yaml_paths(model_path, tmp_path):
    tools = tmp_path / "agent_tools.py"
    config = _setup(tmp_path, model_path, tools=[f"{tools}:multiply"], reward_funcs=["exact_answer"], output_dir=str(tmp_path / "tools"))
    assert main(["grpo", "--config", config]) == 0
    [record] = [json.loads(line) for line in (tmp_path / "tools" / "metrics.jsonl").read_text().splitlines()]
    assert {"tools/call_frequency", "tools/turns", "tools/hit_limit_ratio", "tools/errors/malformed"} <= set(record)

    config = _setup(
        tmp_path, model_path, environment_factory=f"{tools}:Calculator", reward_funcs=[f"{tools}:used_the_calculator"],
        output_dir=str(tmp_path / "env"),
    )
    assert main(["grpo", "--config", config]) == 0
    assert "rewards/used_the_calculator/mean" in json.loads((tmp_path / "env" / "metrics.jsonl").read_text().splitlines()[0])


def test_a_bad_tool_path_is_one_line_naming_the_option(model_path, tmp_path, capsys):
    config = _setup(tmp_path, model_path, tools=["no_such_module_here:multiply"], reward_funcs=["exact_answer"], output_dir=str(tmp_path / "bad"))
    assert main(["grpo", "--config", config]) == 2
    assert "tools[0]: cannot import module 'no_such_module_here'" in capsys.readouterr().err


def test_inspect_with_tools_renders_the_tools_and_plays_an_episode(model_path, tmp_path, capsys):
    tools = tmp_path / "agent_tools.py"
    config = _setup(tmp_path, model_path, tools=[f"{tools}:multiply"], output_dir=str(tmp_path / "inspect"))
    assert main(["inspect", "--algorithm", "grpo", "--config", config, "--rows", "1"]) == 0
    shown = capsys.readouterr().out
    assert "- multiply(a, b): Multiply two integers." in shown and "episode of prompt 0" in shown


def test_an_episode_shows_sampled_tokens_trained_and_inserted_ones_not():
    tokenizer = build_tokenizer("tools")
    call = '<tool_call>{"name": "multiply", "arguments": {"a": 47, "b": 38}}</tool_call><|im_end|>'
    inserted = "\n<|im_start|>tool\n1786<|im_end|>\n<|im_start|>assistant\n"
    pieces = [(call, True), (inserted, False), ("1786<|im_end|>", True)]
    ids, generated = [], []
    for text, sampled in pieces:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids, generated = ids + piece, generated + [sampled] * len(piece)
    prompt = tokenizer("<|im_start|>user\nWhat is 47*38?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    from rich.console import Console

    example = show_episode(Console(quiet=True), tokenizer, "episode", prompt, ids, generated)
    plain = render_plain(tokenizer, example)
    assert plain.endswith(
        'assistant\\n\n[[<tool_call>{"name": "multiply", "arguments": {"a": 47, "b": 38}}</tool_call><|im_end|>]]'
        "\\n\n<|im_start|>tool\\n\n1786<|im_end|>\\n\n<|im_start|>assistant\\n\n[[1786<|im_end|>]]"
    )
