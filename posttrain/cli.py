"""``posttrain <command> --config file.yaml key=value ...``

Commands: ``sft``, ``rm``, ``dpo``, ``kto``, ``grpo``, ``ppo`` (train), ``inspect`` (show which tokens get loss), ``demo`` (the embedded
default: SFT on the arithmetic task, before/after accuracy). Every training command takes a
YAML config and ``key=value`` overrides of any option; ``--help-config`` lists the options.
"""

from __future__ import annotations

import argparse
import sys

# command -> (module, trainer class, config class); imported lazily so `posttrain --help` is fast.
TRAINERS = {
    "sft": ("posttrain.algorithms.sft", "SFTTrainer", "SFTConfig"),
    "rm": ("posttrain.algorithms.reward", "RewardTrainer", "RewardConfig"),
    "dpo": ("posttrain.algorithms.dpo", "DPOTrainer", "DPOConfig"),
    "kto": ("posttrain.algorithms.kto", "KTOTrainer", "KTOConfig"),
    "grpo": ("posttrain.algorithms.grpo", "GRPOTrainer", "GRPOConfig"),
    "ppo": ("posttrain.algorithms.ppo", "PPOTrainer", "PPOConfig"),
}


def _trainer_classes(command: str):
    import importlib

    module_name, trainer_name, config_name = TRAINERS[command]
    module = importlib.import_module(module_name)
    return getattr(module, trainer_name), getattr(module, config_name)


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of options")
    parser.add_argument("--help-config", action="store_true", help="list every option with its default and meaning")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override any option")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posttrain", description="Post-train language models.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in TRAINERS:
        _add_config_arguments(commands.add_parser(command, help=f"train with {command.upper()}"))
    inspect = commands.add_parser("inspect", help="show rows with the tokens that get loss highlighted")
    _add_config_arguments(inspect)
    inspect.add_argument("--rows", type=int, default=3, help="how many rows to show")
    inspect.add_argument("--start", type=int, default=0, help="index of the first row to show")
    inspect.add_argument("--split", choices=("train", "eval"), default="train")
    inspect.add_argument("--algorithm", choices=tuple(TRAINERS), default="sft", help="whose data options to use")
    demo = commands.add_parser("demo", help="train a tiny model on the built-in arithmetic task; show before/after accuracy")
    demo.add_argument(
        "--algorithm", choices=("sft", "dpo", "kto"), default="sft",
        help="sft: SFT from scratch; dpo/kto: SFT on noisy demonstrations, then preference learning",
    )
    demo.add_argument("--output-dir", default=None, help="default: outputs/demo (sft) or outputs/demo-<algorithm>")
    demo.add_argument("--steps", type=int, default=None, help="SFT optimizer steps (default: the demo's tuned value)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from posttrain.demo import run_demo, run_preference_demo

        if args.algorithm == "sft":
            run_demo(output_dir=args.output_dir or "outputs/demo", steps=args.steps)
        else:
            output_dir = args.output_dir or f"outputs/demo-{args.algorithm}"
            run_preference_demo(args.algorithm, output_dir=output_dir, sft_steps=args.steps)
        return 0
    command = args.algorithm if args.command == "inspect" else args.command
    trainer_cls, config_cls = _trainer_classes(command)
    if args.help_config:
        from posttrain.config import describe_config

        print(describe_config(config_cls))
        return 0
    from posttrain.config import load_config

    config = load_config(config_cls, args.config, args.overrides)
    if args.command == "inspect":
        from posttrain.data.inspect import inspect_config

        inspect_config(config, split=args.split, start=args.start, count=args.rows)
        return 0
    trainer_cls(config=config).train()
    return 0


if __name__ == "__main__":
    sys.exit(main())
