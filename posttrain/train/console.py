"""One console per run: third-party progress bars off while a trainer works.

transformers ("Loading weights", "Writing model shards"), datasets ("Generating train split",
``map``/``filter`` bars such as "tokenizing train" and "Filter") and huggingface_hub draw their
own tqdm bars. In a terminal they fight with our Rich progress display; in a log file they are
lines of carriage returns. :class:`quiet_third_party` switches them off through each library's
own switch and restores the previous setting on the way out, so a notebook that wants them
back after training gets them back. What those steps did is reported on our console instead
(the data preparation counts, "saved model to ...").
"""

from __future__ import annotations

import contextlib
import importlib


def _switches():
    """``(is_enabled, disable, enable)`` for every installed library that draws bars."""
    found = []
    for module_name, is_enabled, disable, enable in (
        ("transformers.utils.logging", "is_progress_bar_enabled", "disable_progress_bar", "enable_progress_bar"),
        ("datasets.utils.logging", "is_progress_bar_enabled", "disable_progress_bar", "enable_progress_bar"),
        ("huggingface_hub.utils", "are_progress_bars_disabled", "disable_progress_bars", "enable_progress_bars"),
    ):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        state = getattr(module, is_enabled)
        # huggingface_hub asks the opposite question
        enabled = (lambda state=state: not state()) if is_enabled.startswith("are_") else state
        found.append((enabled, getattr(module, disable), getattr(module, enable)))
    return found


class quiet_third_party(contextlib.ContextDecorator):  # noqa: N801 - used like a function: `with quiet_third_party():`
    """Context manager and decorator: third-party progress bars off inside, restored after.
    Re-entrant (a decorated ``__init__`` may call another decorated method)."""

    def __init__(self):
        self._saved: list[list] = []

    def __enter__(self):
        switches = _switches()
        self._saved.append([(enabled(), enable) for enabled, _, enable in switches])
        for _, disable, _ in switches:
            disable()
        return self

    def __exit__(self, *exc):
        for was_enabled, enable in self._saved.pop():
            if was_enabled:
                enable()
        return False
