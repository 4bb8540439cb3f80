"""The CPU thread policy: data of at most `SMALL_EXAMPLE` values per example runs with one thread
(torch's intra-op pool only adds synchronisation on such small tensors).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Sequence

import torch


SMALL_EXAMPLE = 256   # values per example up to which one CPU thread is used (see `policy_threads`)


def policy_threads(data_shape: Sequence[int], device: Any = "cpu", threads: int = 0) -> int | None:
    """The CPU thread count for work on examples of `data_shape`, or None to keep torch's setting.

    `threads` > 0 wins (the config's `threads`); otherwise examples of at most `SMALL_EXAMPLE`
    values (2-D points, 8x8 digits) get one thread: their matrix products are too small to split,
    and on a shared machine the intra-op synchronisation made sampling 2-D points with 2 threads
    up to 30x slower than with one. Not on CPU devices: None.
    """
    if torch.device(device if device is not None else "cpu").type != "cpu":
        return None
    if threads:
        return threads
    return 1 if math.prod(tuple(data_shape)) <= SMALL_EXAMPLE else None


@contextlib.contextmanager
def thread_policy(data_shape: Sequence[int], device: Any = "cpu", threads: int = 0):
    """Run the block with `policy_threads(data_shape, device, threads)` CPU threads, then restore.

    An explicit `threads` is set as given; the automatic choice (one thread for small examples)
    only lowers the count.
    """
    n, before = policy_threads(data_shape, device, threads), torch.get_num_threads()
    if n is not None and (threads or n < before):
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
