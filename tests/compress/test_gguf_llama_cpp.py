"""Every native preset's GGUF (f16 and q8_0) in real llama.cpp (llama-cpp-python), when it is installed
(`python bench/bench_llama_cpp.py` builds it): the greedy text over the whole trained context equals ours on the
file's weights (for q8_0, up to a near tie that llama.cpp's 8-bit activations may break the other way), and a
request for 3x the context ends cleanly. llama.cpp runs in a child process: an abort inside it
(an out-of-range position, say) fails the test instead of killing pytest."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("llama_cpp")

from slm_blocks import build_model, load_preset  # noqa: E402
from slm_blocks.compress.gguf_export import rounded_model, write_gguf  # noqa: E402
from slm_blocks.model.generation import SamplingConfig, stream_tokens  # noqa: E402
from slm_blocks.training.tokenization import build_tokenizer  # noqa: E402

PRESETS = ["tiny-char", "gpt2", "llama", "mistral", "qwen3", "gemma3"]
TEXT = "ROMEO:\nWhat say you, sir? I will go with thee.\nJULIET: Ay, me! so on; (it's) [fine].\n" * 40
PROMPT = "ROMEO:\nWhat"
Q8_TIE = 0.1  # logit gap under which llama.cpp's 8-bit activations may pick the other token (q8_0 files)
ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys
from llama_cpp import Llama

path, prompt, n_new, eos = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=path, n_ctx=0, n_threads=1, verbose=False, seed=0)  # n_ctx 0: the file's own context
greedy = dict(temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
ids = llm.tokenize(prompt.encode(), add_bos=False, special=False)
out = []
for tok in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
    out.append(int(tok))
    if tok == eos or len(out) == n_new:
        break
llm.reset()
long = llm.create_completion(prompt, max_tokens=3 * n_new, logit_bias={eos: -1e9}, **greedy)
print(json.dumps({"ids": ids, "greedy": out, "n_ctx": llm.n_ctx(), "long_tokens": long["usage"]["completion_tokens"],
                  "long_finish": long["choices"][0]["finish_reason"]}))
"""


def _trained(name, tok):
    """The preset at the tokenizer's vocabulary, trained 60 steps on TEXT over its whole context: confident
    enough that llama.cpp's rounding of activations (8 bits inside q8_0 matmuls) cannot flip a greedy choice."""
    spec = load_preset(name).copy(vocab_size=len(tok))
    torch.manual_seed(0)
    model = build_model(spec, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    data = torch.tensor(tok(TEXT, add_special_tokens=False)["input_ids"])
    T = spec.max_seq_len
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        starts = torch.randint(0, len(data) - T, (8,))
        x = torch.stack([data[s: s + T] for s in starts.tolist()])
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("char", TEXT)


@pytest.fixture(scope="module")
def trained(tok):
    """name -> the trained preset, trained once for both quantizations."""
    models = {}

    def get(name):
        if name not in models:
            models[name] = _trained(name, tok)
        return models[name]
    return get


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
@pytest.mark.parametrize("name", PRESETS)
def test_llama_cpp_runs_every_preset_like_the_model(name, quant, tok, trained, tmp_path, one_thread):
    model = trained(name)
    path = tmp_path / f"{name}-{quant}.gguf"
    r = write_gguf(model, tok, path, quant)
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    n_new = r.context_length - len(ids)  # the whole trained context
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), PROMPT, str(n_new), str(tok.eos_token_id)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"llama.cpp exited {proc.returncode}:\n{proc.stderr[-2000:]}"
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["ids"] == ids
    ref = rounded_model(model, quant)
    ours = list(stream_tokens(ref, torch.tensor([ids]), SamplingConfig(max_new_tokens=n_new, temperature=0),
                              eos_token_id=tok.eos_token_id))
    differ = next((i for i, (a, b) in enumerate(zip(got["greedy"], ours)) if a != b), None)
    if differ is None:
        assert got["greedy"] == ours, (tok.decode(got["greedy"]), tok.decode(ours))
    else:  # q8_0 only: llama.cpp also rounds activations to 8 bits, which may flip a near tie (never a clear choice)
        with torch.no_grad():
            logits = ref(torch.tensor([ids + ours[:differ]])).logits[0, -1]
        margin = float(logits.max() - logits[got["greedy"][differ]])
        assert quant == "q8_0" and margin < Q8_TIE, (quant, differ, margin, tok.decode(got["greedy"]), tok.decode(ours))
    # 3x the trained context: llama.cpp's context is the file's rounded up to 256 (learned positions are padded
    # to that); the request ends there without an abort, every token produced
    assert got["n_ctx"] == -(-r.file_context // 256) * 256 and r.file_context >= r.context_length
    assert got["long_tokens"] == min(3 * n_new, got["n_ctx"] - len(ids)) and got["long_finish"] == "length", got
