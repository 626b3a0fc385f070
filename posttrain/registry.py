"""The algorithms posttrain offers, in one table that everything else reads: the CLI's commands
and ``--algorithm`` choices, ``posttrain``'s public names, what ``posttrain inspect`` shows, the
columns of ``report.md`` and the demo's choices (docs/design.md, "Add an algorithm").

Entries name their module and classes as strings and import them only when asked
(:meth:`Algorithm.classes`), so ``posttrain --help`` and ``posttrain report`` stay fast and this
module sits in the lowest layer.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

# What `posttrain inspect` shows for each kind of training data.
DATA_KINDS = {
    "lm": "text, messages or prompt-completion rows, with the tokens that get loss",
    "pairs": "preference pairs (chosen and rejected)",
    "unpaired": "unpaired completions labelled desirable or undesirable",
    "prompts": "prompts (+ columns for the reward functions)",
}


@dataclass(frozen=True)
class Algorithm:
    """One trainable algorithm.

    Attributes:
        name: the CLI command (``posttrain <name>``) and the ``--algorithm`` value.
        title: one line for ``--help``.
        module: the module defining ``trainer`` and ``config``.
        trainer, config: class names, exported from ``posttrain``.
        data: a key of :data:`DATA_KINDS`: what its rows are.
        headline: metrics ``report.md`` puts in its table of final numbers (their ``eval/``
            twins too, when logged).
        demo: whether ``posttrain demo --algorithm <name>`` exists (a recipe in
            ``posttrain/demo.py``).
    """

    name: str
    title: str
    module: str
    trainer: str
    config: str
    data: str
    headline: tuple[str, ...] = ()
    demo: bool = False

    def classes(self) -> tuple[type, type]:
        """``(trainer class, config class)``, imported now."""
        module = importlib.import_module(self.module)
        return getattr(module, self.trainer), getattr(module, self.config)


ALGORITHMS: dict[str, Algorithm] = {
    entry.name: entry
    for entry in (
        Algorithm("sft", "supervised fine-tuning", "posttrain.algorithms.sft", "SFTTrainer", "SFTConfig", "lm", ("token_accuracy",), demo=True),
        Algorithm("rm", "reward model (Bradley-Terry)", "posttrain.algorithms.reward", "RewardTrainer", "RewardConfig", "pairs", ("accuracy",)),
        Algorithm("dpo", "DPO and its loss family", "posttrain.algorithms.dpo", "DPOTrainer", "DPOConfig", "pairs", ("rewards/accuracies",), demo=True),
        Algorithm("kto", "KTO (unpaired preferences)", "posttrain.algorithms.kto", "KTOTrainer", "KTOConfig", "unpaired", demo=True),
        Algorithm("grpo", "GRPO (online RL, group-relative advantages)", "posttrain.algorithms.grpo", "GRPOTrainer", "GRPOConfig", "prompts", ("reward",), demo=True),
        Algorithm("ppo", "PPO (online RL, value head, KL penalty, GAE)", "posttrain.algorithms.ppo", "PPOTrainer", "PPOConfig", "prompts", ("reward", "objective/scores"), demo=True),
        Algorithm("distill", "distillation from a teacher (on-policy, off-policy or mixed: GKD)", "posttrain.algorithms.distill", "DistillationTrainer", "DistillationConfig", "prompts", ("agreement",), demo=True),
        Algorithm("rloo", "RLOO (online RL, REINFORCE with a leave-one-out baseline)", "posttrain.algorithms.rloo", "RLOOTrainer", "RLOOConfig", "prompts", ("reward",)),
    )
}


def algorithm(name: str) -> Algorithm:
    """The entry called ``name``; a ValueError listing the names otherwise."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}") from None


def exports() -> dict[str, str]:
    """``{public name: module}`` of every trainer and config class (``posttrain.__init__``)."""
    names = {}
    for entry in ALGORITHMS.values():
        names[entry.trainer] = names[entry.config] = entry.module
    return names


def headline_metrics() -> tuple[str, ...]:
    """Every algorithm's headline metrics, each once, in table order."""
    seen: dict[str, None] = {}
    for entry in ALGORITHMS.values():
        seen.update(dict.fromkeys(entry.headline))
    return tuple(seen)
