"""How long training runs and what it shows meanwhile.

  EndAlignedTrainLoop  IterBasedTrainLoop validating at the end and every val_interval before it
  TimeBudgetHook    fits training into a wall-clock budget (fewer iterations, schedule fitted), then stops
  ProgressHook      one line per log interval: iteration, percent, elapsed, ETA
"""

from __future__ import annotations

import logging
import os.path as osp
import time
from contextlib import contextmanager

from mmdet.registry import HOOKS, LOOPS
from mmengine.hooks import Hook
from mmengine.runner import IterBasedTrainLoop

from platepipe.components.mm.optim import ema_momentum

log = logging.getLogger(__name__)


@LOOPS.register_module(force=True)
class EndAlignedTrainLoop(IterBasedTrainLoop):
    """mmengine's IterBasedTrainLoop, but its validations count back from the end: at max_iters, max_iters -
    val_interval, ... (from val_begin on). mmengine's validates at multiples of val_interval and at the end, so a
    schedule fitted to a time budget that ends just past a multiple validated twice in a row (2,200 and 2,210:
    about 20 s of a quick detector's time). The end moves while the budget fits the schedule: a validation less
    than half an interval after the last one is left out (the one at the end never)."""

    last_val: int | None = None

    def validates(self, it: int) -> bool:
        """Whether the loop validates after iteration `it` (counted from 1)."""
        if it < self.val_begin:
            return False
        if it == self._max_iters:
            return True
        return ((self._max_iters - it) % self.val_interval == 0
                and (self.last_val is None or it - self.last_val >= self.val_interval / 2))

    def validations_left(self, after: int, iters: int, val_begin: int) -> int:
        """How many validations a schedule of `iters` iterations holds after iteration `after` (the end's
        included), for a first validation at val_begin."""
        first = max(after + 1, val_begin)
        return max(0, (iters - first) // self.val_interval) + 1

    def run(self) -> None:
        self.runner.call_hook("before_train")
        self.runner.call_hook("before_train_epoch")
        if self._iter > 0:
            for _ in range(self._iter):  # resumed: skip the batches already trained on, as mmengine does
                next(self.dataloader_iterator)
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            self.run_iter(next(self.dataloader_iterator))
            self._decide_current_val_interval()
            if self.runner.val_loop is not None and self.validates(self._iter):
                self.last_val = self._iter
                self.runner.val_loop.run()
        self.runner.call_hook("after_train_epoch")
        self.runner.call_hook("after_train")
        return self.runner.model


@HOOKS.register_module(force=True)
class TimeBudgetHook(Hook):
    """Fit training into `minutes` of wall clock.

    Every 5% of the budget, until its last 5%, it measures the pace of the last stretch (the last 10% of the
    budget, validations left out) and fits the schedule to the time left: fewer iterations than planned where
    those would not fit, never more; the learning-rate decay begins at the same fraction of the new schedule and
    ends at its end (a decay under way is stretched or shortened from where it is: mmengine's cosine is
    chainable, so the rate goes on smoothly from its value to its floor at the new end); the first validation
    and the weight average (EMA) follow the new length. A cut-off cosine would leave the learning rate high and
    the model worse. What it keeps back is for the validations still to come (each as long as the longest seen;
    until one is seen, VAL_PER_BATCH training iterations per validation batch, or `reserve` of the budget
    where the validation's length is unknown) and 2% of the budget. Whatever happens after that, it stops at
    the budget; the loop then validates and checkpoints as at its last iteration.

    deadline (time.time() seconds): where given, the budget is what is left until then when training starts (at
    most `minutes`), so that what came before it (imports, building the runner, loading the data) is counted too."""

    priority = "LOW"
    STRETCH = 0.05  # of the budget between two fits; the pace is measured over the last two stretches
    # a validation batch (half a training batch, no backward pass) took 0.5-0.6 training iterations on 2 cores
    # (reader and detector of the quick preset): a little more is assumed until one has been timed
    VAL_PER_BATCH = 0.75

    def __init__(self, minutes: float | None = None, reserve: float = 0.1, deadline: float | None = None):
        self.seconds = minutes * 60 if minutes else None
        self.deadline = deadline
        self.reserve = reserve  # of the budget kept back for each validation, until one can be estimated
        self.val_batches: int | None = None  # the validation's length in batches, where known
        self.started = self.val_started = None
        self.first_iter = 0
        self.marks: list[tuple[float, int, float]] = []  # (time, iteration, validation seconds so far) per fit
        self.val_seconds = 0.0  # the longest validation so far
        self.val_total = 0.0
        self.planned: tuple[int, list[float], float] | None = None  # iterations, decay starts, first validation

    def before_val_epoch(self, runner) -> None:
        self.val_started = time.monotonic()

    def after_val_epoch(self, runner, metrics=None) -> None:
        if self.val_started is not None:
            took = time.monotonic() - self.val_started
            self.val_seconds, self.val_total = max(self.val_seconds, took), self.val_total + took

    @contextmanager
    def paused(self):
        """Time spent inside is no training (mining, say): left out of the pace, as validations are."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.val_total += time.monotonic() - started

    def before_train(self, runner) -> None:
        self.started = time.monotonic()
        if self.seconds and self.deadline:  # at least a tenth of the budget, however late it starts
            self.seconds = min(self.seconds, max(0.1 * self.seconds, self.deadline - time.time()))
        self.first_iter = runner.iter
        try:
            self.val_batches = len(runner.val_loop.dataloader)
        except (AttributeError, RuntimeError, TypeError):  # no validation loop, or one of unknown length
            self.val_batches = None
        fitted = [s.end for s in self._decays(runner) if s.end < runner.train_loop._max_iters]
        if self.seconds and fitted:  # resumed from a run whose schedule was fitted to the budget: keep its end
            runner.train_loop._max_iters = min(fitted)

    @staticmethod
    def _decays(runner) -> list:
        schedulers = runner.param_schedulers or []
        if isinstance(schedulers, dict):
            schedulers = [s for group in schedulers.values() for s in group]
        return [s for s in schedulers if type(s).__name__.startswith("Cosine")]

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if not self.seconds:
            return
        done, now = runner.iter + 1 - self.first_iter, time.monotonic()
        if done == 5:  # the first iterations pay for start-up: time from here
            self.marks = [(now, runner.iter + 1, self.val_total)]
        elif (self.marks and runner.iter + 1 - self.marks[-1][1] >= 20 and now - self.marks[-1][0] >= self.STRETCH
              * self.seconds and now - self.started < 0.95 * self.seconds):  # time to look at the pace again
            self.marks.append((now, runner.iter + 1, self.val_total))
            then, at, val_then = self.marks[max(0, len(self.marks) - 3)]
            self._fit(runner, (now - then - (self.val_total - val_then)) / (runner.iter + 1 - at))
        if now - self.started > self.seconds:
            loop = runner.train_loop
            if loop._max_iters > runner.iter + 1:
                runner.logger.warning(f"time budget of {self.seconds / 60:.1f} min reached at iteration "
                                      f"{runner.iter + 1}: finishing")
                loop._max_iters = runner.iter + 1

    def _validations(self, loop, step: int, iters: int) -> int:
        """How many validations a schedule of `iters` iterations still holds after `step` (the last included)."""
        if hasattr(loop, "validations_left"):  # EndAlignedTrainLoop
            return loop.validations_left(step, iters, self._val_begin(iters))
        first = max(step + 1, self._val_begin(iters))
        return max(0, (iters - 1) // loop.val_interval - (first - 1) // loop.val_interval) + 1

    def _val_begin(self, iters: int) -> int:
        return max(1, round(self.planned[2] * iters))

    def _fit(self, runner, per_iter: float) -> None:
        """Fit the schedule to the time left, at per_iter seconds per iteration (validations left out)."""
        loop, step = runner.train_loop, runner.iter + 1
        decays = self._decays(runner)
        if self.planned is None:
            self.planned = (loop._max_iters, [s.begin / loop._max_iters for s in decays],
                            getattr(loop, "val_begin", 1) / loop._max_iters)
        planned, starts, _ = self.planned
        left = 0.98 * self.seconds - (time.monotonic() - self.started)
        fits = planned
        one_val = (self.val_seconds or (self.VAL_PER_BATCH * self.val_batches * per_iter if self.val_batches
                                        else self.reserve * self.seconds))
        for _ in range(3):  # the validations kept back for depend on the length, and the length on them
            kept_back = self._validations(loop, step, fits) * one_val
            fits = min(planned, max(step + 2, step + int((left - kept_back) / max(per_iter, 1e-6))))
        if fits == loop._max_iters:
            return
        # say it the first time and when it changes by more than 5%, not at every small correction
        worth_saying = loop._max_iters == planned or abs(fits - loop._max_iters) > 0.05 * loop._max_iters
        for s, start in zip(decays, starts):
            if s.begin > step:  # not begun: it begins at the same fraction of the new schedule
                s.begin = max(step + 1, round(start * fits))
            s.end = fits
            s.T_max = s.end - s.begin
        loop._max_iters = fits
        if hasattr(loop, "val_begin"):
            loop.val_begin = self._val_begin(fits)
        for hook in getattr(runner, "hooks", []):  # the weight average settles to the new schedule's end
            if type(hook).__name__ == "EMAHook" and hasattr(hook, "ema_model"):
                hook.ema_model.momentum, hook.ema_model.gamma = ema_momentum(fits)
        if worth_saying:
            stage = osp.basename(str(getattr(runner, "work_dir", "")).rstrip("/")) or "training"
            log.info(f"  {stage}: {self.seconds / 60:.1f} min time budget at {per_iter:.2f} s per iteration: training "
                     f"{fits} of {planned} iterations, learning-rate schedule fitted")


@HOOKS.register_module(force=True)
class ProgressHook(Hook):
    """A plain progress line every `interval` iterations: stage, iteration, percent, loss, elapsed, ETA."""

    priority = "BELOW_NORMAL"

    def __init__(self, stage: str, interval: int = 25, echo=None):
        self.stage, self.interval = stage, interval
        self.echo = echo or log.info
        self.started = None
        self.start_iter = 0

    def before_train(self, runner) -> None:
        self.started = time.monotonic()
        self.start_iter = runner.iter
        if runner.iter:
            self.echo(f"  {self.stage}: resumed at iteration {runner.iter} of {runner.train_loop.max_iters}")

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        done, total = runner.iter + 1, runner.train_loop.max_iters
        if done % self.interval and done != total:
            return
        elapsed = time.monotonic() - self.started
        rate = elapsed / max(1, done - self.start_iter)
        loss = float(outputs["loss"].item()) if outputs and "loss" in outputs else float("nan")
        self.echo(f"  {self.stage}: iter {done}/{total} ({100 * done / total:.0f}%), loss {loss:.3f}, "
                  f"{_clock(elapsed)} elapsed, ETA {_clock(rate * (total - done))}")

    def after_val_epoch(self, runner, metrics=None) -> None:
        if metrics:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            self.echo(f"  {self.stage}: validation at iter {runner.iter}: {shown}")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
