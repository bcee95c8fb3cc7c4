"""The memory estimate against what torch really takes: for a grid of shapes (plain causal RoPE, learned
positions, ALiBi's float mask, a sliding window's bool mask, attention dropout's plain path, GQA with QK-norm;
training, a prompt's forward, generation's prefill with its cache, the attention-map view), the peak RSS a
forward (and backward) adds is measured in a fresh process and compared with the estimate: within 1.5x.

The child runs with glibc's mmap threshold pinned low, so every tensor's memory is returned to the system when
it is freed and the process's peak RSS (VmHWM, reset through /proc/self/clear_refs before each shape) follows
the tensors alive at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slm_blocks import ModelSpec, estimate, load_preset
from slm_blocks.model.memory import attention_memory, inference_extra_bytes

ROOT = Path(__file__).resolve().parents[2]


def spec(pos="rope", H=8, T=1024, L=2, d=64, hd=16, hidden=128, gated=False, norm="layernorm", window=None,
         attn_dropout=0.0, kv=None, qk_norm=False, V=256):
    attention = {"n_heads": H, "head_dim": hd, "dropout": attn_dropout, "qk_norm": qk_norm}
    if window:
        attention["sliding_window"] = window
    if kv:
        attention["n_kv_heads"] = kv
    return {"vocab_size": V, "d_model": d, "max_seq_len": T, "blocks": [
        {"type": "embedding"}, {"type": "positional", "kind": pos},
        {"type": "transformer", "repeat": L, "attention": attention, "norm": {"kind": norm},
         "mlp": {"hidden": hidden, "gated": gated, "activation": "silu" if gated else "gelu"}},
        {"type": "final_norm", "norm": {"kind": norm}}, {"type": "lm_head"}]}


# (name, spec, mode, batch, tokens): mode train = forward + backward, infer = the prompt's forward as
# /next_tokens runs it, generate = the prefill of generation with its cache, explain = attention maps kept
GRID = [
    ("learned positions", spec("learned", L=4), "train", 2, 1024),
    ("llama-like: RoPE, RMSNorm, SwiGLU", spec(norm="rmsnorm", gated=True, L=4), "train", 2, 1024),
    ("GQA + QK-norm", spec(H=16, kv=4, qk_norm=True, norm="rmsnorm", L=3), "train", 2, 1024),
    ("ALiBi, long context", spec("alibi", T=2048, L=1), "train", 4, 2048),
    ("ALiBi, many heads", spec("alibi", H=32, L=2), "train", 1, 1024),
    ("attention dropout", spec(attn_dropout=0.1), "train", 2, 1024),
    ("sliding window", spec("learned", T=2048, window=256), "train", 2, 2048),
    ("ALiBi prompt, 16 heads", spec("alibi", H=16, T=2048, L=2), "infer", 1, 2048),
    ("ALiBi generation prefill", spec("alibi", H=16, T=2048, L=2), "generate", 1, 2048),
    ("attention maps", spec(H=8, T=512, L=4), "explain", 1, 512),
    *[(f"{name} preset", {**load_preset(name).to_dict(), "vocab_size": 256}, "train", 4, 256)  # new mixers
      for name in ("mamba2", "lfm2", "mixtral")],
]

CHILD = r'''
import json, sys
import torch
from slm_blocks import ModelSpec, build_model
from slm_blocks.model.generation import SamplingConfig, next_token_distribution, stream_tokens

torch.set_num_threads(1)
torch.manual_seed(0)


def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024


for name, raw, mode, batch, tokens in json.loads(sys.argv[1]):
    spec = ModelSpec.from_dict(raw)
    model = build_model(spec)
    ids = torch.randint(0, spec.vocab_size, (batch, tokens))
    model.train(mode == "train")
    out = model(ids[:, :8], labels=ids[:, :8])  # warm up every kernel on a few tokens
    if mode == "train":
        out.loss.backward()
        model.zero_grad(set_to_none=True)
    del out
    base = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from now
    if mode == "train":
        model(ids, labels=ids).loss.backward()
    elif mode == "infer":
        next_token_distribution(model, ids[0].tolist())
    elif mode == "generate":
        next(stream_tokens(model, ids[0].tolist(), SamplingConfig(max_new_tokens=1, temperature=0)))
    else:
        with torch.inference_mode():
            model(ids, use_cache=False, output_attentions=True)
    print(json.dumps({"name": name, "bytes": status("VmHWM") - base}), flush=True)
    del model
'''


def estimated(raw: dict, mode: str, batch: int, tokens: int) -> int:
    s = ModelSpec.from_dict(raw)
    if mode == "train":
        e = estimate(s, batch_size=batch, seq_len=tokens)
        return e.train_grads_bytes + e.train_activations_bytes
    cache = s.max_seq_len if mode == "generate" else 0
    return inference_extra_bytes(s, tokens, explain=mode == "explain", cache_len=cache)


@pytest.fixture(scope="module")
def measured() -> dict:
    assert Path("/proc/self/clear_refs").exists(), "the peak RSS cannot be reset on this system"
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(GRID)], env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {r["name"]: r["bytes"] for r in rows}


@pytest.mark.parametrize("name, raw, mode, batch, tokens", GRID, ids=[g[0] for g in GRID])
def test_the_estimate_is_within_1_5x_of_the_measured_peak(measured, name, raw, mode, batch, tokens):
    est, real = estimated(raw, mode, batch, tokens), measured[name]
    assert real > 8 * 2**20, f"{name}: {real / 2**20:.1f} MiB is too small to compare"
    assert 1 / 1.5 <= est / real <= 1.5, f"{name}: estimated {est / 2**20:.0f} MiB, measured {real / 2**20:.0f} MiB"


def test_attention_scores_are_in_the_training_estimate():
    """The red team's admitted spec: 64 heads, a 4,096-token context, batch 8, ALiBi; the estimate must see the
    (1, 64, T, T) mask (and with attention dropout, 3 x (8, 64, T, T) per layer) and go far over any cap."""
    alibi = ModelSpec.from_dict(spec("alibi", H=64, T=4096, L=1, d=64, hd=1))
    e = estimate(alibi, batch_size=8, seq_len=4096)
    assert e.attention_bytes >= 64 * 4096 ** 2 * 4 and e.train_total_bytes > 4 * 2**30
    dropped = ModelSpec.from_dict(spec("learned", H=64, T=4096, L=1, d=64, hd=1, attn_dropout=0.1))
    assert estimate(dropped, batch_size=8, seq_len=4096).train_total_bytes >= 3 * 8 * 64 * 4096 ** 2 * 4
    assert attention_memory(alibi, 1, 64, "infer").peak(0) < attention_memory(alibi, 1, 4096, "infer").peak(0) / 1000
