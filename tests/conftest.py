"""Test-session settings.

The tests work on small tensors, where torch's intra-op threads only add synchronisation; on a
shared 2-core machine (CI) the default thread pool made single tests up to 15x slower. One
thread per process keeps the suite fast and its timings stable; subprocesses inherit it through
OMP_NUM_THREADS.
"""
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # tests/: problems.py, peers.py for every folder

import torch  # noqa: E402

torch.set_num_threads(1)
