"""The exported model's README.md: Hub metadata plus what a reader needs to trust and use the model."""

from __future__ import annotations

import math
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from ..model.estimate import estimate, human
from ..model.fields import applicable
from ..model.spec import ModelSpec


def _architecture_table(spec: ModelSpec) -> str:
    rows = ["| # | block | what it is | settings |", "|---|---|---|---|"]
    for i, (b, (name, details)) in enumerate(zip(spec.blocks, spec.describe())):
        settings = ", ".join(f"{k}={v}" for k, v in applicable(b).items())
        rows.append(f"| {i} | {name} | {details or '—'} | {settings or '—'} |")
    return "\n".join(rows)


def usage_prompt(card: dict) -> str:
    """A prompt in the language of the training data (digits for the built-in addition set)."""
    data = card.get("data") or {}
    return "12+34=" if data.get("source") == "builtin" and data.get("name") == "addition" else "Once upon a time"


def usage_new_tokens(spec: ModelSpec) -> int:
    """New tokens the usage example asks for: at most 100, and prompt + new tokens within the context (a
    64-token context with learned positions has no position for token 65: asking for more crashed)."""
    return max(1, min(100, spec.max_seq_len - 24))


def _loss_plot(history: list[dict], path: Path) -> bool:
    steps = [(r["step"], r["loss"]) for r in history if r["kind"] == "step"]
    evals = [(r["step"], r["val_loss"]) for r in history if r["kind"] == "eval"]
    if not steps:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(*zip(*steps), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _weights_lines(result, quant: dict | None) -> list[str]:
    if not quant:
        return [f"- Verified at export: reloaded in a fresh process, max |Δlogits| = {result.max_abs_diff:.2e} "
                f"(fp32, tolerance 1e-4); 32-token greedy continuation "
                f"{'identical' if result.greedy_match else 'DIFFERENT'}."]
    group = f"groups of {quant['group_size']} weights" if quant.get("group_size") else "one scale per output row"
    return [f"- Weights: **{quant['weights']}** weight-only ({group}) with torchao; embeddings, norms and the LM head "
            "stay fp32. `config.json` carries the `quantization_config` (TorchAoConfig), so `from_pretrained` needs "
            "only `pip install torchao`.",
            f"- Verified at export: reloaded in a fresh process, max |Δlogits| = {result.max_abs_diff:.2e} against "
            f"the same {quant['weights']} model in SLM Blocks; 32-token greedy continuation "
            f"{'identical' if result.greedy_match else 'DIFFERENT'}."]


def _serve_lines(result, remote: str) -> list[str]:
    """How to serve the folder behind an OpenAI-style HTTP API (a completion model: no chat template)."""
    flag = " --trust-remote-code" if remote else ""
    lines = ["## Serve it", "", "```bash", "# transformers' own server (pip install \"transformers[serving]\")",
             f"transformers serve REPO_OR_FOLDER{flag} --port 8000", "curl localhost:8000/v1/completions -H "
             "'Content-Type: application/json' -d '{\"model\": \"REPO_OR_FOLDER\", \"prompt\": \"Once upon a "
             "time\", \"max_tokens\": 100}'"]
    if result.native:
        lines += ["# vLLM (a GPU machine), same API", "vllm serve REPO_OR_FOLDER"]
    lines += ["```", "", "For llama.cpp and Ollama, export a GGUF file: `python -m slm_blocks export RUN --format gguf "
              "--out FOLDER` (or the Share tab's *Quantize & deploy*).", ""]
    return lines


def _past_context(spec: ModelSpec, result) -> list[str]:
    """What a GGUF runtime does with more tokens than the model was trained on (gguf_export.context_length and
    llama_cpp_positions decide it; this says it)."""
    n = result.context_length
    file_ctx = getattr(result, "file_context", 0) or n
    learned = any(getattr(b, "kind", None) == "learned" for b in spec.blocks)
    capped = "" if n == spec.max_seq_len else f" (the sliding window: the model's context is {spec.max_seq_len})"
    lines = [f"llama.cpp computes exactly this model for {n} tokens{capped}, prompt and output together. SLM Blocks' "
             f"own `generate` goes past its context by re-reading the last {max(1, spec.max_seq_len // 2)} tokens "
             "from position 0; llama.cpp keeps every token in its cache instead:", ""]
    if learned and file_ctx > n:
        lines.append(f"- Learned positions exist for {n} positions; the file holds {file_ctx} (llama.cpp's smallest "
                     f"context), position p past {n - 1} reading the embedding of position p mod {n}. Up to {n} "
                     "tokens llama.cpp computes exactly this model; past that it runs where the model was never "
                     "trained, and text degrades.")
    elif learned:
        lines.append(f"- Learned positions exist for the {n} trained positions.")
    elif capped:
        lines.append(f"- Past {n} tokens llama.cpp attends to every earlier token, where the model attends to its "
                     f"last {n} (llama.cpp's {result.arch} has no sliding window): text drifts from ours.")
    else:
        lines.append(f"- RoPE positions continue past {n}, where the model was never trained: text degrades.")
    llama_ctx = -(-file_ctx // 256) * 256  # llama.cpp rounds its context up to a multiple of 256
    lines += [f"- llama.cpp's default context is {llama_ctx} tokens (the file's {file_ctx}"
              + ("" if llama_ctx == file_ctx else ", rounded up to 256 as llama.cpp does")
              + "): generation ends there (finish reason `length`); `--context-shift` (llama-completion) slides "
              "the window instead."
              + (f" Never give a larger `-c` / `n_ctx`: llama.cpp has no position past {file_ctx - 1} and aborts."
                 if learned else ""),
              f"- Ollama: the Modelfile's `num_ctx {n}` makes Ollama slide its window within the first {n} "
              "positions when the text grows longer."]
    return lines


def write_gguf_card(folder: Path, spec: ModelSpec, result, card: dict) -> None:
    """README.md of a GGUF export folder: what the file holds and how to run it with llama.cpp and Ollama."""
    name = card.get("run_name") or spec.name or "slm-blocks-model"
    data = ModelCardData(license=card.get("license", "apache-2.0"), pipeline_tag="text-generation",
                         tags=["slm-blocks", "gguf", "llama.cpp", "small-language-model"])
    f = result.file
    file_ctx = getattr(result, "file_context", 0) or result.context_length
    final = card.get("final") or {}
    verified = (f"Verified at export: read back by transformers' GGUF loader in a fresh process, max |Δlogits| = "
                f"{result.max_abs_diff:.2e} against the same model with the file's rounded weights; 32-token greedy "
                f"continuation {'identical' if result.greedy_match else 'DIFFERENT'}; tokenizer "
                f"{'identical' if result.tokenizer_match else 'DIFFERENT'}.") if result.verified else \
        "Not verified at export."
    lines = [
        f"# {name} (GGUF, {result.quant})", "",
        f"A small language model built with SLM Blocks ({human(card.get('params') or estimate(spec).params)} "
        f"parameters, `{spec.summary()}`), as one GGUF file for llama.cpp, Ollama and other GGUF runtimes.", "",
        f"- File: `{f}` — llama.cpp architecture `{result.arch}`, weights {result.quant} (tensor types: "
        + ", ".join(f"{k} ×{v}" for k, v in result.tensor_types.items()) + f"), context {result.context_length} "
        "tokens, tokenizer inside (byte-level BPE, no BOS added).",
        f"- {verified}",
        *[f"- Note: {n}." for n in result.notes],
        *([f"- Validation loss of the trained model: {final['val_loss']:.4f} ({final['bits_per_char']:.3f} bits per "
           "character)."] if final else []), "",
        "## llama.cpp", "", "```bash",
        f'llama-completion -m {f} -p "ROMEO:" -n 200 --temp 0.8 -no-cnv   # completion, no chat template',
        f"llama-server -m {f} --port 8080                                 # OpenAI-style /v1/completions", "```",
        "", "(`llama-completion` was called `llama-cli` in llama.cpp releases before the chat-only `llama-cli`.)", "",
        "From Python (`pip install llama-cpp-python`):", "", "```python", "from llama_cpp import Llama",
        f'llm = Llama(model_path="{f}", n_ctx=0)  # 0: the file\'s context ({file_ctx} tokens)',
        'print(llm("ROMEO:", max_tokens=200, temperature=0.8)["choices"][0]["text"])', "```", "",
        "### Past the trained context", "", *_past_context(spec, result), "",
        "## Ollama", "", "The `Modelfile` next to the file:", "", "```bash",
        f"ollama create {Path(f).stem.lower()} -f Modelfile", f'ollama run {Path(f).stem.lower()} "ROMEO:"', "```", "",
        "## transformers", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("FOLDER", gguf_file="{f}")  # dequantized to float',
        f'tokenizer = AutoTokenizer.from_pretrained("FOLDER", gguf_file="{f}")', "```", "",
        "## Limitations", "", "A small model trained briefly, for learning and experiments: it is not factual, safe or "
        "fit for production use.", ""]
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).save(folder / "README.md")


def _mixer_lines(spec: ModelSpec) -> list[str]:
    """What experts and state-space / convolution layers change for a user: the parameters one token runs through,
    and the memory a generation keeps (a fixed state beside, or instead of, the KV cache)."""
    e, out = estimate(spec), []
    if e.active_params != e.params:
        out.append(f"- Mixture of experts: each token runs through {human(e.active_params)} of the {human(e.params)} "
                   "parameters (the experts its router picks).")
    if e.state_bytes_per_sequence:
        kv = f"a KV cache of {human(e.kv_cache_bytes_per_token, 'B')} per token for the attention layers and " \
            if e.kv_cache_bytes_per_token else "no KV cache and "
        out.append(f"- Generation keeps {kv}a fixed state of {human(e.state_bytes_per_sequence, 'B')} per sequence "
                   "for the Mamba2 / short-convolution layers, whatever the length.")
    return [*out, ""] if out else []


def write_model_card(folder: Path, spec: ModelSpec, result, card: dict) -> None:
    """README.md with metadata (library, pipeline, license, datasets, tags) and the export's verification."""
    dataset = card.get("dataset")
    data = ModelCardData(library_name="transformers", pipeline_tag="text-generation",
                         license=card.get("license", "apache-2.0"), datasets=[dataset] if dataset else None,
                         tags=["slm-blocks", "text-generation", "small-language-model"] +
                         ([] if result.native else ["custom_code"]))
    name = card.get("run_name") or spec.name or "slm-blocks-model"
    params = card.get("params") or estimate(spec).params
    has_plot = _loss_plot(card.get("history") or [], folder / "loss.png")
    final = card.get("final") or {}
    remote = "" if result.native else ", trust_remote_code=True"
    lines = [
        f"# {name}", "",
        f"A small language model built with SLM Blocks: {human(params)} parameters, `{spec.summary()}`.", "",
        "## Use it", "", "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline",
        f'model = AutoModelForCausalLM.from_pretrained("REPO_OR_FOLDER"{remote})',
        'tokenizer = AutoTokenizer.from_pretrained("REPO_OR_FOLDER")',
        'generate = pipeline("text-generation", model=model, tokenizer=tokenizer)',
        f"# the model reads at most {spec.max_seq_len} tokens: the prompt and the new tokens must fit",
        f'print(generate("{usage_prompt(card)}", max_new_tokens={usage_new_tokens(spec)})[0]["generated_text"])',
        "```", "",
        "## Format", "",
        f"- Class: `{result.model_class}` — " + ("a native transformers class, no remote code." if result.native else
          f"SLM Blocks' own modeling code, included in this folder; load it with `trust_remote_code=True`. "
          f"Why not a native class: {result.why_not_native}."),
        *_weights_lines(result, card.get("quantization")),
        "- `slm_spec.json` holds the block list, so SLM Blocks can reopen and keep training this model.", "",
        *_serve_lines(result, remote),
        "## Architecture", "", f"d_model {spec.d_model}, vocabulary {spec.vocab_size}, context {spec.max_seq_len}, "
        f"{'tied' if spec.tie_embeddings else 'untied'} embeddings.", "", *_mixer_lines(spec),
        _architecture_table(spec), "",
    ]
    if card.get("data") or card.get("train"):
        lines += ["## Training", ""]
        if card.get("data"):
            d = card["data"]
            what = {"builtin": f"built-in `{d.get('name')}`", "hub": f"Hub dataset `{d.get('hub_id')}`",
                    "files": f"{len(d.get('paths') or [])} local file(s)"}.get(d.get("source"), d.get("source"))
            lines.append(f"- Data: {what}; tokenizer: {(card.get('tokenizer') or {}).get('kind', '?')}.")
        if card.get("train"):
            t = card["train"]
            lr, warmup = _resolved_lr_and_warmup(t)
            trained = max((r["step"] for r in card.get("history") or [] if r["kind"] == "step"), default=None)
            steps = t["max_steps"] if trained in (None, t["max_steps"]) else f"{trained} of {t['max_steps']} planned"
            lines.append(f"- Steps {steps}, batch {t['batch_size']}×{t['seq_len'] or spec.max_seq_len} "
                         f"tokens, {_optimizer_name(t)} lr {lr:g} (warmup {warmup}, "
                         f"{t.get('decay', 'cosine')} decay), weight decay {t['weight_decay']}, clip {t['grad_clip']}, "
                         f"seed {t['seed']}.")
        if final:
            lines.append(f"- Final validation loss {final['val_loss']:.4f} (perplexity "
                         f"{math.exp(min(final['val_loss'], 50)):.2f}, {final['bits_per_char']:.3f} bits per "
                         f"character) at step {final['step']}.")
        if has_plot:
            lines += ["", "![loss curve](loss.png)"]
        lines.append("")
    lines += ["## Limitations", "", "A small model trained briefly, for learning and experiments: it is not "
              "factual, safe or fit for production use.", ""]
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).save(folder / "README.md")


def _resolved_lr_and_warmup(t: dict) -> tuple:
    """The peak learning rate and warmup steps the run used (settings left empty are derived)."""
    from ..training.config import TrainConfig

    try:
        cfg = TrainConfig.from_saved(t)
    except (ValueError, TypeError):
        return t.get("lr") or float("nan"), t.get("warmup_steps")
    return cfg.peak_lr(), cfg.warmup()


def _optimizer_name(t: dict) -> str:
    """Runs saved before the optimizer setting existed trained with AdamW."""
    return "Muon + AdamW" if t.get("optimizer", "adamw") == "muon" else "AdamW"
