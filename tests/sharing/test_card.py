"""The model card: its usage snippet runs as written (folder path filled in) in a fresh, isolated process for
every preset's export, and its architecture table lists only the settings that apply."""

import json
import os
import re
import subprocess
import sys


from slm_blocks import load_preset
from slm_blocks.model.fields import applicable as applicable_settings

# Run with `python -I` in an empty folder: each card's first python block, exactly as written except for the
# folder, in its own namespace; what it printed or the error comes back per export.
RUNNER = r'''
import contextlib, io, json, sys, traceback
import torch
torch.set_num_threads(1)
report = {}
for job in json.load(open(sys.argv[1])):
    out = io.StringIO()
    torch.manual_seed(0)  # the cards sample (do_sample): unseeded, a short-trained model now and then ends at once
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(job["code"], job["name"] + "/README.md", "exec"), {"__name__": "__main__"})
        report[job["name"]] = {"printed": out.getvalue()}
    except BaseException:
        report[job["name"]] = {"error": traceback.format_exc()[-2000:]}
json.dump(report, open(sys.argv[2], "w"))
'''


def usage_code(readme: str) -> str:
    """The first ```python block after '## Use it'."""
    m = re.search(r"## Use it\s+```python\n(.*?)```", readme, re.S)
    assert m, "the card has no usage snippet"
    return m.group(1)


def test_usage_snippet_runs_as_written_for_every_export(trained_exports, tmp_path):
    jobs = []
    for e in trained_exports.values():
        code = usage_code((e.out_dir / "README.md").read_text())
        assert code.count("REPO_OR_FOLDER") == 2, code
        jobs.append({"name": e.name, "code": code.replace("REPO_OR_FOLDER", str(e.out_dir))})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "run.py").write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    proc = subprocess.run([sys.executable, "-I", "run.py", "jobs.json", "report.json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) == set(trained_exports)
    failed = {name: r["error"] for name, r in report.items() if "error" in r}
    assert not failed, failed
    for name, r in report.items():
        assert r["printed"].startswith("Once upon a time") and len(r["printed"]) > len("Once upon a time\n"), \
            (name, r["printed"])


def test_usage_snippet_fits_the_context(trained_exports):
    """prompt + new tokens never exceed the context (tiny-char: 64 tokens; asking for 100 crashed)."""
    e = trained_exports["tiny-char"]
    code = usage_code((e.out_dir / "README.md").read_text())
    n = int(re.search(r"max_new_tokens=(\d+)", code).group(1))
    assert n + len("Once upon a time") <= 64, code
    assert "at most 64 tokens" in code


def test_only_settings_that_apply():
    learned = load_preset("tiny-char").blocks[1]
    assert learned.kind == "learned" and "rope_theta" not in applicable_settings(learned)
    rope = load_preset("gemma3").blocks[1]
    assert {"rope_theta", "local_rope_theta"} <= set(applicable_settings(rope))
    llama_layer = applicable_settings(load_preset("llama").blocks[2])
    assert "norm.bias" not in llama_layer and "attention.head_dim" not in llama_layer  # RMSNorm; empty = default
    assert llama_layer["attention.n_kv_heads"] == 2
    gpt2_layer = applicable_settings(load_preset("gpt2").blocks[2])
    assert gpt2_layer["norm.bias"] is True


def test_a_stopped_run_says_how_many_steps_it_trained(tmp_path):
    from types import SimpleNamespace

    from slm_blocks.sharing.card import write_model_card

    result = SimpleNamespace(native=True, model_class="GPT2LMHeadModel", why_not_native=None, max_abs_diff=0.0,
                             greedy_match=True)
    train = {"max_steps": 2000, "batch_size": 4, "seq_len": None, "lr": 1e-3, "warmup_steps": 5,
             "weight_decay": 0.1, "grad_clip": 1.0, "seed": 1}
    history = [{"kind": "step", "step": s, "loss": 3.0} for s in (1, 2, 40)]
    write_model_card(tmp_path, load_preset("tiny-char"), result, {"train": train, "history": history})
    text = (tmp_path / "README.md").read_text()
    assert "Steps 40 of 2000 planned, batch 4×64" in text


def test_mixers_say_what_a_token_uses_and_what_generation_keeps(tmp_path):
    from types import SimpleNamespace

    from slm_blocks import estimate
    from slm_blocks.model.estimate import human
    from slm_blocks.sharing.card import write_model_card

    result = SimpleNamespace(native=True, model_class="BambaForCausalLM", why_not_native=None, max_abs_diff=0.0,
                             greedy_match=True)
    for name, words in (("mixtral", "Mixture of experts"), ("bamba", "fixed state"), ("mamba2", "no KV cache"),
                        ("llama", None)):
        spec = load_preset(name)
        write_model_card(tmp_path, spec, result, {})
        text = (tmp_path / "README.md").read_text()
        if words is None:
            assert "Mixture of experts" not in text and "fixed state" not in text
            continue
        assert words in text, name
        e = estimate(spec)
        assert human(e.active_params if name == "mixtral" else e.state_bytes_per_sequence,
                     *(() if name == "mixtral" else ("B",))) in text
