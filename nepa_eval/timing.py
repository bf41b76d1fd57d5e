"""Timing helpers shared by the benchmarks: device choice, synchronised median timing, peak memory, matmul peak."""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch


def device_of(arg: str) -> torch.device:
    return torch.device("cuda" if arg == "auto" and torch.cuda.is_available() else ("cpu" if arg == "auto" else arg))


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], None], dev: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per call after warm-up."""
    for _ in range(warmup):
        fn()
    sync(dev)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def peak_memory(fn: Callable[[], None], dev: torch.device) -> Optional[float]:
    """Peak memory of one call in MiB (CUDA allocator; CPU: peak RSS growth is not separable, so None)."""
    if dev.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    sync(dev)
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def matmul_peak(dev: torch.device, dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048, 4096)) -> float:
    """Measured FLOP/s of square matmuls, best over sizes: the practical peak of this machine for `dtype`."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        best = max(best, 2 * n**3 / time_fn(lambda: a @ b, dev, 3, 5))
    return best


def gemm_time(dev: torch.device, dtype: torch.dtype, gemms: list[tuple[int, int, int, int, int]]) -> float:
    """Seconds for a list of (count, batch, m, k, n) matmuls, each shape timed alone (median) in `dtype`: what a
    step made of these GEMMs would take if nothing else cost time."""
    total = 0.0
    for count, b, m, k, n in gemms:
        a = torch.randn(b, m, k, device=dev, dtype=dtype)
        w = torch.randn(b, k, n, device=dev, dtype=dtype)
        fn = (lambda: a[0] @ w[0]) if b == 1 else (lambda: torch.bmm(a, w))
        total += count * time_fn(fn, dev, 2, 5)
    return total
