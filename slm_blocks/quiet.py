"""Third-party import noise kept off the console, without hiding anything of ours.

transformers imports torchao whenever it is installed, as soon as any model class is imported
(`modeling_utils` -> `quantizers` -> `quantizer_torchao`). On a CPU machine that import prints "Failed to load
..._C_mxfp8....so" / "..._C_cutlass_90a.abi3.so" (CUDA-only kernel libraries) and torch `_pytree` deprecation
warnings, and costs a few seconds, before every training step: a newcomer reads it as a broken install.
Only quantization (compress/quantize.py) needs torchao, so:

- `defer_torchao()` (run when slm_blocks is imported) hides torchao from transformers while, and only while,
  `quantizer_torchao` is imported: that module then skips its torchao imports, and transformers' "is torchao
  installed" answer is reset right after, so nothing else is told torchao is missing;
- `load_torchao()` (quantize.py, on first use) imports torchao with its loggers lowered to errors, then runs
  the torchao imports that `quantizer_torchao` skipped, so saving and loading quantized models works as usual.

If transformers was imported before slm_blocks, torchao is already loaded and nothing is deferred.
`quiet_mlflow()` lowers MLflow's store messages ("Creating initial MLflow database tables...", printed at
INFO when a new SQLite store is made) to warnings; MLflow's own warnings and errors still show.
"""

from __future__ import annotations

import ast
import importlib.abc
import importlib.machinery
import inspect
import logging
import sys

DEFERRED_MODULE = "transformers.quantizers.quantizer_torchao"
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")  # kernel libraries that cannot load on a CPU; Enum pytree notes
_skipped: list[str] = []  # modules that were imported with torchao hidden


class _Defer(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loading of DEFERRED_MODULE so torchao looks absent while it runs."""

    def find_spec(self, name, path=None, target=None):
        if name != DEFERRED_MODULE:
            return None
        sys.meta_path.remove(self)  # one module, once
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or "torchao" in sys.modules:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            sys.modules["torchao"] = None  # importlib.util.find_spec("torchao") is None while this is set
            try:
                run(module)
            finally:
                del sys.modules["torchao"]
                from transformers.utils.import_utils import is_torchao_available

                is_torchao_available.cache_clear()  # the next question gets the true answer
            _skipped.append(name)

        spec.loader.exec_module = exec_module
        return spec


def defer_torchao() -> None:
    if not any(isinstance(f, _Defer) for f in sys.meta_path) and DEFERRED_MODULE not in sys.modules:
        sys.meta_path.insert(0, _Defer())


def quiet_mlflow() -> None:
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)


def load_torchao() -> None:
    """Import torchao quietly and complete the transformers modules that were imported without it."""
    loggers = [logging.getLogger(n) for n in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        import torchao.quantization  # noqa: F401

        while _skipped:  # inside the quiet window: these imports register more of torchao's types
            module = sys.modules[_skipped.pop()]
            for node in ast.parse(inspect.getsource(module)).body:  # its top-level `if is_torchao_available():`
                if isinstance(node, ast.If) and "is_torchao_available" in ast.unparse(node.test):
                    exec(compile(ast.Module(node.body, []), module.__file__, "exec"), module.__dict__)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
