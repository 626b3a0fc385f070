"""posttrain.registry is the one list of algorithms: the CLI's commands and choices, the package's
public names, inspect's data kinds, the report's columns and the demo's choices all come from it."""

from __future__ import annotations

import posttrain
from posttrain import registry
from posttrain.cli import build_parser
from posttrain.config import TrainConfig
from posttrain.train.loop import Trainer


def _choices(parser, command: str, option: str) -> tuple:
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return tuple(next(a for a in sub._actions if a.dest == option).choices)


def test_every_entry_names_a_trainer_and_its_config():
    for name, entry in registry.ALGORITHMS.items():
        trainer_cls, config_cls = entry.classes()
        assert issubclass(trainer_cls, Trainer) and issubclass(config_cls, TrainConfig), name
        assert trainer_cls.config_class is config_cls, name
        assert entry.data in registry.DATA_KINDS, name
        assert getattr(posttrain, entry.trainer) is trainer_cls and entry.config in posttrain.__all__


def test_the_cli_and_the_demo_offer_what_the_registry_lists():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(registry.ALGORITHMS) <= set(commands)
    assert set(commands) - set(registry.ALGORITHMS) == {"inspect", "demo", "report"}
    assert _choices(parser, "inspect", "algorithm") == tuple(registry.ALGORITHMS)
    # besides the algorithms' demos: the pipeline of several, and tools (GRPO or PPO with a tool, not an algorithm of its own)
    assert _choices(parser, "demo", "algorithm") == (*(n for n, e in registry.ALGORITHMS.items() if e.demo), "pipeline", "tools", "tools-ppo")


def test_report_columns_are_the_headline_metrics(tmp_path):
    import json

    from posttrain.report import write_report

    run = tmp_path / "grpo-run"
    run.mkdir()
    records = [{"step": s, "loss": 1.0 / s, "reward": 0.1 * s, "eval/reward": 0.05 * s} for s in (1, 2)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    page = write_report([run]).page.read_text()
    assert "grpo" in registry.ALGORITHMS and "reward" in registry.ALGORITHMS["grpo"].headline
    assert "| run | steps | final loss | final reward | final eval/reward | best eval/loss |" in page
    assert "| grpo-run | 2 | 0.5 | 0.2 | 0.1 |" in page
