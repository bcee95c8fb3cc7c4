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


def read_metadata(path: str | Path) -> dict:
    """The file's key/value metadata (token lists left out), or GGUFReadError for a corrupt / truncated file."""
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
    if arch not in SUPPORTED:
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


def load_gguf(path: str | Path, dtype=torch.float32):
    """(transformers model, tokenizer, metadata) of a GGUF file, read by transformers' own GGUF loader."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

    path = Path(path)
    meta = read_metadata(path)
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


def import_gguf(path: str | Path, caps=None):
    """(model, tokenizer, spec) from a GGUF file of a supported architecture, as an SLMForCausalLM to generate
    with or keep training; GGUFReadError says why a file cannot be used. Read as transformers reads it, then
    through the same importer as a transformers folder (weights in safetensors, no code from the file).
    `caps` (job.Caps): a model over them is refused from the file's header, before it is loaded."""
    import json
    import tempfile

    from safetensors.torch import save_file

    from ..sharing.importer import import_hf
    from ..training.tokenization import save_tokenizer

    if caps is not None:
        check_caps(read_metadata(path), caps)
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
    with tempfile.TemporaryDirectory(prefix="slm-gguf-import-") as d:
        (Path(d) / "config.json").write_text(json.dumps(config))
        save_file(state, Path(d) / "model.safetensors")
        save_tokenizer(tokenizer, d)
        try:
            return import_hf(d, caps=caps)
        except ValueError as e:
            raise GGUFReadError(f"{Path(path).name}: {e}") from None
