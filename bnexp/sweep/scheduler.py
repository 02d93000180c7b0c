"""The scheduler: hands the sweep's runs to an executor and follows them to their end, keeping the ledger, the
progress bar and (a planning mode: largest_lr, best_lr) the planner up to date as runs start and end. Ctrl-C or
SIGTERM stops it: queued runs are not started, running ones are stopped and recorded.

Everything here runs on the sweep's main thread; an executor's workers only ever touch their own Launch.
"""
from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from bnexp.runs.files import first_line
from bnexp.sweep.executors import Executor, Launch
from bnexp.sweep.grid import SweepJob
from bnexp.sweep.ledger import SweepLedger
from bnexp.sweep.planning import RunDirPlanner

POLL_S = 0.5


class Scheduler:
    """The runs of one sweep, from the first submitted to the last recorded.

    State: `in_flight` (run id -> Launch handed to the executor and not recorded yet), `ran_here` (run ids started
    in this sweep: a planning mode never asks for one again), `logs` (run id -> the stderr log of what ran, for the runs
    that got that far), `stopping` (set by Ctrl-C/SIGTERM), the ledger and the bar.
    """

    def __init__(self, ledger: SweepLedger, executor: Executor, planner: RunDirPlanner | None, skipped: int):
        self.ledger = ledger
        self.executor = executor
        self.planner = planner
        self.skipped = skipped
        self.in_flight: dict[str, Launch] = {}
        self.ran_here: set[str] = set()
        self.logs: dict[str, Path] = {}
        self.stopping = False
        # In a log file (no tty) every redraw is a new line, so redraw rarely there.
        self.bar = tqdm(total=0, unit="run", desc=ledger.name, dynamic_ncols=True, file=sys.stderr,
                        mininterval=1.0 if sys.stderr.isatty() else 30.0, smoothing=0.1)

    def run(self, pending: list[SweepJob]) -> bool:
        """Run `pending` (and, in a planning mode, whatever the searches ask for next) to the end; False when stopped by
        Ctrl-C or SIGTERM."""
        interrupted = False
        try:
            self._update_bar()
            self._submit(pending)
            if self.planner is not None:
                self._plan_more()  # announces the searches that are done already
            while self.in_flight:
                ended = self.executor.wait(timeout=POLL_S)
                news = self._note_started()  # first: a run that started and ended since the last look
                for launch in ended:
                    self._note_done(launch)
                if self.planner is not None and ended and not self.stopping:
                    self._plan_more(save=False)  # saved just below, with the ended runs
                if news or ended:
                    self._update_bar(refresh=False)
                    self.ledger.save("running")
        except KeyboardInterrupt:
            interrupted = True
            self.stopping = True
            self.bar.write("interrupted: stopping running training processes ...")
            ended = self.executor.stop()
            self._note_started()
            for launch in ended:  # record whatever the workers reported while stopping
                self._note_done(launch)
        finally:
            self.executor.close()
            self.bar.close()
        for row in self.ledger.rows.values():
            if row["status"] == "running":  # only possible after an interrupt
                row.update(status="failed", error="sweep interrupted before the run ended")
        return not interrupted

    def _submit(self, jobs: list[SweepJob], save: bool = True) -> None:
        self.bar.total += len(jobs)
        self.bar.refresh()
        self.ran_here.update(job.run_id for job in jobs)
        self.in_flight.update((launch.job.run_id, launch) for launch in self.executor.submit(jobs))
        # a submitted job's id on disk at once (or by the caller's save next): a killed sweep's next one follows it
        if self._note_started() and save:
            self.ledger.save("running")

    def _update_bar(self, refresh: bool = True) -> None:
        self.bar.set_postfix_str(self.ledger.progress_text(self.skipped), refresh=refresh)

    def _note_started(self) -> bool:
        """Record the job ids and the starts the executor reports; whether there were any."""
        news = False
        for launch in self.in_flight.values():
            news |= self.ledger.note_job_id(launch.job.run_id, launch.job_id)
            if launch.started and self.ledger.rows[launch.job.run_id]["status"] == "pending":
                self.ledger.mark_running(launch.job.run_id, launch.worker, launch.gpu)
                news = True
        return news

    def _note_done(self, launch: Launch) -> None:
        job, outcome = launch.job, launch.outcome
        del self.in_flight[job.run_id]
        self.ledger.note_job_id(job.run_id, launch.job_id)
        if outcome is None:  # stopped before it started
            return
        self.ledger.mark_done(job, outcome)  # marked running already: _note_started() runs first
        if outcome.log is not None:
            self.logs[job.run_id] = outcome.log
        accuracy = outcome.summary.get("final_test_acc")
        detail = f" test_acc={accuracy:.4f}" if isinstance(accuracy, (int, float)) else ""
        if outcome.status == "failed":
            detail = f" ({first_line(outcome.error, 'no error text')})"
            if self.planner is not None and not self.stopping:  # a run the sweep stopped tells nothing
                self.planner.failed_here.add(job.run_id)
        self.bar.write(f"{outcome.status:>8}: {job.describe()}{detail} [{outcome.wall_time_s:.1f}s] {job.run_dir}")
        # before update(): update() redraws, and the line should show the counts of this run
        self._update_bar(refresh=False)
        self.bar.update(1)

    def _plan_more(self, save: bool = True) -> None:
        """A planning mode: start the runs the searches need now, given what has ended (`save`: write the job ids
        of what it submits at once; False when the caller saves right after)."""
        for line in self.planner.progress_lines():
            self.bar.write(f"    {line}")
        in_flight = [launch.job for launch in self.in_flight.values()]
        # a run is started once per sweep: one that ended here has an outcome, so asking again would be a loop
        more = [job for job in self.planner.next_jobs(in_flight) if job.run_id not in self.ran_here]
        if more:
            self.ledger.add_jobs(more)
            self._submit(more, save)
