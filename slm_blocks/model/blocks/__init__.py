"""Block types as plug-ins: one module per type holds everything that type is, and this registry maps type names to
those modules. A spec can only name a registered type (nothing named in a spec is ever imported), and nothing
outside this package asks what class a block is: the model, the estimate, the views and the exports call the hooks
of `module_of(block)`.

A block module defines (`register` refuses a module that lacks one; tests/test_layout.py checks the built-in ones):

    TYPE, ROLE     the type name, and where the block sits: "embedding", "positional", "layer" (on the residual
                   stream between the positional block and final_norm, any number of them), "final_norm", "lm_head"
    BRANCHES       residual branches per layer (GPT-2's scaled init of the residual projections counts them)
    Spec           its dataclass; fields declared with model/fields.py's setting() (label, help, what empty means),
                   which the parser, the Build tab's widgets and every message read
    check(block, spec, at) -> [Problem]      what its fields' own types and bounds do not catch (`at`: its path)
    plan(block) -> [(AttentionSpec | None, window)]    the residual-stream layers it adds (empty: none)
    build(block, spec, build)                its torch modules (a layer's: a list of nn.Modules; the others: the
                                             named parts of the model body, or the head)
    forward(part, x, ...), step(part, decoding)      the computation on (B, T, C), and the same on one token (C,),
                                             prepared once per generation from the same weights and helpers
    tensors(block, spec, first_layer) -> [(name, shape)]  its weights, named as in the built model: the exact
                                             parameter count and the Build tab's detail table both come from it
    costs(block, spec, acc)                  the FLOPs, kept activations and KV cache it adds to an estimate
    shapes(block, spec) -> [(what, shape)]   its activations, for the Build tab
    describe(block, spec) -> (name, details) the one short description every view uses
    native, gguf, prune                      what sharing/native.py, compress/gguf_export.py and grow/prune.py may do
                                             with it: data (or a function of block and spec returning it), or a
                                             string saying why that is not supported

The export and pruning hooks are data the upper layers read (tensor name maps, per-layer settings, what can be
removed), so a block module imports nothing from sharing/, compress/ or grow/ and every import still points down.
"""

from __future__ import annotations

from types import ModuleType

from . import attention, embedding, final_norm, lm_head, mamba2, mlp, moe, norm, positional, short_conv, transformer

ROLES = ("embedding", "positional", "layer", "final_norm", "lm_head")
HOOKS = ("TYPE", "ROLE", "BRANCHES", "Spec", "check", "plan", "build", "forward", "step", "tensors", "costs",
         "shapes", "describe", "native", "gguf", "prune")

REGISTRY: dict[str, ModuleType] = {}


def register(module: ModuleType) -> None:
    """Add a block type (a module with every hook); its TYPE becomes a name specs may use."""
    missing = [h for h in HOOKS if not hasattr(module, h)]
    if missing:
        raise TypeError(f"block module {module.__name__} lacks {', '.join(missing)}")
    if module.ROLE not in ROLES:
        raise TypeError(f"block module {module.__name__} has ROLE {module.ROLE!r}; use one of {ROLES}")
    if module.Spec.__dataclass_fields__["type"].default != module.TYPE:
        raise TypeError(f"block module {module.__name__}: Spec.type must default to {module.TYPE!r}")
    REGISTRY[module.TYPE] = module


def unregister(block_type: str) -> None:
    REGISTRY.pop(block_type, None)


def module_of(block) -> ModuleType:
    """The module of a block (a parsed block, or a type name)."""
    return REGISTRY[block if isinstance(block, str) else block.type]


def hook(block, name: str, spec=None):
    """A data-or-function hook's value for `block` (native, gguf, prune): a dict, or a string saying why not."""
    value = getattr(module_of(block), name)
    return value(block, spec) if callable(value) else value


def layer_types() -> list[str]:
    """Block types that sit on the residual stream (any number, between the positional block and final_norm)."""
    return [t for t, m in REGISTRY.items() if m.ROLE == "layer"]


for _module in (embedding, positional, transformer, attention, mlp, moe, mamba2, short_conv, norm, final_norm,
                lm_head):
    register(_module)
