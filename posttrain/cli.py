"""``posttrain <command> --config file.yaml key=value ...``

Commands: one per algorithm of :mod:`posttrain.registry` (``sft``, ``rm``, ``dpo``, ``kto``, ``grpo``,
``ppo``: train), ``inspect`` (show which tokens get loss), ``demo`` (the embedded default: SFT on
the arithmetic task, before/after accuracy), ``report`` (charts and a page for finished runs). Every training command takes a YAML config and ``key=value`` overrides
of any option; ``--help-config`` lists the options.

A user error (a bad option, file, row or model path) prints one message and exits with status
2; only a bug in posttrain prints a traceback (exit 1). ``--debug`` shows the traceback always.
"""

from __future__ import annotations

import argparse
import os
import sys

from posttrain.registry import ALGORITHMS


def _trainer_classes(command: str):
    """``(trainer class, config class)`` of an algorithm, imported only now so `posttrain --help` is fast."""
    return ALGORITHMS[command].classes()


def _add_debug_argument(parser: argparse.ArgumentParser, default=False) -> None:
    parser.add_argument("--debug", action="store_true", default=default, help="show the full traceback of any error")


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    _add_debug_argument(parser, argparse.SUPPRESS)
    parser.add_argument("--config", help="YAML file of options")
    parser.add_argument("--help-config", action="store_true", help="list every option with its default and meaning")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override any option")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posttrain", description="Post-train language models.")
    _add_debug_argument(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, entry in ALGORITHMS.items():
        _add_config_arguments(commands.add_parser(name, help=f"train: {entry.title}"))
    inspect = commands.add_parser("inspect", help="show rows with the tokens that get loss highlighted")
    _add_config_arguments(inspect)
    inspect.add_argument("--rows", type=int, default=3, help="how many rows to show")
    inspect.add_argument("--start", type=int, default=0, help="index of the first row to show")
    inspect.add_argument("--split", choices=("train", "eval"), default="train")
    inspect.add_argument("--algorithm", choices=tuple(ALGORITHMS), default="sft", help="whose data options to use")
    demo = commands.add_parser("demo", help="train a tiny model on the built-in arithmetic task; show before/after accuracy")
    demo.add_argument(
        "--algorithm", choices=(*(name for name, entry in ALGORITHMS.items() if entry.demo), "pipeline", "tools", "tools-ppo"), default="sft",
        help="sft: SFT from scratch; dpo, kto, grpo, ppo: SFT, then SFT on noisy demonstrations (greedy answers often one "
        "too high), then that algorithm; pipeline: SFT -> reward model -> DPO, GRPO, PPO and distillation, one table (~5 minutes); "
        "tools: SFT on tool-use demonstrations, then GRPO with a multiply tool (multi-turn episodes); tools-ppo: the same with PPO",
    )
    demo.add_argument("--output-dir", default=None, help="default: outputs/demo (sft) or outputs/demo-<algorithm>")
    demo.add_argument("--steps", type=int, default=None, help="SFT optimizer steps, also capping every later stage's (default: the demo's tuned values)")
    _add_debug_argument(demo, argparse.SUPPRESS)
    report = commands.add_parser("report", help="charts of metrics.jsonl and a report.md for one or more finished runs (overlaid)")
    report.add_argument("runs", nargs="+", metavar="OUTPUT_DIR", help="output directories of training runs")
    report.add_argument("--out", default=None, help="where to write report.md and plots/ (default: the run's directory; ./report for several)")
    _add_debug_argument(report, argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "report":  # reads files only: no need to import the model libraries
            return _run(args)
        from posttrain.train.console import quiet_third_party

        with quiet_third_party():
            return _run(args)
    except KeyboardInterrupt:
        print("posttrain: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # piped into a reader that stopped early (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:
        from posttrain.errors import UserError

        if args.debug or not isinstance(error, UserError):
            raise
        print(f"posttrain {args.command}: error: {error}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.command == "report":
        from posttrain.report import write_report

        report = write_report(args.runs, args.out)
        print(f"wrote {report.page}" + (f" and {len(report.charts)} chart(s) in {report.page.parent / 'plots'}" if report.charts else ""))
        if report.note:
            print(report.note)
        return 0
    if args.command == "demo":
        from posttrain.demo import run_demo, run_pipeline_demo, run_stage_demo

        if args.algorithm == "pipeline":
            result = run_pipeline_demo(output_dir=args.output_dir or "outputs/demo-pipeline", steps=args.steps)
        elif args.algorithm in ("tools", "tools-ppo"):
            from posttrain.demo_tools import run_tools_demo

            online = "ppo" if args.algorithm == "tools-ppo" else "grpo"
            result = run_tools_demo(output_dir=args.output_dir or f"outputs/demo-{args.algorithm}", steps=args.steps, algorithm=online)
        elif args.algorithm == "sft":
            result = run_demo(output_dir=args.output_dir or "outputs/demo", steps=args.steps)
        else:
            output_dir = args.output_dir or f"outputs/demo-{args.algorithm}"
            result = run_stage_demo(args.algorithm, output_dir=output_dir, sft_steps=args.steps)
        return 0 if result["learned"] else 1  # a run below the recipe's promise must not look like success
    command = args.algorithm if args.command == "inspect" else args.command
    trainer_cls, config_cls = _trainer_classes(command)
    if args.help_config:
        from posttrain.config import describe_config

        print(describe_config(config_cls))
        return 0
    from posttrain.config import load_config

    config = load_config(config_cls, args.config, args.overrides)
    if args.command == "inspect":
        from posttrain.inspection import inspect_config

        inspect_config(config, command, split=args.split, start=args.start, count=args.rows)
        return 0
    from posttrain.train.output_dir import check_output_dir

    check_output_dir(config)  # an occupied output_dir is refused before any model loads
    try:
        trainer_cls(config=config).train()
    except KeyboardInterrupt:  # Ctrl-C: the loop has said what it saved and how to resume
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
