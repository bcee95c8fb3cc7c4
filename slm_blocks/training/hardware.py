"""A start-up probe: are bf16 matmuls really faster than fp32 on this device?

Machines of the same kind differ: on one 2-core CPU bf16 matmuls ran 5.7× faster than fp32 (AMX), on another
they were emulated at ~1 GFLOP/s (170× slower), and a GPU may report bf16 support without fast bf16 units.
"auto" precision therefore asks this probe instead of trusting the device type. The result is cached per
device for the life of the process (the probe costs a few tens of milliseconds).
"""

from __future__ import annotations

import functools
import time

import torch


@functools.lru_cache(maxsize=None)
def bf16_matmul_speedup(device: str = "cpu", n: int = 256, reps: int = 5) -> float:
    """fp32 matmul time / bf16 matmul time for an n×n product on `device` (> 1: bf16 is faster)."""
    def best(dtype: torch.dtype) -> float:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b  # warm-up (kernel selection, lazy init)
        times = []
        for _ in range(reps):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            a @ b
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        return min(times)

    return best(torch.float32) / max(best(torch.bfloat16), 1e-12)


def bf16_is_faster(device: torch.device, margin: float = 1.1) -> bool:
    """True when the probe finds bf16 matmuls at least `margin` × faster than fp32 on `device`."""
    return bf16_matmul_speedup(str(device)) >= margin
