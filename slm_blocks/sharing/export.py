"""Export a trained model as a Hugging Face checkpoint, and prove it loads with identical outputs.

A native transformers class is used whenever the blocks match one (GPT-2, Llama, Mistral, Qwen3,
Gemma 3: no remote code); otherwise the folder carries our own modeling files (`auto_map`, loadable with
`trust_remote_code=True`) and the model card says why. Export never fails where custom code can represent the
model: when a native mapping or its verification fails, the custom-code export is written instead, with the
reason in the card. Every export is reloaded in a fresh Python process
through the Auto classes and compared with the trained model (logits and a greedy continuation) before it
is reported done; the folder is assembled under a temporary name and only renamed into place once verified.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import GenerationConfig

from .native import native_family, to_native
from ..training.tokenization import save_tokenizer, token_ids

LOGIT_TOLERANCE = 1e-4  # fp32
GREEDY_TOKENS = 32
FAMILY_NAMES = {"gpt2": "GPT-2", "llama": "Llama", "mistral": "Mistral", "qwen3": "Qwen3", "gemma3": "Gemma 3",
                "mixtral": "Mixtral", "qwen3_moe": "Qwen3-MoE", "mamba2": "Mamba2", "lfm2": "LFM2", "bamba": "Bamba"}
log = logging.getLogger("slm_blocks.export")


class ExportError(RuntimeError):
    """An export that could not be written or did not verify; nothing was published at the target."""


@dataclass
class ExportResult:
    out_dir: str
    model_class: str  # e.g. "LlamaForCausalLM" or "SLMForCausalLM"
    native: bool  # True: a built-in transformers class, no remote code
    why_not_native: str  # plain-words reason when native is False
    max_abs_diff: float  # max |Δlogits| between the trained model and the reloaded export
    greedy_match: bool  # identical 32-token greedy continuation
    verified: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _save_custom(model, tmp: Path) -> None:
    """Our own model class with its modeling code next to the weights (auto_map in config.json)."""
    model.config.auto_map = {"AutoConfig": "modeling.SLMConfig", "AutoModelForCausalLM": "modeling.SLMForCausalLM"}
    model.save_pretrained(tmp, safe_serialization=True)
    for name, text in modeling_code().items():
        (tmp / name).write_text(text, encoding="utf-8")


MODEL_DIR = Path(__file__).resolve().parents[1] / "model"


def modeling_code() -> dict[str, str]:
    """The files `trust_remote_code` loads, flat: modeling.py and every module it imports relatively, from
    slm_blocks/model/ and its blocks/ package.

    transformers copies a remote class's module and the files it names with `from .x import` into one flat
    folder, so a subpackage cannot travel as it is: `from .blocks.attention import` becomes `from .attention
    import`, `from ..fields import` becomes `from .fields import`, blocks/__init__.py becomes blocks.py, and its
    `from . import attention, ...` (which names no file to the copier) gets a `from .attention import TYPE` line per
    module, so the loader copies each block module too."""
    files, todo = {}, [MODEL_DIR / "modeling.py"]
    while todo:
        path = todo.pop()
        flat = "blocks.py" if path.name == "__init__.py" else path.name
        if flat in files:
            continue
        text = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = path.parent if node.level == 1 else path.parent.parent
                target = base.joinpath(*(node.module or "").split(".")) if node.module else base
                names = [target / f"{a.name}.py" for a in node.names] if not node.module else []
                todo += [p for p in names if p.is_file()] or \
                    [target / "__init__.py" if target.is_dir() else target.with_suffix(".py")]
        text = re.sub(r"^(\s*)from \.\.?(?:blocks\.)?(\w+) import", r"\1from .\2 import", text, flags=re.M)
        text = re.sub(r"^from \. import (.+)$", lambda m: "".join(
            f"from .{n.strip()} import TYPE as _{n.strip()}_type  # noqa: F401 (names the file for the copier)\n"
            for n in m.group(1).split(",")) + m.group(0), text, flags=re.M)
        files[flat] = text
    return files


def _verify(model, out: Path, remote_code: bool, eos_token_id=None) -> tuple[float, bool]:
    """Reload `out` in a fresh process via the Auto classes; compare logits and greedy continuations. The export's
    generation config names the end-of-text token, which min_new_tokens keeps from being chosen: the reference
    generation is told the same token (else a model whose greedy pick is that token continues differently)."""
    spec = model.config.model_spec()
    ids = torch.randint(0, spec.vocab_size, (2, min(32, spec.max_seq_len)), generator=torch.Generator().manual_seed(0))
    prompt = ids[:1, : max(1, min(8, spec.max_seq_len - GREEDY_TOKENS))]
    n_new = min(GREEDY_TOKENS, spec.max_seq_len - prompt.shape[1])
    with tempfile.TemporaryDirectory(prefix="slm-verify-") as d:
        save_file({"ids": ids.clone(), "prompt": prompt.clone()}, Path(d) / "inputs.safetensors")
        cmd = [sys.executable, "-m", "slm_blocks.sharing.verify", str(out), str(Path(d) / "inputs.safetensors"),
               str(Path(d) / "outputs.safetensors"), str(n_new)] + (["--remote-code"] if remote_code else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              cwd=str(Path(__file__).resolve().parents[2]))
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"
            raise ExportError(f"the exported folder did not load in transformers: {tail}")
        got = load_file(Path(d) / "outputs.safetensors")
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits.float()
        ref_greedy = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_new,
                                    min_new_tokens=n_new, do_sample=False, pad_token_id=0, eos_token_id=eos_token_id)
    diff = float((got["logits"] - ref).abs().max())
    return diff, torch.equal(got["greedy"], ref_greedy)


def export_hf(model, tokenizer, out_dir: str | Path, *, card: dict | None = None, overwrite: bool = False,
              verify: bool = True) -> ExportResult:
    """Write `model` (an SLMForCausalLM) + tokenizer as a Hugging Face folder at out_dir; see module doc.

    card: facts for the model card (dataset, training settings, metrics, history, license, ...)."""
    from .card import write_model_card

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} is not empty; choose another folder or allow overwriting")
    model = model.float().eval()
    spec = model.config.model_spec()
    family, why = native_family(spec)
    ids = token_ids(tokenizer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-export-", dir=out.parent))

    def write(fam: str | None) -> tuple[str, float, bool]:
        """Write the folder with the native class of `fam` (None: our own class) and verify it."""
        for child in tmp.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        if fam:
            native = to_native(model, **ids)
            native.save_pretrained(tmp, safe_serialization=True)
            cls = type(native).__name__
        else:
            for k, v in ids.items():
                setattr(model.config, k, v)
            _save_custom(model, tmp)
            cls = type(model).__name__
        GenerationConfig(**ids, do_sample=True, temperature=0.8, top_k=50,
                         max_new_tokens=min(200, spec.max_seq_len)).save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        (tmp / "slm_spec.json").write_text(spec.to_json())
        d, g = _verify(model, tmp, remote_code=fam is None, eos_token_id=ids.get("eos_token_id")) if verify \
            else (float("nan"), False)
        return cls, d, g

    try:
        model_class = None
        if family:  # a native class; when its mapping or its verification fails, custom code says why
            try:
                model_class, diff, greedy = write(family)
                if verify and not (diff <= LOGIT_TOLERANCE and greedy):
                    raise ExportError(f"its reloaded logits differ by {diff:.2e}"
                                      + ("" if greedy else " and its greedy continuation differs"))
            except (ValueError, RuntimeError) as e:  # ExportError is a RuntimeError
                why = (f"the native {FAMILY_NAMES.get(family, family)} export did not reproduce this model "
                       f"({str(e)[:200]})")
                log.warning("native %s export failed, falling back to custom code: %s", family, str(e)[:500])
                family, model_class = None, None
        if model_class is None:
            model_class, diff, greedy = write(None)
        ok = verify and diff <= LOGIT_TOLERANCE and greedy
        result = ExportResult(str(out), model_class, family is not None, why, diff, greedy, ok)
        write_model_card(tmp, spec, result, card or {})
        (tmp / "export_result.json").write_text(json.dumps(result.to_dict(), indent=2))
        if verify and not ok:
            raise ExportError(f"the reloaded export differs from the trained model (max |Δlogits| {diff:.2e}, "
                              f"greedy continuation {'identical' if greedy else 'different'}); nothing was written")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_run(run_dir: str | Path, out_dir: str | Path, **kw) -> ExportResult:
    """Export a run folder's latest checkpoint, with its data, settings and loss history in the card."""
    from ..model.estimate import estimate
    from ..training.run import open_run

    run = open_run(run_dir, load_data=False)
    model = run.load_model()
    history = run.history()
    evals = [r for r in history if r["kind"] == "eval"]
    card = {"dataset": run.data_config.hub_id if run.data_config.source == "hub" else None,
            "data": run.data_config.to_dict(), "tokenizer": run.tokenizer_config.to_dict(),
            "train": run.train_config.to_dict(), "history": history, "final": evals[-1] if evals else None,
            "params": estimate(run.spec).params, "run_name": Path(run_dir).name, **kw.pop("card", {})}
    return export_hf(model, run.tokenizer, out_dir, card=card, **kw)


def read_result(out_dir: str | Path) -> dict | None:
    path = Path(out_dir) / "export_result.json"
    return json.loads(path.read_text()) if path.is_file() else None
