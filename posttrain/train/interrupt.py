"""Ctrl-C during training: the first SIGINT asks the loop to stop after the current optimizer
step (it then writes a checkpoint and raises :class:`TrainingInterrupted`); a second one raises
``KeyboardInterrupt`` at once, wherever the loop is."""

from __future__ import annotations

import os
import signal
import threading


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped at a user's Ctrl-C after a completed optimizer step, with a checkpoint of
    that step written (``checkpoint``), from which ``resume_from_checkpoint="latest"`` continues."""

    def __init__(self, message: str, checkpoint=None):
        super().__init__(message)
        self.checkpoint = checkpoint


class InterruptGuard:
    """Catches SIGINT from :meth:`install` until :meth:`restore`; :attr:`requested` says whether
    one arrived. Signal handlers can only be set from the main thread: elsewhere (a training
    thread of an app) nothing is installed and Ctrl-C keeps its usual meaning."""

    def __init__(self):
        self.requested = False
        self._installed = False
        self._previous = None

    @classmethod
    def install(cls) -> InterruptGuard:
        guard = cls()
        if threading.current_thread() is threading.main_thread():
            guard._previous = signal.signal(signal.SIGINT, guard._handle)
            guard._installed = True
        return guard

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        # os.write, not print: a handler may run in the middle of another write to the stream
        os.write(2, b"\ninterrupt: stopping after this optimizer step to write a checkpoint (Ctrl-C again stops at once)\n")

    def restore(self) -> None:
        if self._installed:
            # None: the previous handler was set outside Python; Python's own is the best stand-in
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)
            self._installed = False
