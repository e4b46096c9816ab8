"""Map a function over chunks of a list in worker processes, yielding results in input order."""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

# Chunks submitted per worker and not yet consumed. Two keep every worker busy while this
# process consumes a finished chunk, and they bound the results held in memory.
_CHUNKS_IN_FLIGHT_PER_WORKER = 2


def _start_method() -> str:
    # Not "fork": the dataset builder, which starts these pools, has imported TensorFlow
    # and may have run its thread pools. A child forked from a process with threads can
    # deadlock on a lock that another thread held at the fork. The fork server forks
    # workers from a fresh process that never ran TensorFlow. Where it is missing
    # (Windows), spawn starts a fresh interpreter per worker.
    if "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return "spawn"


def _ignore_interrupts() -> None:
    # Ctrl+C reaches the whole process group. Only the parent handles it: it cancels the
    # pending chunks, waits for the running ones and cleans up, so the workers print
    # no tracebacks of their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class OrderedPool:
    """Worker processes that map a function over chunks of a list, results in input order.

    With `workers` of 1 or less, `map` runs the function in this process and no
    process is started. Use it as a context manager: leaving the block cancels
    the chunks not yet started and waits for the running ones.

    NOTE: the workers import the program's `__main__` module, as Python's
    forkserver and spawn start methods do: once in the fork server, which a
    process starts once, or once per worker with spawn. A main script that
    imports TensorFlow at the top makes the first `map` wait seconds for that
    import, so dataset_tool.py and bench/dataset_tool_throughput.py import it
    only inside functions.
    """

    def __init__(self, workers: int):
        self.workers = max(workers, 1)
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        if self.workers > 1:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context(_start_method()),
                initializer=_ignore_interrupts,
            )

    def __enter__(self) -> OrderedPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Cancel the chunks not yet started, wait for the running ones and stop the workers."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def map(
        self, function: Callable[[list], list], items: Sequence, chunk_size: int
    ) -> Iterator[Any]:
        """Yield the results of `function` for every item, in the order of `items`.

        `function` takes a list of up to `chunk_size` consecutive items and
        returns a list with one result per item. In worker processes it must be
        picklable, such as a module-level function or a functools.partial of one.
        An exception raised by `function` is raised here when its chunk's turn
        comes, so an error in an earlier chunk is always raised first.
        """
        chunks = (list(items[start:start + chunk_size])
                  for start in range(0, len(items), chunk_size))
        if self._executor is None:
            for chunk in chunks:
                yield from function(chunk)
            return

        pending: collections.deque[concurrent.futures.Future] = collections.deque()
        for chunk in chunks:
            pending.append(self._executor.submit(function, chunk))
            if len(pending) >= self.workers * _CHUNKS_IN_FLIGHT_PER_WORKER:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
