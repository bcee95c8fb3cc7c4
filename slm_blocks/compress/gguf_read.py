"""Read a GGUF file back with code other than our writer: gguf-py's reader for the metadata, transformers'
GGUF loader (`from_pretrained(folder, gguf_file=name)`) for the weights and the tokenizer.

transformers turns the file's metadata into a config with a fixed key map that leaves out a few keys
llama.cpp reads: the GPT-2 context and MLP widths, Qwen3's head size and Gemma 3's local/global layer pattern,
local RoPE base and attention scale. Those few come from the file's own keys here (`_patch_config`), never
from our spec, so a metadata mistake in the writer still shows up as a mismatch.
"""

from __future__ import annotations

from pathlib import Path

import torch


class GGUFReadError(ValueError):
    """A file that is not a readable GGUF model; the message says what is wrong and what to do."""


SUPPORTED = ("gpt2", "llama", "qwen3", "gemma3")
CHECKED_ONLY = ("qwen3moe", "lfm2")  # our own exports of these are verified with this reader, not imported


def read_metadata(path: str | Path, archs: tuple = SUPPORTED) -> dict:
    """The file's key/value metadata (token lists left out), or GGUFReadError for a corrupt / truncated file or
    an architecture outside `archs`."""
    from gguf import GGUFReader, GGUFValueType

    path = Path(path)
    if not path.is_file():
        raise GGUFReadError(f"{path} does not exist")
    try:
        reader = GGUFReader(str(path))
        meta = {}
        for key, f in reader.fields.items():
            if key.startswith("tokenizer.ggml.") and f.types and f.types[0] == GGUFValueType.ARRAY:
                meta[key] = len(f.data)  # token lists: their length is enough here
            else:
                meta[key] = f.contents()
        meta["__tensors__"] = {t.name: (t.tensor_type.name, tuple(int(x) for x in t.shape)) for t in reader.tensors}
    except Exception as e:  # bad magic, truncated data, inconsistent offsets: all mean "not a usable file"
        msg = " ".join(str(e).split())[:160]
        raise GGUFReadError(f"{path.name} is not a valid GGUF file ({type(e).__name__}: {msg}); re-export it or "
                            "download it again") from None
    arch = meta.get("general.architecture")
    if arch not in archs:
        raise GGUFReadError(f"{path.name} holds a {arch!r} model; SLM Blocks reads GGUF files of the architectures "
                            f"it writes: {', '.join(SUPPORTED)}")
    return meta


def _patch_config(config, meta: dict) -> None:
    """Fill in what transformers' GGUF key map leaves out, from the file's own metadata (see module doc)."""
    arch = meta["general.architecture"]
    get = lambda key, default=None: meta.get(f"{arch}.{key}", default)  # noqa: E731
    if arch == "gpt2":
        config.n_positions = get("context_length")
        config.n_inner = get("feed_forward_length")
        config.activation_function = "gelu_new"  # llama.cpp's GPT-2 GELU is the tanh form
    if arch in ("qwen3", "gemma3", "llama") and get("attention.key_length") is not None:
        config.head_dim = get("attention.key_length")
    if arch == "gemma3":
        config.query_pre_attn_scalar = config.head_dim  # llama.cpp scales by 1/sqrt(key_length)
        pattern = get("attention.sliding_window_pattern")
        n = config.num_hidden_layers
        if get("attention.sliding_window") is None:
            local = [False] * n
            config.sliding_window = config.max_position_embeddings
        elif isinstance(pattern, list):
            local = [bool(x) for x in pattern]
        else:  # a period: every n-th layer global (llama.cpp's default period is 6)
            period = int(pattern or 6)
            local = [(i % period) < period - 1 for i in range(n)]
        config.layer_types = ["sliding_attention" if x else "full_attention" for x in local]
        full = {"rope_type": "default", "rope_theta": float(get("rope.freq_base", 10000.0))}
        config.rope_parameters = {"full_attention": full, "sliding_attention": {
            "rope_type": "default", "rope_theta": float(get("rope.freq_base_swa", full["rope_theta"]))}}


def load_gguf(path: str | Path, dtype=torch.float32, archs: tuple = SUPPORTED):
    """(transformers model, tokenizer, metadata) of a GGUF file, read by transformers' own GGUF loader."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

    path = Path(path)
    meta = read_metadata(path, archs)
    folder, name = str(path.parent), path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        _patch_config(config, meta)
        model = AutoModelForCausalLM.from_pretrained(  # plain float weights, whatever kernels are installed
            folder, gguf_file=name, config=config, dtype=dtype, quantization_config=GgufConfig(dequantize=True)).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except GGUFReadError:
        raise
    except Exception as e:
        msg = " ".join(str(e).split())[:200]
        raise GGUFReadError(f"transformers could not load {name} ({type(e).__name__}: {msg})") from None
    return model, tokenizer, meta


def check_caps(meta: dict, caps) -> None:
    """GGUFReadError when the file's model is over the app's caps (job.Caps: parameters counted from the
    tensor shapes, context length from the metadata), read from the header before anything is allocated."""
    import math

    arch = meta.get("general.architecture")
    params = sum(math.prod(shape) for _, shape in meta.get("__tensors__", {}).values())
    context = meta.get(f"{arch}.context_length")
    problems = []
    if caps.max_params is not None and params > caps.max_params:
        from ..model.estimate import human

        problems.append(f"it has {human(params)} parameters, over this app's cap of {human(caps.max_params)}")
    if caps.max_context is not None and isinstance(context, int) and context > caps.max_context:
        problems.append(f"its context is {context:,} tokens, over this app's {caps.max_context:,}")
    if problems:
        raise GGUFReadError("this model is too big for this app: " + "; ".join(problems))


def check_header(meta: dict, name: str = "the file") -> None:
    """GGUFReadError unless the header describes exactly the tensors the file holds: as many blocks as
    `blk.N.` indices, every block with the same tensors and shapes, widths, heads, vocabulary and context that
    match the tensors' shapes. transformers builds the model from the header alone (and maps names in time
    quadratic in the block count), so a header patched to claim hundreds of blocks next to a few real ones
    would otherwise allocate a model of that size before anything noticed."""
    import re

    arch = meta.get("general.architecture")
    tensors = meta.get("__tensors__") or {}

    def fail(why: str):
        raise GGUFReadError(f"{name}: its header does not match its tensors ({why}); re-export the file")

    def number(key: str, required: bool = True) -> int | None:
        value = meta.get(f"{arch}.{key}")
        if value is None and not required:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 1 << 24:
            fail(f"{arch}.{key} is {short_value(value)}")
        return value

    blocks: dict[int, dict[str, tuple]] = {}
    for tname, (_kind, shape) in tensors.items():
        m = re.fullmatch(r"blk\.(\d+)\.(.+)", tname)
        if m:
            blocks.setdefault(int(m.group(1)), {})[m.group(2)] = tuple(shape)
    n = number("block_count")
    if sorted(blocks) != list(range(n)):
        fail(f"block_count says {n:,}, the file holds tensors of {len(blocks):,} blocks")
    first = blocks[0]
    if any(b != first for b in blocks.values()):
        fail("its blocks do not all hold the same tensors")
    C, ff = number("embedding_length"), number("feed_forward_length")
    heads, kv = number("attention.head_count"), number("attention.head_count_kv", required=False) or \
        number("attention.head_count")
    head_dim = number("attention.key_length", required=False) or (C // heads if C % heads == 0 else None)
    if head_dim is None or heads % kv:
        fail(f"{heads} heads do not divide {C} or {kv} key/value heads")
    embed = tensors.get("token_embd.weight")
    if embed is None or tuple(embed[1])[0] != C:
        fail("the token embedding is missing or not embedding_length wide")
    vocab = tuple(embed[1])[1]
    for key in ("vocab_size",):
        if meta.get(f"{arch}.{key}") not in (None, vocab):
            fail(f"{arch}.{key} is {meta.get(f'{arch}.{key}')}, the embedding has {vocab:,} rows")
    if meta.get("tokenizer.ggml.tokens") not in (None, vocab):
        fail(f"the tokenizer has {meta.get('tokenizer.ggml.tokens')} tokens, the embedding {vocab:,} rows")
    expect = {"ffn_up.weight": (C, ff), "attn_output.weight": (heads * head_dim, C)}
    if arch == "gpt2":
        expect["attn_qkv.weight"] = (C, 3 * C)
        position = tensors.get("position_embd.weight")
        if position is None or tuple(position[1]) != (C, number("context_length")):
            fail("the position table does not match context_length")
    else:
        expect.update({"attn_q.weight": (C, heads * head_dim), "attn_k.weight": (C, kv * head_dim)})
    for suffix, shape in expect.items():
        if first.get(suffix) != shape:
            fail(f"{suffix} is {first.get(suffix)}, the header implies {shape}")
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list) and len(pattern) != n:
        fail(f"the sliding-window pattern has {len(pattern)} entries for {n} blocks")


def short_value(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def gguf_to_folder(path: str | Path, out_dir: str | Path) -> None:
    """Write the model of a GGUF file as a transformers folder (config, safetensors, tokenizer), read by
    transformers' own GGUF loader. The app runs this in a worker process with a time limit (gguf_worker.py)."""
    import json

    from safetensors.torch import save_file

    from ..training.tokenization import save_tokenizer
    from .gguf_export import TRAINED_CONTEXT_KEY

    native, tokenizer, meta = load_gguf(path)
    config = native.config.to_dict()
    config.pop("quantization_config", None)  # the weights below are plain dequantized floats
    tied = config.get("tie_word_embeddings", False)
    state = {k: v.contiguous() for k, v in native.state_dict().items() if not (tied and k == "lm_head.weight")}
    trained = meta.get(TRAINED_CONTEXT_KEY)
    if trained and "transformer.wpe.weight" in state:  # learned positions padded for llama.cpp: the trained rows
        state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:trained].contiguous()
        config["n_positions"] = trained
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config))
    save_file(state, out / "model.safetensors")
    save_tokenizer(tokenizer, out)


def import_gguf(path: str | Path, caps=None, out_dir: str | Path | None = None, timeout_s: float | None = None):
    """(model, tokenizer, spec) from a GGUF file of a supported architecture, as an SLMForCausalLM to generate
    with or keep training; GGUFReadError says why a file cannot be used. The header is checked against the
    file's tensors (check_header) and `caps` (job.Caps) before anything is built; the file is then read as
    transformers reads it into a transformers folder (`out_dir`, kept; else a temporary one) and imported from
    there like any folder (weights in safetensors, no code from the file). With `timeout_s` that reading runs in
    a worker process stopped after that many seconds."""
    import tempfile

    from ..sharing.importer import import_hf

    path = Path(path)
    meta = read_metadata(path)
    check_header(meta, path.name)
    if caps is not None:
        check_caps(meta, caps)
    with tempfile.TemporaryDirectory(prefix="slm-gguf-import-") as tmp:
        folder = Path(out_dir) if out_dir is not None else Path(tmp)
        if timeout_s is None:
            gguf_to_folder(path, folder)
        else:
            convert_in_worker(path, folder, timeout_s)
        try:
            return import_hf(folder, caps=caps)
        except ValueError as e:
            raise GGUFReadError(f"{path.name}: {e}") from None


def convert_in_worker(path: Path, out_dir: Path, timeout_s: float) -> None:
    """gguf_to_folder in `python -m slm_blocks.compress.gguf_worker`, killed after `timeout_s` seconds."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    try:
        done = subprocess.run([sys.executable, "-m", "slm_blocks.compress.gguf_worker", str(path), str(out_dir)],
                              env=env, cwd=out_dir.parent, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise GGUFReadError(f"{path.name}: reading it took longer than {timeout_s:g} s, the most this app allows "
                            "for one GGUF file; import a smaller model") from None
    if done.returncode != 0:
        last = (done.stdout.strip().splitlines() or [""])[-1]
        try:
            message = json.loads(last)["error"]
        except (ValueError, KeyError, TypeError):
            message = f"{path.name} could not be read (the reader exited with code {done.returncode})"
        raise GGUFReadError(message)
