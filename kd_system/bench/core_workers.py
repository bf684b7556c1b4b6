"""Timed loops in worker processes that start together: how the ceiling section measures a rate
"on all cores" when one process cannot use them all (a Gymnasium vector env holds the GIL; an
onnxruntime session runs one intra-op thread, as an actor's does, policies/opaque.py).

Each worker builds its loop untimed (imports, ROM loads, engine sessions), says it is ready, and
only when every worker is ready do all of them get "go": their warm-ups and timed windows then
overlap, so the summed rate is of the cores shared, not of each one alone. The processes are
spawned, not forked: the parent holds torch's thread pool and possibly Redis sockets, which a
forked child would inherit half-made.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass
from typing import Any, Callable

from kd_system.bench.host_cpu import idle_fraction, read_cpu_times
from kd_system.errors import KDError

# A job: a module-level factory (picklable by name) and its arguments. In the worker it returns the
# loop's step (units done per call) and a close function.
Factory = Callable[..., tuple[Callable[[], int], Callable[[], None]]]


@dataclass(frozen=True)
class Job:
    factory: Factory
    args: tuple
    torch_threads: int = 1


def _serve(conn: Any) -> None:
    from kd_system.bench.timing import steady_rate, torch_threads

    while True:
        message = conn.recv()
        if message is None:
            return
        job, warmup_s, window_s = message
        close: Callable[[], None] = lambda: None  # noqa: E731
        try:
            with torch_threads(job.torch_threads):
                step, close = job.factory(*job.args)
                conn.send(("ready", None))
                if conn.recv() != "go":
                    continue
                conn.send(("done", steady_rate(step, warmup_s, window_s)))
        except Exception as exc:  # reported by the parent with the job it belongs to
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        finally:
            close()


def _receive(pipe: Any) -> tuple[str, Any]:
    try:
        return pipe.recv()
    except EOFError:  # the process itself died (killed, out of memory): no message will come
        return ("error", "the worker process exited")


class CoreWorkers:
    """``count`` spawned processes, reused for every measurement of a section (spawning one
    imports torch again: seconds on a busy machine)."""

    def __init__(self, count: int):
        context = mp.get_context("spawn")
        self.pipes, self.processes = [], []
        for _ in range(count):
            parent, child = context.Pipe()
            process = context.Process(target=_serve, args=(child,), daemon=True, name="kd-bench-core")
            process.start()
            child.close()
            self.pipes.append(parent)
            self.processes.append(process)

    def rate(self, jobs: list[Job], warmup_s: float, window_s: float) -> float:
        """Units per second of all ``jobs`` together, one per worker, timed over the same window."""
        return self.timed_rate(jobs, warmup_s, window_s)[0]

    def timed_rate(self, jobs: list[Job], warmup_s: float, window_s: float) -> tuple[float, float | None]:
        """``rate``, and the host's idle share over the timed window: read once the warm-up that
        follows "go" is over (setup comes before it) and again when the last worker reports."""
        if len(jobs) > len(self.pipes):
            raise ValueError(f"{len(jobs)} jobs for {len(self.pipes)} workers")
        pipes = self.pipes[:len(jobs)]
        for pipe, job in zip(pipes, jobs):
            pipe.send((job, warmup_s, window_s))
        ready = [_receive(pipe) for pipe in pipes]
        errors = [detail for kind, detail in ready if kind == "error"]
        for pipe, (kind, _) in zip(pipes, ready):
            if kind == "ready":
                pipe.send("go" if not errors else "skip")
        if errors:
            raise KDError(f"bench: a ceiling worker failed while setting up: {errors[0]}")
        time.sleep(warmup_s)
        before = read_cpu_times()
        done = [_receive(pipe) for pipe in pipes]
        errors = [detail for kind, detail in done if kind == "error"]
        if errors:
            raise KDError(f"bench: a ceiling worker failed while timing: {errors[0]}")
        return sum(rate for _, rate in done), idle_fraction(before, read_cpu_times())

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(None)
            except OSError:  # already gone
                pass
        for process in self.processes:
            process.join(timeout=5.0)
            if process.is_alive():
                process.terminate()

    def __enter__(self) -> "CoreWorkers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
