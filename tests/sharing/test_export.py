"""Hugging Face export: every preset and two custom-code specs are trained a few steps, exported, and reloaded
in ONE fresh, isolated Python process (no slm_blocks on its path) through the Auto classes and a
text-generation pipeline; logits and greedy continuations must match the trained model. Plus the folder's
contents, the model card, the safety of the write (refusals, failed verification) and the CLI."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import EXPORT_GREEDY, EXPORT_PROMPT, export_specs
from slm_blocks import ModelSpec
from slm_blocks.model.estimate import human
from slm_blocks.sharing.export import LOGIT_TOLERANCE, ExportError, export_hf, read_result
from slm_blocks.training.tokenization import load_tokenizer

NAMES = list(export_specs())
CUSTOM = ["alibi", "free-order"]
REPO = Path(__file__).resolve().parents[2]

# Run with `python -I` in an empty folder: only what a user of the exported folder would have.
CHECKER = r'''
import json, sys, traceback
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, pipeline

torch.set_num_threads(1)
report = {}
jobs = json.load(open(sys.argv[1]))
for job in jobs:  # first, before any remote code is registered in this process: without
    info = report.setdefault(job["name"], {})  # trust_remote_code a custom export must be refused
    if job["remote_code"]:
        try:
            AutoModelForCausalLM.from_pretrained(job["dir"])
            info["loaded_without_trust"] = True
        except Exception as e:
            info["loaded_without_trust"] = False
            info["refusal"] = str(e)[:300]
for job in jobs:
    info = report[job["name"]]
    try:
        folder, rc = job["dir"], job["remote_code"]
        extra = {"trust_remote_code": True} if rc else {}  # ONLY for our own custom-code exports
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **extra).eval()
        tok = AutoTokenizer.from_pretrained(folder)
        refs = load_file(job["refs"])
        prompt = torch.tensor([tok(job["prompt"], add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = model(refs["ids"], use_cache=False).logits.float()
            greedy = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=job["n"],
                                    min_new_tokens=job["n"], do_sample=False, pad_token_id=tok.pad_token_id)
        pipe = pipeline("text-generation", model=folder, **extra)
        text = pipe(job["prompt"], max_new_tokens=8, do_sample=False)[0]["generated_text"]
        save_file({"logits": logits.contiguous(), "greedy": greedy.contiguous(), "prompt": prompt}, job["out"])
        info.update(model_class=type(model).__name__, fast_tokenizer=isinstance(tok, PreTrainedTokenizerFast),
                    pipeline_model_class=type(pipe.model).__name__, pipeline_text=text)
    except Exception:
        info["error"] = traceback.format_exc()[-3000:]
info_mods = sorted(m for m in sys.modules if m == "slm_blocks" or m.startswith("slm_blocks."))
json.dump({"jobs": report, "slm_blocks_modules": info_mods}, open(sys.argv[2], "w"))
'''


@pytest.fixture(scope="module")
def exports(trained_exports):
    return trained_exports


@pytest.fixture(scope="module")
def reloaded(exports, tmp_path_factory):
    """One fresh process reloads every export; returns (report, {name: outputs})."""
    d = tmp_path_factory.mktemp("reload")
    (d / "check.py").write_text(CHECKER)
    jobs = [{"name": e.name, "dir": str(e.out_dir), "remote_code": e.custom, "refs": str(e.refs),
             "prompt": EXPORT_PROMPT, "n": EXPORT_GREEDY, "out": str(d / f"{e.name}.safetensors")}
            for e in exports.values()]
    (d / "jobs.json").write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(d / "modules"))
    proc = subprocess.run([sys.executable, "-I", str(d / "check.py"), str(d / "jobs.json"), str(d / "report.json")],
                          cwd=d, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((d / "report.json").read_text())
    outputs = {n: load_file(d / f"{n}.safetensors") for n in report["jobs"] if (d / f"{n}.safetensors").is_file()}
    return report, outputs


# ----------------------------------------------------------------------------- reload in transformers


def test_fresh_process_never_imported_slm_blocks(reloaded):
    report, _ = reloaded
    assert report["slm_blocks_modules"] == [], "the reload must rely on the exported folder alone"


@pytest.mark.parametrize("name", NAMES)
def test_export_reloads_with_auto_classes_and_pipeline(name, exports, reloaded):
    e, (report, outputs) = exports[name], reloaded
    info = report["jobs"][name]
    assert "error" not in info, info.get("error")
    assert info["model_class"] == e.expected_class == info["pipeline_model_class"]
    assert info["fast_tokenizer"] is True  # transformers 5 names the class TokenizersBackend
    if e.custom:
        assert info["loaded_without_trust"] is False, "custom code must need trust_remote_code=True"
        assert "contains custom code" in info["refusal"]
    refs, got = load_file(e.refs), outputs[name]
    torch.testing.assert_close(got["prompt"], refs["prompt"], rtol=0, atol=0)  # same tokenizer
    diff = float((got["logits"] - refs["logits"]).abs().max())
    assert diff <= 1e-4, f"max |Δlogits| {diff:.2e}"
    assert got["greedy"].shape[1] == refs["prompt"].shape[1] + EXPORT_GREEDY
    assert torch.equal(got["greedy"], refs["greedy"]), "32-token greedy continuation differs"
    tok = load_tokenizer(e.out_dir)
    expected_text = EXPORT_PROMPT + tok.decode(refs["short"][0, refs["prompt"].shape[1]:], skip_special_tokens=True)
    assert info["pipeline_text"] == expected_text


@pytest.mark.parametrize("name", NAMES)
def test_export_result(name, exports):
    e = exports[name]
    r = e.result
    assert r.model_class == e.expected_class
    assert r.native is (not e.custom)
    assert (r.why_not_native == "") is (not e.custom)
    assert r.verified and r.greedy_match and 0 <= r.max_abs_diff <= LOGIT_TOLERANCE
    assert Path(r.out_dir) == e.out_dir
    assert read_result(e.out_dir) == r.to_dict()


# ----------------------------------------------------------------------------- the folder


@pytest.mark.parametrize("name", NAMES)
def test_always_present_files(name, exports):
    e = exports[name]
    out = e.out_dir
    for f in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
              "tokenizer_config.json", "slm_spec.json", "README.md"):
        assert (out / f).is_file(), f
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    gen = json.loads((out / "generation_config.json").read_text())
    run_tok = load_tokenizer(e.run_dir / "tokenizer")
    assert gen["eos_token_id"] == run_tok.eos_token_id is not None
    assert gen["pad_token_id"] == run_tok.pad_token_id is not None
    assert gen["do_sample"] is True and gen["temperature"] == 0.8 and gen["top_k"] == 50
    assert 0 < gen["max_new_tokens"] <= 200
    spec = ModelSpec.from_json((out / "slm_spec.json").read_text())
    run_spec = ModelSpec.from_dict(json.loads((e.run_dir / "run.json").read_text())["spec"])
    assert spec == run_spec
    assert spec.vocab_size == len(run_tok)
    weights = load_file(out / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())
    pickles = [p.name for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")]
    assert pickles == []
    assert not (out / "pytorch_model.bin").exists()


@pytest.mark.parametrize("name", NAMES)
def test_native_or_custom_code_files(name, exports):
    e = exports[name]
    cfg = json.loads((e.out_dir / "config.json").read_text())
    assert cfg["architectures"] == [e.expected_class]
    py = sorted(p.name for p in e.out_dir.glob("*.py"))
    card = (e.out_dir / "README.md").read_text()
    if e.custom:
        assert cfg["model_type"] == "slm_blocks"
        assert cfg["auto_map"] == {"AutoConfig": "modeling.SLMConfig", "AutoModelForCausalLM": "modeling.SLMForCausalLM"}
        assert "modeling.py" in py
        for f in py:  # every relative import of the copied files is itself copied
            for node in ast.walk(ast.parse((e.out_dir / f).read_text())):
                if isinstance(node, ast.ImportFrom) and node.level:
                    for module in [node.module] if node.module else [a.name for a in node.names]:
                        assert (e.out_dir / f"{module}.py").is_file(), f"{f} imports missing .{module}"
        assert "trust_remote_code=True" in card
        assert e.result.why_not_native and e.result.why_not_native in card
        assert {"alibi": "ALiBi", "free-order": "free layer order"}[name] in e.result.why_not_native
        assert "custom_code" in card
    else:
        assert "auto_map" not in cfg and py == [], "a native export must carry no code"
        assert "trust_remote_code" not in card
        assert "native transformers class, no remote code" in card


# ----------------------------------------------------------------------------- the model card


@pytest.mark.parametrize("name", NAMES)
def test_model_card(name, exports):
    from huggingface_hub import ModelCard

    e = exports[name]
    path = e.out_dir / "README.md"
    text = path.read_text()
    meta = ModelCard.load(path).data.to_dict()
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-generation"
    assert meta["license"]
    assert "slm-blocks" in meta["tags"] and "text-generation" in meta["tags"]
    spec = ModelSpec.from_json((e.out_dir / "slm_spec.json").read_text())
    # architecture table: one row per block, with the block's own description
    assert "| # | block | what it is | settings |" in text
    for i, (name, details) in enumerate(spec.describe()):
        assert f"| {i} | {name} | {details or '—'} |" in text
    # parameter count: the real number of (unique) parameters of the trained model
    from slm_blocks.training.run import open_run

    model = open_run(e.run_dir, load_data=False).load_model()
    assert f"{human(sum(p.numel() for p in model.parameters()))} parameters" in text
    # training data, hyperparameters and final metrics from the run
    run = json.loads((e.run_dir / "run.json").read_text())
    t = run["train"]
    assert "1 local file(s)" in text or "built-in" in text
    assert f"tokenizer: {run['tokenizer']['kind']}" in text
    assert f"Steps {t['max_steps']}, batch {t['batch_size']}×{spec.max_seq_len}" in text
    cfg = open_run(e.run_dir, load_data=False).train_config  # empty settings appear resolved, never "None"
    assert f"lr {cfg.peak_lr():g} (warmup {cfg.warmup()}," in text and f"seed {t['seed']}" in text
    assert "None" not in text.split("## Training")[1].split("##")[0], text
    evals = [json.loads(line) for line in (e.run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert f"Final validation loss {evals[-1]['val_loss']:.4f}" in text
    assert (e.out_dir / "loss.png").is_file() and (e.out_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "(loss.png)" in text
    # a usage snippet and the verification result
    assert "```python" in text and "AutoModelForCausalLM.from_pretrained(" in text and 'pipeline("text-generation"' in text
    assert f"max |Δlogits| = {e.result.max_abs_diff:.2e}" in text
    assert "greedy continuation identical" in text


# ----------------------------------------------------------------------------- safety of the write


@pytest.fixture(scope="module")
def small(exports):
    """The trained tiny-char model and its tokenizer (no new training)."""
    from slm_blocks.training.run import open_run

    run = open_run(exports["tiny-char"].run_dir, load_data=False)
    return run.load_model(), run.tokenizer


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _no_verify(monkeypatch, result=(0.0, True)):
    calls = []

    def fake(model, out, remote_code, **kw):
        calls.append(sorted(p.name for p in Path(out).iterdir()))
        if isinstance(result, Exception):
            raise result
        return result

    monkeypatch.setattr("slm_blocks.sharing.export._verify", fake)
    return calls


def test_non_empty_target_is_refused_and_untouched(small, tmp_path, monkeypatch):
    calls = _no_verify(monkeypatch)
    out = tmp_path / "target"
    (out / "sub").mkdir(parents=True)
    (out / "keep.txt").write_text("precious")
    (out / "sub" / "model.safetensors").write_bytes(b"old weights")
    before = _snapshot(tmp_path)
    with pytest.raises(ExportError, match="not empty"):
        export_hf(*small, out)
    assert _snapshot(tmp_path) == before
    assert calls == []


def test_overwrite_replaces_a_non_empty_target(small, tmp_path, monkeypatch):
    calls = _no_verify(monkeypatch)
    out = tmp_path / "target"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    r = export_hf(*small, out, overwrite=True)
    assert r.verified and len(calls) == 1 and "model.safetensors" in calls[0]
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]  # no temp folder left


def test_empty_existing_target_is_fine(small, tmp_path, monkeypatch):
    _no_verify(monkeypatch)
    out = tmp_path / "empty"
    out.mkdir()
    assert export_hf(*small, out).verified
    assert (out / "config.json").is_file()


@pytest.mark.parametrize("outcome", [(0.5, True), (float("nan"), True), (0.0, False),
                                     ExportError("the exported folder did not load in transformers: boom")],
                         ids=["big-diff", "nan-diff", "greedy-differs", "load-failed"])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "overwrite"])
def test_failed_verification_writes_nothing(small, tmp_path, monkeypatch, outcome, existing):
    _no_verify(monkeypatch, outcome)
    out = tmp_path / "target"
    if existing:
        out.mkdir()
        (out / "keep.txt").write_text("previous export")
    before = _snapshot(tmp_path)
    with pytest.raises(ExportError) as info:
        export_hf(*small, out, overwrite=existing)
    assert _snapshot(tmp_path) == before, "a failed export must leave the target and its parent as they were"
    assert "Traceback" not in str(info.value)
    if not isinstance(outcome, Exception):
        assert "nothing was written" in str(info.value)


def test_verification_subprocess_failure_raises(small, tmp_path, monkeypatch):
    """The real _verify, with a Python that cannot run: a clear ExportError, nothing written."""
    monkeypatch.setattr(sys, "executable", "/bin/false")
    out = tmp_path / "target"
    with pytest.raises(ExportError, match="did not load in transformers"):
        export_hf(*small, out)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- CLI


def _cli(*args, **env_over):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_over}
    return subprocess.run([sys.executable, "-m", "slm_blocks", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_export(exports, tmp_path):
    out = tmp_path / "cli-export"
    proc = _cli("export", str(exports["tiny-char"].run_dir), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "GPT2LMHeadModel" in proc.stdout and "native transformers class" in proc.stdout
    assert "verified in a fresh process" in proc.stdout and "max |Δlogits|" in proc.stdout
    assert "identical" in proc.stdout
    assert read_result(out)["verified"] is True
    # same weights as the library export of the same run
    a, b = load_file(out / "model.safetensors"), load_file(exports["tiny-char"].out_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a second export into the now non-empty folder: refused with a message, exit 2, no traceback
    again = _cli("export", str(exports["tiny-char"].run_dir), "--out", str(out))
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr


def test_cli_export_of_a_non_run(tmp_path):
    proc = _cli("export", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "not a run directory" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
