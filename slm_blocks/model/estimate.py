"""Size, compute and memory of a spec, counted from the spec alone (nothing is allocated).

The builder shows these live while a learner edits blocks, and the app refuses oversized models with
them before touching memory. Parameter counts are exact; FLOPs count multiply-adds as 2 FLOPs; memory
is an estimate whose formula is spelled out below so a learner can redo it by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .assembly import Costs
from .blocks import module_of
from .memory import attention_memory
from .spec import ModelSpec

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Estimate:
    params: int  # unique trainable parameters (tied embeddings counted once)
    embedding_params: int  # token (+ learned position) embeddings
    flops_per_token_forward: int
    flops_per_token_train: int  # forward + backward = 3 x forward
    train_weights_bytes: int
    train_grads_bytes: int
    train_optimizer_bytes: int  # two fp32 moments per parameter (AdamW; an upper bound with Muon)
    train_activations_bytes: int  # peak for one batch of batch_size x seq_len, attention_bytes included
    train_total_bytes: int
    kv_cache_bytes_per_token: int  # per sequence, all attention layers
    inference_bytes: int  # weights + a full KV cache for batch_size x seq_len
    attention_bytes: int = 0  # of train_activations_bytes: what grows with seq_len² (masks, kept scores; memory.py)
    active_params: int = 0  # parameters one token uses (a mixture of experts runs only its top-k experts)
    state_bytes_per_sequence: int = 0  # fixed-size state of Mamba2 / short-convolution layers, whatever the length

    def to_dict(self) -> dict:
        return asdict(self)


def estimate(spec: ModelSpec, batch_size: int = 8, seq_len: int | None = None, dtype: str = "float32") -> Estimate:
    """Every block's module adds what it holds (its tensors) and what it costs per token (its `costs` hook: the
    activation values torch keeps for the backward pass, each term measured against torch's own peak in
    tests/model/test_memory.py); memory.py adds what grows with the square of the context."""
    T = seq_len or spec.max_seq_len
    nbytes = BYTES[dtype]
    acc = Costs(seq_len=T, nbytes=nbytes, dropout_mask=spec.d_model / 4 if spec.dropout > 0 else 0)
    params = embedding = 0
    for block, first_layer in _blocks_and_first_layers(spec):
        module = module_of(block)
        n = sum(numel(shape) for _, shape in module.tensors(block, spec, first_layer))
        params += n
        embedding += n if module.ROLE in ("embedding", "positional") else 0
        module.costs(block, spec, acc)

    fwd = int(round(2 * acc.matmul + acc.attn_flops))
    weights = params * nbytes
    per_token = int(acc.act * batch_size * T * nbytes)
    activations = attention_memory(spec, batch_size, T, "train", nbytes).peak(per_token)
    return Estimate(
        params=params,
        embedding_params=embedding,
        flops_per_token_forward=fwd,
        flops_per_token_train=3 * fwd,
        train_weights_bytes=weights,
        train_grads_bytes=weights,
        train_optimizer_bytes=params * 4 * 2,
        train_activations_bytes=activations,
        train_total_bytes=2 * weights + params * 8 + activations,
        kv_cache_bytes_per_token=acc.kv_bytes,
        inference_bytes=weights + (acc.kv_bytes * T + acc.state_bytes) * batch_size,
        attention_bytes=activations - per_token,
        active_params=params - acc.inactive_params,
        state_bytes_per_sequence=acc.state_bytes,
    )


def _blocks_and_first_layers(spec: ModelSpec):
    """(block, index in model.layers of its first layer) for every block, in spec order."""
    layer = 0
    for block in spec.blocks:
        yield block, layer
        layer += len(module_of(block).plan(block))


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (with unit 'B': '1.18 MiB')."""
    if unit == "B":
        for u in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(n) < 1024 or u == "TiB":
                return f"{n:.0f} {u}" if u == "B" else f"{n:.2f} {u}"
            n /= 1024
    for u in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1000 or u == "P":
            return f"{n:.3g}{u}{unit}"
        n /= 1000
    return str(n)


# ----------------------------------------------------------------------------- per block (the Build diagram)


@dataclass
class BlockCost:
    """What one block of the spec holds: every weight tensor (named as in the built model, repeats expanded),
    the parameters it adds, and the shapes of the activations it reads and writes (B = batch, T = tokens)."""

    index: int
    type: str
    tensors: list[tuple[str, tuple[int, ...]]]
    params: int  # unique parameters this block adds (0 for an LM head tied to the embedding)
    shapes: list[tuple[str, str]]  # (what, shape) of its activations, e.g. ("attention scores", "(B, 4, T, T)")
    note: str = ""


def block_costs(spec: ModelSpec) -> list[BlockCost]:
    """One BlockCost per block of a valid spec; their params add up to estimate(spec).params, and their tensors
    are exactly the model's named parameters (tests/model/test_estimate.py builds the model to check)."""
    out = []
    for i, (b, first_layer) in enumerate(_blocks_and_first_layers(spec)):
        module = module_of(b)
        tensors = module.tensors(b, spec, first_layer)
        n_layers = len(module.plan(b))
        _, note = module.describe(b, spec)
        if n_layers > 1:
            note += f"; {n_layers} layers (model.layers.{first_layer}–{first_layer + n_layers - 1}), each with its " \
                    "own weights"
        elif n_layers == 1:
            note += f"; model.layers.{first_layer}"
        out.append(BlockCost(i, b.type, tensors, sum(numel(shape) for _, shape in tensors), module.shapes(b, spec),
                             note))
    return out


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
