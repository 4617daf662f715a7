"""Test hook for processes the fault tests start: each epoch pauses after its last.pt is written,
so a test can kill a run between epochs reliably. `helpers.slow_epochs` puts this folder first on
the PYTHONPATH of those processes; lrlab itself knows nothing of it."""

import os
import time

PAUSE_SECONDS = float(os.environ.get("LRLAB_TESTS_EPOCH_PAUSE", "0"))

if PAUSE_SECONDS:
    from lrlab.runs import RunDirectory

    _save_checkpoint = RunDirectory.save_checkpoint

    def _save_then_pause(self, path, state):
        _save_checkpoint(self, path, state)
        if path == self.last_path:
            time.sleep(PAUSE_SECONDS)

    RunDirectory.save_checkpoint = _save_then_pause
