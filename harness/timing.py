"""
Wall-clock timing shared by the benchmarks (bench.py, replication/decoding.py): a call timed with the GPU
synchronised on both sides, and the median the tables report.
"""

import time

import torch


def timed(dev, fn):
    """(fn's result, its wall time in seconds), the GPU synchronised on both sides."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    result = fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return result, time.perf_counter() - t0


def median(values):
    """The middle value (the upper one of an even count): every median the benchmarks report."""
    return sorted(values)[len(values) // 2]
