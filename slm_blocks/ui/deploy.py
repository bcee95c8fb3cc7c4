"""What the Share tab's "Quantize & deploy" does (its layout and wiring: tabs/share.py): the size-speed-quality
table of fp32 / bf16 / int8 / int4 / GGUF q8_0 for a run, quantized transformers exports, a GGUF download for
llama.cpp / Ollama, and GGUF import. Also the weights choice the Generate tab passes to /generate
(`with_weights`). The engine is slm_blocks.compress.
"""

from __future__ import annotations

import html
import logging
import shutil
from pathlib import Path

import gradio as gr
import pandas as pd

from ..training.schema import short
from .guard import one_at_a_time
from .state import SessionStore, safe_filename
from .train_view import scrub
from .uploads import UserError, archive_for_download, discard_upload, file_for_download

log = logging.getLogger("slm_blocks.app")

WEIGHTS = ["fp32", "bf16", "int8", "int4"]
TABLE_COLUMNS = ["weights", "file", "tokens/s", "held-out loss", "bits/char", "greedy text", "note"]
TABLE_WIDTHS = ["8%", "13%", "10%", "12%", "9%", "28%", "20%"]  # headers on one line at 1280 px; text wraps
INTRO = """### Quantize & deploy
Shrink a trained run and see the price: **int8 / int4** keep every Linear weight in 8 or 4 bits (torchao,
weight-only), **GGUF q8_0** is one file for llama.cpp and Ollama on a laptop CPU. *Compare* measures them all on
this machine, on the run's own validation text (sizes and speeds as ratios against fp32 of the same call)."""


def with_weights(model, weights: str | None):
    """`model` (fp32, loaded for generation) with its weights in `weights`; variants are made once and kept on
    the model object itself, so they live exactly as long as the session's model does."""
    from ..compress.quantize import QuantizeError, quantize_model

    weights = weights or "fp32"
    if weights not in WEIGHTS:
        raise UserError(f"Weights: choose one of {', '.join(WEIGHTS)}")
    if weights == "fp32":
        return model
    variants = model.__dict__.setdefault("_slm_weight_variants", {})
    if weights not in variants:
        try:
            variants[weights] = quantize_model(model, weights)
        except QuantizeError as e:
            raise UserError(f"Weights: {e}") from None
    return variants[weights]


def _session(store: SessionStore, request: gr.Request | None):
    return store.get(getattr(request, "session_hash", None) if request is not None else None)


def _finished_run(session, run_name):
    if not run_name:
        raise UserError("Run: train a model first, then pick it here")
    run = session.run(run_name)
    if run.job and not run.job.finished:
        raise UserError(f"Run: {run_name} is still training; stop it or wait until it finishes")
    return run


def _message(e: Exception) -> str:
    if isinstance(e, (UserError, ValueError, RuntimeError, FileNotFoundError)):
        return f"❌ {html.escape(scrub(str(e)), quote=False)}"  # never a server path
    log.exception("deploy: unexpected error")
    return f"❌ Something went wrong ({type(e).__name__}); the app is still running — try again."


def _group(value) -> int | None:
    if value in (None, "", "default"):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"Group size: pick a number such as 32 (got {value!r})") from None


class Deploy:
    def __init__(self, store: SessionStore):
        self.store = store

    def compare(self, run_name, group_size, request: gr.Request):
        """(table, notes) for fp32 / bf16 / int8 / int4 / GGUF q8_0 of one run."""
        from ..compress.table import run_table, table_rows

        try:
            run = _finished_run(_session(self.store, request), run_name)
            rows = run_table(run.dir, group_size=_group(group_size), n_tokens=48, repeats=2)
            shown = table_rows(rows)
            notes = "\n".join(f"- **{r['weights']}**: {html.escape(r['note'], quote=False)}" for r in shown if r["note"])
            return pd.DataFrame(shown, columns=TABLE_COLUMNS), notes
        except Exception as e:
            return pd.DataFrame(columns=TABLE_COLUMNS), _message(e)

    def export_quantized(self, run_name, weights, group_size, request: gr.Request):
        """A verified int8 / int4 transformers folder (zip) and the result in words."""
        from ..compress.quant_export import export_run_quantized

        session = _session(self.store, request)
        try:
            run = _finished_run(session, run_name)
            if weights not in ("int8", "int4"):
                raise UserError("Weights: choose int8 or int4")
            session.check_quota(self.store.limits, "Export")
            self.store.check_disk("Export")
            out = session.root / "exports" / f"{run.name}-{weights}"
            r = export_run_quantized(run.dir, out, weights, _group(group_size), overwrite=True)
            archive = archive_for_download(session.id, out, out.name)
            group = f"groups of {r.group_size}" if r.group_size else "per row"
            return archive, (f"✅ **{r.model_class}** with {weights} weights ({group}), "
                             f"{r.size_bytes / 2**20:.2f} MiB of weights. Verified in a fresh process: max |Δlogits| "
                             f"{r.max_abs_diff:.2e} against the {weights} model here, greedy continuation "
                             f"{'identical' if r.greedy_match else 'different'}. Loads with "
                             "`AutoModelForCausalLM.from_pretrained(folder)` once `torchao` is installed.")
        except Exception as e:
            return None, _message(e)

    def export_gguf(self, run_name, quant, request: gr.Request):
        """(the .gguf file, the folder with Modelfile and card as zip, the result in words)."""
        from ..compress.gguf_export import export_run_gguf

        from ..compress.gguf_export import QUANTS

        session = _session(self.store, request)
        try:
            quant = quant or "q8_0"
            if quant not in QUANTS:  # checked before it becomes part of a folder name
                raise UserError(f"GGUF quantization: choose one of {', '.join(QUANTS)} (got {short(quant)})")
            run = _finished_run(session, run_name)
            session.check_quota(self.store.limits, "Export")
            self.store.check_disk("Export")
            out = session.root / "exports" / f"{run.name}-gguf-{quant}"
            r = export_run_gguf(run.dir, out, quant, overwrite=True)
            archive = archive_for_download(session.id, out, out.name)
            notes = "".join(f"\n\nNote: {html.escape(n, quote=False)}." for n in r.notes)
            return file_for_download(session.id, out / r.file), archive, (
                f"✅ **{r.file}** (llama.cpp architecture `{r.arch}`, {r.quant}, {r.size_bytes / 2**20:.2f} MiB). "
                f"Read back by transformers' GGUF loader in a fresh process: max |Δlogits| {r.max_abs_diff:.2e}, "
                f"greedy continuation {'identical' if r.greedy_match else 'different'}, tokenizer "
                f"{'identical' if r.tokenizer_match else 'different'}.\n\nRun it: `llama-completion -m {r.file} -p \"...\" "
                f"-no-cnv`, or `ollama create NAME -f Modelfile` with the zip's Modelfile." + notes)
        except Exception as e:
            return None, None, _message(e)

    @one_at_a_time("import", "Import", lambda message: f"❌ {message}")
    def import_gguf(self, file, request: gr.Request) -> str:
        """Import a .gguf file as a model of this session (for the Generate tab): its header is checked against
        its tensors and the caps, then a worker process reads it into a transformers folder, within
        SLM_IMPORT_TIMEOUT seconds. The folder is kept (the model is read again from it when the model cache
        has let it go); the .gguf copy is not."""
        from ..compress.gguf_read import import_gguf

        session = _session(self.store, request)
        try:
            if not file:
                raise UserError("GGUF file: upload a .gguf file first")
            src = Path(file if isinstance(file, str) else file.name)
            if src.suffix.lower() != ".gguf":
                raise UserError(f"GGUF file: {src.name!r} is not a .gguf file")
            session.check_room(self.store.limits, "GGUF file")
            self.store.check_disk("GGUF file")
            name = session.new_run_name("gguf")
            folder = session.root / "imports" / name
            folder.mkdir(parents=True, exist_ok=True)
            dst = folder / safe_filename(src.name)
            try:
                shutil.copyfile(src, dst)
                discard_upload(src)
                model, tok, spec = import_gguf(dst, caps=self.store.limits.caps(), out_dir=folder / "model",
                                               timeout_s=self.store.limits.import_timeout_s)
                dst.unlink()
            except Exception:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            session.imports[name] = folder / "model"
            session.followed = name  # the model the learner is on now: Generate's picker shows it
            self.store.models.put(session.id, name, (model, tok))
            return f"✅ Imported as **{name}** ({html.escape(spec.summary())}); pick it on the Generate tab."
        except Exception as e:
            return _message(e)
