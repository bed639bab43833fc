"""A task worker: polls Cairn's task queues, runs your functions, heartbeats
while they work, and completes or fails each task.

    from cairn_client import Worker, TaskFailed

    worker = Worker("http://127.0.0.1:8080", key="cairn_…", concurrency=16)

    @worker.task("triage.clean")
    def clean(input, ctx):
        return {"text": input["text"].strip()}

    worker.run()   # until SIGINT / SIGTERM; in-flight tasks finish first

A function takes the step's input (and, if it has a second parameter, a
:class:`TaskContext`) and returns the step's output (any JSON value). An
exception fails the attempt: :class:`TaskFailed` with your error kind (and
``retryable``), anything else as kind ``python.<ExceptionName>``, retryable.
The step's ``retry`` policy decides whether the task is offered again.
``async def`` functions work too (each runs in its own event loop).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import socket
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional

from ._http import CairnError, Transport

log = logging.getLogger("cairn_client.worker")


class TaskFailed(Exception):
    """Fail the attempt with your own error kind (matched by the step's
    ``retry.errors``, ``non_retryable`` and ``catch``)."""

    def __init__(self, kind: str, message: str, retryable: bool = True,
                 retry_after_ms: Optional[int] = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retryable = retryable
        self.retry_after_ms = retry_after_ms


class TaskContext:
    """What a function knows about its task."""

    def __init__(self, task: Dict[str, Any], worker: "Worker") -> None:
        self.task = task
        self.run_id: str = task["run_id"]
        self.workflow: str = task["workflow"]
        self.step_id: str = task["step_id"]
        self.attempt: int = task["attempt"]
        self.queue: str = task["queue"]
        self.token: str = task["token"]
        self.heartbeat_timeout_ms: int = task["heartbeat_timeout_ms"]
        #: Set when Cairn no longer waits for this task (it expired, the run
        #: was cancelled): stop and return; the result is not recorded.
        self.cancelled = threading.Event()
        self._worker = worker
        self._next_beat = time.monotonic() + self.heartbeat_timeout_ms / 3000.0

    def heartbeat(self) -> None:
        """Beats now (the worker also beats on its own at a third of the
        heartbeat timeout while the function runs)."""
        self._worker._beat(self)


Handler = Callable[..., Any]


class Worker:
    """Polls task queues and runs registered functions, ``concurrency`` at a time."""

    def __init__(self, url: str = "http://127.0.0.1:8080", key: Optional[str] = None, *,
                 name: Optional[str] = None, concurrency: int = 4, poll_wait_ms: int = 20000,
                 shutdown_grace: float = 30.0) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.http = Transport(url, key, timeout=30.0)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.concurrency = concurrency
        self.poll_wait_ms = poll_wait_ms
        self.shutdown_grace = shutdown_grace
        self.handlers: Dict[str, Handler] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._running: Dict[str, TaskContext] = {}
        self._free = threading.Semaphore(concurrency)
        #: Tasks completed and failed by this worker, for callers that count.
        self.completed = 0
        self.failed = 0

    # -- registry -----------------------------------------------------------

    def task(self, queue: str) -> Callable[[Handler], Handler]:
        """Decorator: the function does the tasks of ``queue``."""

        def register(fn: Handler) -> Handler:
            self.register(queue, fn)
            return fn

        return register

    def register(self, queue: str, fn: Handler) -> None:
        """The function ``fn`` does the tasks of ``queue``."""
        if queue in self.handlers:
            raise ValueError(f"queue `{queue}` already has a function")
        self.handlers[queue] = fn

    # -- lifecycle ----------------------------------------------------------

    def stop(self) -> None:
        """Stops polling; tasks in flight finish (up to ``shutdown_grace``)."""
        self._stop.set()

    def run(self, install_signals: bool = True) -> None:
        """Polls until :meth:`stop` (or SIGINT/SIGTERM), then lets the tasks
        in flight finish."""
        if not self.handlers:
            raise ValueError("register a function first (@worker.task(\"queue\"))")
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self.stop())
        beats = threading.Thread(target=self._heartbeats, name="cairn-heartbeats", daemon=True)
        beats.start()
        log.info("worker %s polling %s", self.name, ", ".join(sorted(self.handlers)))
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="cairn-task") as pool:
            backoff = 0.5
            while not self._stop.is_set():
                # Wait for a free slot, then take as many tasks as are free.
                if not self._free.acquire(timeout=0.5):
                    continue
                free = 1
                while free < self.concurrency and self._free.acquire(blocking=False):
                    free += 1
                try:
                    tasks = self._poll(free)
                    backoff = 0.5
                except (CairnError, ConnectionError) as e:
                    log.warning("poll failed (%s); trying again in %.1f s", e, backoff)
                    tasks = []
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
                for _ in range(free - len(tasks)):
                    self._free.release()
                for t in tasks:
                    ctx = TaskContext(t, self)
                    with self._lock:
                        self._running[ctx.token] = ctx
                    pool.submit(self._work, ctx)
            log.info("worker %s stopping: %d task(s) in flight", self.name, len(self._running))
            deadline = time.monotonic() + self.shutdown_grace
            while self._running and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._running:
                log.warning("%d task(s) still running after the grace period; their heartbeats stop and Cairn "
                            "offers them again", len(self._running))
                for ctx in list(self._running.values()):
                    ctx.cancelled.set()
                with self._lock:
                    self._running.clear()
                pool.shutdown(wait=False, cancel_futures=True)

    # -- protocol -----------------------------------------------------------

    def _poll(self, free: int) -> List[Dict[str, Any]]:
        body = {"queues": sorted(self.handlers), "worker": self.name, "max": free, "wait_ms": self.poll_wait_ms}
        r = self.http.request("POST", "/tasks/poll", body, timeout=self.poll_wait_ms / 1000.0 + 15)
        return r["tasks"]

    def _beat(self, ctx: TaskContext) -> None:
        try:
            self.http.request("POST", "/tasks/heartbeat", {"token": ctx.token})
        except CairnError as e:
            if e.status in (404, 409):
                log.warning("task %s/%s attempt %d: %s", ctx.run_id, ctx.step_id, ctx.attempt, e.detail)
                ctx.cancelled.set()
            else:
                log.warning("heartbeat failed: %s", e)
        except ConnectionError as e:
            log.warning("heartbeat failed: %s", e)
        ctx._next_beat = time.monotonic() + ctx.heartbeat_timeout_ms / 3000.0

    def _heartbeats(self) -> None:
        while True:
            now = time.monotonic()
            with self._lock:
                due = [c for c in self._running.values() if c._next_beat <= now and not c.cancelled.is_set()]
            for ctx in due:
                self._beat(ctx)
            time.sleep(0.1)

    def _work(self, ctx: TaskContext) -> None:
        try:
            fn = self.handlers[ctx.queue]
            try:
                output = _call(fn, ctx.task["input"], ctx)
                if not ctx.cancelled.is_set():
                    self._answer("/tasks/complete", {"token": ctx.token, "output": output}, ctx)
                    self.completed += 1
            except TaskFailed as e:
                err: Dict[str, Any] = {"kind": e.kind, "message": e.message, "retryable": e.retryable}
                if e.retry_after_ms is not None:
                    err["retry_after_ms"] = e.retry_after_ms
                self._answer("/tasks/fail", {"token": ctx.token, "error": err}, ctx)
                self.failed += 1
            except Exception as e:  # noqa: BLE001 - any failure of the user's code fails the attempt
                message = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"[:10000]
                err = {"kind": f"python.{type(e).__name__}", "message": message, "retryable": True}
                self._answer("/tasks/fail", {"token": ctx.token, "error": err}, ctx)
                self.failed += 1
        finally:
            with self._lock:
                self._running.pop(ctx.token, None)
            self._free.release()

    def _answer(self, path: str, body: Dict[str, Any], ctx: TaskContext) -> None:
        for wait in (0.2, 0.5, 1, 2, 5, None):
            try:
                r = self.http.request("POST", path, body)
                if r.get("outcome") == "failed" and path.endswith("complete"):
                    log.warning("task %s/%s: the output was recorded as a failure: %s", ctx.run_id, ctx.step_id,
                                r.get("message"))
                return
            except CairnError as e:
                if e.status < 500:
                    log.warning("task %s/%s attempt %d not recorded: %s", ctx.run_id, ctx.step_id, ctx.attempt,
                                e.detail)
                    return
                err: Exception = e
            except ConnectionError as e:
                err = e
            if wait is None:
                log.error("task %s/%s: giving up on recording the result: %s", ctx.run_id, ctx.step_id, err)
                return
            time.sleep(wait)


def _call(fn: Handler, value: Any, ctx: TaskContext) -> Any:
    try:
        params = len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = 2
    args = (value, ctx) if params >= 2 else (value,)
    if inspect.iscoroutinefunction(fn):
        return asyncio.run(fn(*args))
    return fn(*args)
