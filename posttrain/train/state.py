"""Where a run is: saved with every checkpoint (and at the end, in ``output_dir``) so a resumed
run continues exactly and callbacks can read it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    """Progress counters and the logged metrics. ``batches_in_epoch`` counts this process's
    micro-batches already consumed in ``epoch``, so resuming skips exactly those. ``global_batch``
    (items a micro-batch loads over all processes) makes that count mean the same rows on another
    number of processes; 0 in checkpoints written before it was recorded.

    It also answers to the names of transformers' ``TrainerState`` that TRL code and
    ``TrainerCallback`` objects read: ``global_step``, ``max_steps``, ``log_history`` (one dict
    per logging step or evaluation, with its ``step``), ``num_input_tokens_seen``, and, set by
    the trainer, ``is_world_process_zero``, ``logging_steps`` etc. One difference: ``epoch`` is
    the number of the epoch in progress (an integer), not a fraction; the fraction is logged as
    ``epoch`` in ``log_history``."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    tokens_seen: int = 0
    total_steps: int = 0
    global_batch: int = 0
    log_history: list = field(default_factory=list)

    # transformers' TrainerState attributes that have no counterpart here (class attributes,
    # not saved); callbacks written for transformers read them
    best_metric = None
    best_global_step = None
    best_model_checkpoint = None
    is_hyper_param_search = False
    trial_name = None
    total_flos = 0.0
    is_world_process_zero = True
    is_local_process_zero = True

    @property
    def global_step(self) -> int:
        return self.step

    @property
    def max_steps(self) -> int:
        return self.total_steps

    @property
    def num_input_tokens_seen(self) -> int:
        return self.tokens_seen

    def save(self, directory: Path) -> None:
        (Path(directory) / STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> TrainState:
        return cls(**json.loads((Path(directory) / STATE_FILE).read_text()))
