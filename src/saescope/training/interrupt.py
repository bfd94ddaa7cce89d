"""Stopping a run cleanly: while `train` writes to an out_dir, SIGINT (Ctrl-C) and SIGTERM
(what `kill`, `timeout` and job schedulers send) only ask the loop to stop; it finishes the
step it is in, writes a checkpoint and raises `Interrupted`. A second signal stops at once
(the previous checkpoint stays). Handlers are installed from the main thread only, and the
previous ones are restored when training ends."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal after a whole step, with a checkpoint written."""

    def __init__(self, signum: int, step: int, out_dir: Path | None) -> None:
        where = f"; checkpoint in {out_dir}" if out_dir else ""
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}{where}")
        self.signum, self.step, self.out_dir = signum, step, out_dir

    @property
    def exit_status(self) -> int:
        """The shell's status for a process ended by this signal: 130 (INT), 143 (TERM)."""
        return 128 + self.signum


class StopRequest:
    """The stop signal received, if any (`signum`, None until one arrives)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @classmethod
    def install(cls, active: bool = True) -> StopRequest:
        """A request that SIGINT and SIGTERM set instead of stopping the program (when
        `active` and called from the main thread; otherwise one that never fires)."""
        request = cls()
        if active and threading.current_thread() is threading.main_thread():
            request._previous = {s: signal.signal(s, request._handle) for s in SIGNALS}
        return request

    def restore(self) -> None:
        """Put the previous handlers back (None: one not set from Python, so the default)."""
        for s, handler in self._previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\nsaescope: {signal.Signals(signum).name}: stopping after this step to write a "
            "checkpoint (send it again to stop at once)",
            file=sys.stderr,
        )
