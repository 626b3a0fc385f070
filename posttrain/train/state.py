"""Where a run is: saved with every checkpoint so a resumed run continues exactly."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    """Progress counters. ``batches_in_epoch`` counts this process's micro-batches already
    consumed in ``epoch``, so resuming skips exactly those. ``global_batch`` (items a micro-batch
    loads over all processes) makes that count mean the same rows on another number of
    processes; 0 in checkpoints written before it was recorded."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    tokens_seen: int = 0
    total_steps: int = 0
    global_batch: int = 0

    def save(self, directory: Path) -> None:
        (Path(directory) / STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> TrainState:
        return cls(**json.loads((Path(directory) / STATE_FILE).read_text()))
