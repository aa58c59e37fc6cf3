"""Long computations off the script run: a job runs on a background thread and reports progress.

Streamlit re-runs the page script on every click, so a sampling, scoring, ablation or stability
run of minutes must not run inside it.  ``start`` hands the work to a thread (kept process-wide,
so it finishes even if the browser tab that started it reloads); the page shows ``show_progress``,
a fragment that polls the job once a second (counts, elapsed time, time left, a Cancel button)
and re-runs the page when the job ends.  Work that runs the model holds ``model_lock`` so that two
jobs never trace through the same model at once (the tracer swaps the attention implementation).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable

import streamlit as st

MAX_JOBS = 16  # finished jobs kept (their results are what later page runs show)
POLL_S = 1.0


class Cancelled(Exception):
    """Raised inside a job's work when its Cancel button was pressed."""


class Job:
    def __init__(self, key: str, title: str, work: Callable[["Job"], Any]):
        self.key, self.title = key, title
        self.done, self.total, self.text = 0, 0, "starting"
        self.started = time.monotonic()
        self.ended: float | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self._cancel = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(work,), daemon=True, name=f"kfh-job {key}")
        self.thread.start()

    def _run(self, work: Callable[["Job"], Any]) -> None:
        try:
            self.result = work(self)
        except BaseException as e:  # shown by the page that reads the job
            self.error = e
        finally:
            self.ended = time.monotonic()

    @property
    def running(self) -> bool:
        return self.ended is None

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, Cancelled)

    def cancel(self) -> None:
        self._cancel.set()

    def report(self, done: int, total: int, text: str | None = None) -> None:
        """Progress ``done`` of ``total`` (units named in ``text``); raises Cancelled once cancel is pressed."""
        self.done, self.total = done, total
        if text is not None:
            self.text = text
        if self._cancel.is_set():
            raise Cancelled(f"{self.title}: cancelled")

    def status(self) -> str:
        """e.g. ``tracing every head: 24 / 64 traces · 12 s · about 20 s left``."""
        elapsed = (self.ended or time.monotonic()) - self.started
        line = self.text + (f": {self.done} / {self.total}" if self.total else "") + f" · {elapsed:.0f} s"
        if self.running and 0 < self.done < self.total:
            line += f" · about {elapsed / self.done * (self.total - self.done):.0f} s left"
        return line

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0


@st.cache_resource(show_spinner=False)
def _registry() -> tuple[OrderedDict, threading.Lock]:
    return OrderedDict(), threading.Lock()


def start(key: str, title: str, work: Callable[[Job], Any]) -> Job:
    """The job under ``key`` (running, finished, failed or cancelled), or a new one doing ``work(job)``."""
    jobs, lock = _registry()
    with lock:
        job = jobs.get(key)
        if job is None:
            job = jobs[key] = Job(key, title, work)
            finished = [k for k, j in jobs.items() if not j.running]  # oldest first; running jobs stay
            for old in finished[: max(0, len(jobs) - MAX_JOBS)]:
                jobs.pop(old)
        jobs.move_to_end(key)
        return job


def get(key: str) -> Job | None:
    jobs, lock = _registry()
    with lock:
        return jobs.get(key)


def forget(key: str) -> None:
    """Drop a finished job, so that the next ``start`` under its key runs the work again."""
    jobs, lock = _registry()
    with lock:
        if key in jobs and not jobs[key].running:
            jobs.pop(key)


@st.cache_resource(show_spinner=False)
def _model_locks() -> dict[int, threading.Lock]:
    return {}


def model_lock(model) -> threading.Lock:
    """One lock per loaded model object: hold it while running the model (ask for it on the script
    thread, and hand it to the job)."""
    locks = _model_locks()
    return locks.setdefault(id(model), threading.Lock())


def locked(job: Job, lock: threading.Lock, work: Callable[[], Any]) -> Any:
    """Run ``work()`` holding ``lock``, saying so while waiting for it (cancel still works)."""
    while not lock.acquire(timeout=0.5):
        job.report(job.done, job.total, "waiting for the model (another job is using it)")
    try:
        return work()
    finally:
        lock.release()


def show_progress(job: Job) -> None:
    """The job's progress bar and Cancel button, refreshed every second; the page re-runs when it ends."""

    @st.fragment(run_every=POLL_S)
    def progress() -> None:
        if not job.running:
            st.rerun()
        st.progress(job.fraction, text=f"{job.title} · {job.status()}")
        if st.button("Cancel", key=f"cancel-{job.key}", icon=":material/cancel:"):
            job.cancel()
            st.caption("Cancelling after the current trace ...")

    progress()
