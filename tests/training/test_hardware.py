"""The bf16 probe, and "auto" precision never picking bf16 where the probe finds it slower."""

import math

import pytest
import torch

from slm_blocks.training import hardware
from slm_blocks.training.config import TrainConfig


def test_the_probe_measures_a_real_ratio_and_caches_it():
    hardware.bf16_matmul_speedup.cache_clear()
    r = hardware.bf16_matmul_speedup("cpu", n=64, reps=2)
    assert math.isfinite(r) and r > 0
    assert hardware.bf16_matmul_speedup("cpu", n=64, reps=2) == r  # cached: probed once per process
    assert hardware.bf16_matmul_speedup.cache_info().hits >= 1


@pytest.mark.parametrize("speedup,expected", [(0.01, "fp32"), (0.9, "fp32"), (1.05, "fp32"), (3.0, "bf16")])
def test_auto_on_a_gpu_follows_the_probe(monkeypatch, speedup, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(hardware, "bf16_matmul_speedup", lambda device, *a, **k: speedup)
    assert TrainConfig().resolved_precision(torch.device("cuda")) == expected


@pytest.mark.parametrize("speedup", [0.01, 5.7])
def test_auto_on_cpu_is_fp32_whatever_the_probe(monkeypatch, speedup):
    monkeypatch.setattr(hardware, "bf16_matmul_speedup", lambda device, *a, **k: speedup)
    assert TrainConfig().resolved_precision(torch.device("cpu")) == "fp32"


def test_an_explicit_precision_is_kept(monkeypatch):
    monkeypatch.setattr(hardware, "bf16_matmul_speedup", lambda device, *a, **k: 0.01)
    assert TrainConfig(precision="bf16").resolved_precision(torch.device("cpu")) == "bf16"
