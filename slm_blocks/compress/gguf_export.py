"""GGUF export: one file that llama.cpp, Ollama, LM Studio and friends run on a laptop CPU.

Written with the `gguf` package (llama.cpp's own Python writer) for the architectures llama.cpp knows and
that a spec can match exactly (sharing/native.py decides the family):

    family   GGUF architecture   notes
    gpt2     gpt2                q, k, v fused into attn_qkv; GELU must be the tanh form (llama.cpp's GELU)
    llama    llama               q/k rows reordered for llama.cpp's interleaved RoPE (its "NORM" mode)
    mistral  llama               llama.cpp's llama has no sliding window: context_length is capped at the
                                 window, where full and sliding attention are the same computation
    qwen3    qwen3               QK-norm, explicit head size (key_length); a sliding window caps the context
    gemma3   gemma3              sandwich norms, local/global layers (sliding_window_pattern), local RoPE base

Everything else (free layer order, ALiBi, parallel residuals, ...) is refused with the reason. Weights: f16,
or q8_0 (blocks of 32 weights with one scale, llama.cpp's near-lossless 8-bit format) for 2-D tensors whose
rows split into blocks of 32 (others fall back to f16, as llama.cpp's converter does); 1-D tensors stay f32.
The file is verified by loading it back in a fresh process with transformers' own GGUF reader (gguf_verify.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .gguf_mixers import F32_ONLY, GGUF_MIXER_ARCH, mixer_hparams, mixer_support, mixer_tensors
from .gguf_vocab import GGUFVocab, VocabError, gguf_vocab
from ..model.blocks import hook
from ..model.spec import ModelSpec
from ..sharing.native import native_family, native_parts

GGUF_ARCH = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "qwen3": "qwen3", "gemma3": "gemma3",
             **GGUF_MIXER_ARCH}  # experts and mixers: gguf_mixers.py
QUANTS = ("f16", "q8_0")
LOGIT_TOLERANCE = 1e-4  # GGUF read back by transformers vs our model holding the same (rounded) weights
GREEDY_TOKENS = 32


class GGUFError(ValueError):
    """A model that cannot be written as GGUF, or a file that did not verify; the message names the reason."""


@dataclass
class GGUFExportResult:
    out_dir: str
    file: str  # the .gguf file name inside out_dir
    arch: str
    quant: str
    size_bytes: int
    context_length: int  # the trained context (the Modelfile's num_ctx)
    tensor_types: dict = field(default_factory=dict)  # ggml type -> number of tensors
    notes: list = field(default_factory=list)  # what a llama.cpp user should know (capped context, ...)
    max_abs_diff: float = float("nan")  # transformers-read GGUF vs our model with the GGUF's rounded weights
    greedy_match: bool = False
    tokenizer_match: bool = False  # the GGUF's tokenizer encodes and decodes like ours
    verified: bool = False
    file_context: int = 0  # the file's context_length: llama.cpp's default context (learned positions padded)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- what llama.cpp can run


def gguf_support(spec: ModelSpec) -> tuple[str | None, str]:
    """(GGUF architecture, "") when llama.cpp computes exactly this spec, else (None, why and what to do)."""
    family, why = native_family(spec)
    if family is None:
        return None, (f"llama.cpp has no architecture for this block list: {why}. Use a preset's layout "
                      "(gpt2, llama, mistral, qwen3, gemma3) to export GGUF, or share the transformers export")
    why = next((part for part in (hook(b, "gguf", spec) for b in spec.blocks) if isinstance(part, str)), None)
    if why:
        return None, why
    block = native_parts(spec)[0]["layers"][0]
    if family not in ("gpt2", "llama", "mistral", "qwen3", "gemma3"):
        return mixer_support(spec, family, native_parts(spec)[0]["layers"])
    if family == "gpt2" and block.mlp.activation != "gelu_tanh":
        return None, (f"llama.cpp's GPT-2 uses the tanh GELU, this model uses {block.mlp.activation}; set the MLP "
                      "activation to gelu_tanh (and retrain) to export GGUF")
    return GGUF_ARCH[family], ""


def context_length(spec: ModelSpec, arch: str) -> tuple[int, list[str]]:
    """The context llama.cpp may use, with a note when it is capped (no sliding window in its llama / qwen3)."""
    windows = [w for _, a, w in spec.layer_plan() if a is not None and w is not None]
    if arch in ("llama", "qwen3") and windows and min(windows) < spec.max_seq_len:
        cap = min(windows)
        return cap, [f"context capped at {cap} tokens (the sliding window): llama.cpp's {arch} architecture has "
                     f"no sliding window, and up to {cap} tokens full attention is the same computation"]
    return spec.max_seq_len, []


LLAMA_CPP_CONTEXT_STEP = 256  # llama.cpp rounds every context up to a multiple of this (llama_context)
TRAINED_CONTEXT_KEY = "slm_blocks.trained_context_length"  # ignored by llama.cpp; import_gguf trims back to it


def llama_cpp_positions(table: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """A learned position table (n_ctx, C) padded for llama.cpp, with the note the card shows.

    llama.cpp rounds its context up to a multiple of 256 whatever is asked, and reads one row of the table per
    position: past the trained rows it aborts (get_rows index out of range). The trained rows stay as they are, so
    up to the trained context the file computes exactly the model; past it, position p reads row p mod n_ctx.
    On a trained tiny-char, held-out loss at positions 64-255 was 3.00 with rows wrapping round, 3.39 repeating
    the last row, 3.20 with zero rows (1.89 within the context; SLM Blocks' own generate, which re-reads the last
    32 tokens instead, 1.84): past its context the model is out of its depth in llama.cpp whatever the rows."""
    n = table.shape[0]
    padded = -(-n // LLAMA_CPP_CONTEXT_STEP) * LLAMA_CPP_CONTEXT_STEP
    if padded == n:
        return table, []
    return table[torch.arange(padded) % n], [
        f"trained on {n}-token windows; the file's context is {padded} (llama.cpp's smallest), position p past "
        f"{n - 1} reading the embedding of position p mod {n}: past {n} tokens llama.cpp runs the model where it "
        f"was never trained (text degrades) and stops at {padded} tokens, or slides with --context-shift"]


# ----------------------------------------------------------------------------- tensors

def _llama_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder q/k rows from rotate-half RoPE (ours, transformers') to llama.cpp's interleaved pairs: within
    each head, row j of the first half and row j of the second half become rows 2j and 2j+1."""
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, hd // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_names(spec: ModelSpec, arch: str) -> tuple[dict, dict]:
    """(our top-level names -> GGUF's, our names inside model.layers.{i}. -> GGUF's inside blk.{i}.), as the
    blocks' `gguf` hooks declare them (a layer block may name some of its tensors differently per architecture)."""
    top, layer = {}, {}
    for b in spec.blocks:
        part = hook(b, "gguf", spec)
        top.update(part.get("names", {}))
        top.update(part.get("arch_names", {}).get(arch, {}))  # a name only one architecture uses
        per_arch = part.get("layer_names", {})
        layer.update(per_arch.get(arch, per_arch.get("*", {})))
    return top, layer


def gguf_tensors(model, arch: str) -> dict[str, torch.Tensor]:
    """Our fp32 state dict under GGUF tensor names, in the layout `arch` expects (tied head left out)."""
    spec = model.config.model_spec()
    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    if spec.tie_embeddings:
        state.pop("lm_head.weight", None)
    layers = native_parts(spec)[0]["layers"]
    attention = next((b.attention for b in layers if b.type == "transformer"), None)  # a hybrid may start otherwise
    n_heads, n_kv = (attention.n_heads, attention.kv_heads()) if attention is not None else (0, 0)
    top, layer = gguf_names(spec, arch)
    out = {}
    for key, w in state.items():
        base, part = key.rsplit(".", 1)
        if base in top:
            out[f"{top[base]}.{part}"] = w
            continue
        _, _, i, rest = base.split(".", 3)  # model.layers.{i}.{rest}
        if rest.startswith("mlp.experts."):  # one MLP per expert: stacked by gguf_mixers.mixer_tensors
            out[f"blk.{i}.{rest}.{part}"] = w
            continue
        name = layer[rest]
        if arch == "llama" and name in ("attn_q", "attn_k"):
            w = _llama_rope_rows(w, n_heads if name == "attn_q" else n_kv)
        out[f"blk.{i}.{name}.{part}"] = w
    if arch == "gpt2":  # one fused q|k|v projection per layer
        for i in range(len(native_parts(spec)[0]["layers"])):
            for part in ("weight", "bias"):
                out[f"blk.{i}.attn_qkv.{part}"] = torch.cat([out.pop(f"blk.{i}.attn_{x}.{part}") for x in "qkv"])
    return mixer_tensors(out, arch) if arch in GGUF_MIXER_ARCH.values() else out


def _encode(w: torch.Tensor, quant: str, name: str = ""):
    """(numpy data, ggml type) of one tensor: q8_0 / f16 for 2-D weights (f16 when rows do not split into
    blocks of 32), f32 for 1-D tensors (norms, biases) and the convolutions llama.cpp reads only in f32, as
    llama.cpp expects."""
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    a = w.numpy().astype(np.float32)
    if a.ndim == 1 or name.endswith(F32_ONLY):
        return a, T.F32
    if quant == "q8_0" and a.shape[-1] % 32 == 0:
        return quants.quantize(a, T.Q8_0), T.Q8_0
    return a.astype(np.float16), T.F16


def rounded_model(model, quant: str):
    """A copy of our model whose weights went through the same rounding as the GGUF file (f16 / q8_0 and
    back): the model a correct GGUF reader must reproduce exactly, and whose quality the table reports."""
    import copy

    from gguf import quants

    out = copy.deepcopy(model).float().eval()
    with torch.no_grad():
        for name, p in out.named_parameters():
            if p.dim() == 2:
                data, qtype = _encode(p.detach(), quant)
                p.copy_(torch.from_numpy(np.asarray(quants.dequantize(data, qtype), dtype=np.float32)).reshape(p.shape))
    return out


# ----------------------------------------------------------------------------- writing


def _writer(path: Path, arch: str):
    """gguf's writer, able to write an empty array (the merges of a vocabulary without merges: llama.cpp
    requires the key for byte-level BPE; GGUF allows empty arrays, gguf-py's writer refuses them)."""
    import gguf

    class Writer(gguf.GGUFWriter):
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if vtype == gguf.GGUFValueType.ARRAY and len(val) == 0 and sub_type is not None:
                return (self._pack("I", vtype) if add_vtype else b"") + self._pack("I", sub_type) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer(str(path), arch)


def _write_hparams(w, spec: ModelSpec, arch: str, n_ctx: int) -> None:
    parts = native_parts(spec)[0]
    if arch in GGUF_MIXER_ARCH.values():
        mixer_hparams(w, spec, arch, parts["layers"], n_ctx)
        if any(b.type == "transformer" for b in parts["layers"]):
            w.add_rope_freq_base(parts["traits"]["rope_theta"])
        return
    block, traits = parts["layers"][0], parts["traits"]
    a, m = block.attention, block.mlp
    hd = a.head_size(spec.d_model)
    w.add_context_length(n_ctx)
    w.add_embedding_length(spec.d_model)
    w.add_block_count(len(parts["layers"]))
    w.add_feed_forward_length(m.hidden_size(spec.d_model))
    w.add_head_count(a.n_heads)
    w.add_head_count_kv(a.kv_heads())
    w.add_vocab_size(spec.vocab_size)
    if arch == "gpt2":
        w.add_layer_norm_eps(block.norm.eps)
        return
    w.add_layer_norm_rms_eps(block.norm.eps)
    w.add_rope_freq_base(traits["rope_theta"])
    w.add_rope_dimension_count(hd)
    w.add_key_length(hd)
    w.add_value_length(hd)
    if arch == "gemma3":
        plan = [win for _, att, win in spec.layer_plan() if att is not None]
        if any(win is not None for win in plan):
            w.add_sliding_window(next(win for win in plan if win is not None))
            w.add_sliding_window_pattern([win is not None for win in plan])  # True = local (sliding) layer
            w.add_rope_freq_base_swa(traits["local_rope_theta"] or traits["rope_theta"])


def _write_vocab(w, v: GGUFVocab) -> None:
    import gguf

    w.add_tokenizer_model(v.model)
    w.add_tokenizer_pre(v.pre)
    w.add_token_list(v.tokens)
    w.add_token_types(v.types)
    w.add_key_value(gguf.Keys.Tokenizer.MERGES, v.merges, gguf.GGUFValueType.ARRAY,
                    sub_type=gguf.GGUFValueType.STRING)
    for add, value in ((w.add_bos_token_id, v.bos), (w.add_eos_token_id, v.eos), (w.add_pad_token_id, v.pad),
                       (w.add_unk_token_id, v.unk)):
        if value is not None:
            add(value)
    w.add_add_bos_token(False)  # training never adds a BOS
    w.add_add_eos_token(False)


def write_gguf(model, tokenizer, path: str | Path, quant: str = "q8_0", *, name: str | None = None) -> GGUFExportResult:
    """Write the GGUF file at `path` (no verification; see export_gguf). Raises GGUFError before writing
    anything when the architecture, the tokenizer or the quantization cannot be represented."""
    import gguf

    if quant not in QUANTS:
        raise GGUFError(f"GGUF quantization {quant!r} is not supported; choose one of {', '.join(QUANTS)}")
    spec = model.config.model_spec()
    arch, why = gguf_support(spec)
    if arch is None:
        raise GGUFError(why)
    try:
        vocab = gguf_vocab(tokenizer, spec.vocab_size)
    except VocabError as e:
        raise GGUFError(str(e)) from None
    n_ctx, notes = context_length(spec, arch)
    tensors = gguf_tensors(model.float(), arch)
    file_ctx = n_ctx
    if "position_embd.weight" in tensors:  # learned positions: a row for every position llama.cpp may use
        tensors["position_embd.weight"], padded = llama_cpp_positions(tensors["position_embd.weight"][:n_ctx])
        file_ctx, notes = tensors["position_embd.weight"].shape[0], notes + padded
    tensors = {k: _encode(t, quant, k) for k, t in tensors.items()}
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    known = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[arch_id]}
    unknown = [k for k in tensors if re.sub(r"^blk\.\d+\.", "blk.{bid}.", k.rsplit(".", 1)[0]) not in known]
    if unknown:  # a mapping bug, not a user error: llama.cpp would not load the file
        raise GGUFError(f"tensors {unknown[:3]} are not part of llama.cpp's {arch} architecture")
    w = _writer(Path(path), arch)
    try:
        # transformers reads a llama-architecture file whose name mentions "mistral" as its own Mistral
        # GGUF layout and then fails to load it: keep that word out of the name
        title = name or spec.name or "slm-blocks-model"
        w.add_name(re.sub("mistral", "swa-llama", title, flags=re.I) if arch == "llama" else title)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _write_hparams(w, spec, arch, file_ctx)
        if file_ctx != n_ctx:
            w.add_uint32(TRAINED_CONTEXT_KEY, n_ctx)
        _write_vocab(w, vocab)
        counts: dict[str, int] = {}
        for key, (data, qtype) in tensors.items():
            w.add_tensor(key, data, raw_dtype=qtype)
            counts[qtype.name] = counts.get(qtype.name, 0) + 1
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    if vocab.kind == "char":
        notes.append("char vocabulary written as byte-level BPE without merges: llama.cpp drops characters "
                     "the vocabulary lacks, where SLM Blocks maps them to <|unk|>")
    return GGUFExportResult("", Path(path).name, arch, quant, Path(path).stat().st_size, n_ctx, counts, notes,
                            file_context=file_ctx)


# ----------------------------------------------------------------------------- export + verification


def _check_in_fresh_process(reference, tokenizer, gguf_path: Path, n_ctx: int) -> tuple[float, bool, bool]:
    """Load the file in a fresh process with transformers' GGUF reader; compare logits and a greedy
    continuation with `reference` (our model holding the GGUF's rounded weights), and the file's
    tokenizer with ours on the text of that continuation."""
    from safetensors.torch import load_file, save_file

    spec = reference.config.model_spec()
    ids = torch.randint(0, spec.vocab_size, (2, n_ctx), generator=torch.Generator().manual_seed(0))
    prompt = ids[:1, : max(1, min(8, n_ctx - GREEDY_TOKENS))]
    n_new = min(GREEDY_TOKENS, n_ctx - prompt.shape[1])
    with torch.no_grad():
        ref_logits = reference(ids, use_cache=False).logits.float()
        ref_greedy = reference.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_new,
                                        min_new_tokens=n_new, do_sample=False, pad_token_id=0)
    text = tokenizer.decode(ref_greedy[0].tolist(), skip_special_tokens=True)
    with tempfile.TemporaryDirectory(prefix="slm-gguf-verify-") as d:
        inputs, outputs = Path(d) / "inputs.safetensors", Path(d) / "outputs.safetensors"
        save_file({"ids": ids, "prompt": prompt.clone(), "text": torch.tensor(list(text.encode("utf-8")) or [32],
                                                                              dtype=torch.uint8)}, inputs)
        cmd = [sys.executable, "-m", "slm_blocks.compress.gguf_verify", str(gguf_path), str(inputs), str(outputs),
               str(n_new)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              cwd=str(Path(__file__).resolve().parents[2]))
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"
            raise GGUFError(f"the GGUF file did not load in transformers: {tail}")
        got = load_file(outputs)
    diff = float((got["logits"] - ref_logits).abs().max())
    ours = torch.tensor(tokenizer(text or " ", add_special_tokens=False)["input_ids"])
    same_tokens = torch.equal(got["text_ids"], ours) and bytes(got["decoded"].tolist()) == \
        tokenizer.decode(ours.tolist(), skip_special_tokens=True).encode("utf-8")
    return diff, torch.equal(got["greedy"], ref_greedy), same_tokens


def _safe_stem(text: str) -> str:
    """A file name stem of ASCII letters, digits, '-' and '_' (the run name may be anything)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-_")[:48] or "model"


MODELFILE = '''# Ollama: ollama create {name} -f Modelfile && ollama run {name} "ROMEO:"
FROM ./{file}
# a completion model (no chat template): the prompt goes in as it is
TEMPLATE """{{{{ .Prompt }}}}"""
PARAMETER num_ctx {n_ctx}
PARAMETER temperature 0.8
PARAMETER top_k 50
{stops}'''


def export_gguf(model, tokenizer, out_dir: str | Path, quant: str = "q8_0", *, name: str | None = None,
                card: dict | None = None, overwrite: bool = False, verify: bool = True) -> GGUFExportResult:
    """A folder with the GGUF file, an Ollama Modelfile and a model card, verified by loading the file back
    in a fresh process (transformers' GGUF reader); assembled under a temporary name, renamed when verified."""
    from ..sharing.card import write_gguf_card

    if quant not in QUANTS:  # before anything touches the disk: the name of a folder is made from it
        raise GGUFError(f"GGUF quantization {quant!r} is not supported; choose one of {', '.join(QUANTS)}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise GGUFError(f"{out} is not empty; choose another folder or allow overwriting")
    model = model.float().eval()
    spec = model.config.model_spec()
    title = name or spec.name or "slm-blocks-model"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-gguf-", dir=out.parent))
    try:
        path = tmp / f"{_safe_stem(title)}-{quant}.gguf"
        result = write_gguf(model, tokenizer, path, quant, name=title)
        result.out_dir = str(out)
        if verify:
            reference = rounded_model(model, quant)
            diff, greedy, same_tokens = _check_in_fresh_process(reference, tokenizer, path, result.context_length)
            result.max_abs_diff, result.greedy_match, result.tokenizer_match = diff, greedy, same_tokens
            result.verified = diff <= LOGIT_TOLERANCE and greedy and same_tokens
        stops = "".join(f'PARAMETER stop "{t}"\n' for t in {tokenizer.eos_token} if t)
        (tmp / "Modelfile").write_text(MODELFILE.format(name=_safe_stem(title).lower(), file=path.name,
                                                        n_ctx=result.context_length, stops=stops))
        write_gguf_card(tmp, spec, result, card or {})
        (tmp / "export_result.json").write_text(json.dumps(result.to_dict(), indent=2))
        if verify and not result.verified:
            raise GGUFError(f"the GGUF file read back by transformers differs from the model (max |Δlogits| "
                            f"{result.max_abs_diff:.2e}, greedy {'identical' if result.greedy_match else 'different'}"
                            f", tokenizer {'identical' if result.tokenizer_match else 'different'}); nothing was written")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_run_gguf(run_dir: str | Path, out_dir: str | Path, quant: str = "q8_0", **kw) -> GGUFExportResult:
    """GGUF export of a run folder's latest checkpoint, named after the run."""
    from ..training.run import open_run

    run = open_run(run_dir, load_data=False)
    evals = [r for r in run.history() if r["kind"] == "eval"]
    card = {"final": evals[-1] if evals else None, "tokenizer": run.tokenizer_config.to_dict(),
            "run_name": Path(run_dir).name, **kw.pop("card", {})}
    return export_gguf(run.load_model(), run.tokenizer, out_dir, quant, name=kw.pop("name", Path(run_dir).name),
                       card=card, **kw)
