"""The two stages training side by side (components.train).

  MineNegativesHook the reader's negatives mined with the detector's weights part-way through its training
  DetectorWatchHook the reader's watch on the detector trained beside it (cores, failure)
"""

from __future__ import annotations

import contextlib
import logging

import torch
from mmengine.hooks import Hook

from platepipe.components.mm.schedule import TimeBudgetHook

log = logging.getLogger(__name__)


class MineNegativesHook(Hook):
    """Mine the reader's negatives with the detector's weights as they are at `at` of its schedule (once; the
    time it takes is no training for the time budget): `mine(model)` does it (components.train)."""

    priority = "LOW"

    def __init__(self, at: float, mine):
        self.at, self.mine, self.done = at, mine, False

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self.done or runner.iter + 1 < round(self.at * runner.train_loop.max_iters):
            return
        self.done = True
        budget = next((h for h in runner.hooks if isinstance(h, TimeBudgetHook)), None)
        with budget.paused() if budget else contextlib.nullcontext():
            self.mine(runner.model)


class DetectorWatchHook(Hook):
    """The reader's hook while the detector trains beside it in a child process (components.train): every 10
    iterations it looks whether that process is done, and then gives the reader every core; it stops the
    reader when the detector failed."""

    priority = "LOW"

    def __init__(self, child, cores: int):
        self.child, self.cores, self.done = child, cores, False

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self.done or (runner.iter + 1) % 10:
            return
        code = self.child.poll()
        if code is None:
            return
        if code:
            raise RuntimeError(f"training the detector failed (exit code {code}; its output is above): "
                               "the reader stops too")
        self.done = True
        torch.set_num_threads(self.cores)
        log.info(f"  detector done: the reader goes on with its negatives on {self.cores} cores")
