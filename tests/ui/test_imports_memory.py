"""Imports and loaded models are bounded: a session's imports count with its runs, the models loaded for
generation share one memory budget (least recently used out, read again from disk when asked for), and a closed
session's memory goes back. The red team imported one 115 KB zip of zero weights (28.6M parameters once loaded)
24 times into one session: +109 MB of app memory each, 2.6 GB in all, with no count and no limit."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import pytest

from conftest import running_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MODEL_MB = 28  # one imported model's weights (fp32: 7.1M parameters)
BUDGET_MB = 2 * MODEL_MB + 8  # the app's model cache holds two of them


def trimmed_rss() -> float:
    from slm_blocks.ui.models import release_memory

    import psutil

    release_memory()
    return psutil.Process().memory_info().rss / 2**20


@pytest.fixture(scope="module")
def zeros_zip(tmp_path_factory) -> Path:
    """The export of a 7.1M-parameter model whose weights are all zeros, as a zip of a few hundred KB."""
    import torch

    from slm_blocks import ModelSpec, build_model
    from slm_blocks.sharing.export import export_hf
    from slm_blocks.training.tokenization import build_tokenizer

    tok = build_tokenizer("byte")
    spec = ModelSpec.from_dict({"vocab_size": len(tok), "d_model": 512, "max_seq_len": 64, "blocks": [
        {"type": "embedding"}, {"type": "positional", "kind": "rope"},
        {"type": "transformer", "repeat": 2, "attention": {"n_heads": 8}, "mlp": {"hidden": 1536, "gated": True}},
        {"type": "final_norm"}, {"type": "lm_head"}], "tie_embeddings": False})
    model = build_model(spec)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    root = tmp_path_factory.mktemp("zeros")
    export_hf(model, tok, root / "model", verify=False)
    archive = Path(shutil.make_archive(str(root / "zeros"), "zip", root / "model"))
    assert archive.stat().st_size < 2**20
    return archive


def test_imports_count_with_runs_and_loaded_models_share_one_budget(tmp_path, zeros_zip):
    import torch
    from gradio_client import Client, handle_file

    from slm_blocks.ui.models import model_bytes
    from slm_blocks.ui.state import Limits, SessionStore

    torch.set_num_threads(1)
    store = SessionStore(Limits(data_dir=tmp_path / "app", max_runs_per_session=3, model_cache_mb=BUDGET_MB))
    with running_app(store) as (demo, url):
        warm = Client(url, verbose=False)  # the first import and generation set up kernels and thread pools
        msg = warm.predict([handle_file(str(zeros_zip))], api_name="/import_model")
        warm.predict(msg.split("**")[1], "Once", 4, 0, 50, 1.0, 1.0, "1", "fp32", api_name="/generate")
        store.close(warm.session_hash)
        a, b = Client(url, verbose=False), Client(url, verbose=False)
        baseline = trimmed_rss()
        names = {}
        for c in (a, b):
            names[c] = []
            for _ in range(3):
                msg = c.predict([handle_file(str(zeros_zip))], api_name="/import_model")
                assert msg.startswith("✅"), msg
                names[c].append(msg.split("**")[1])
            msg = c.predict([handle_file(str(zeros_zip))], api_name="/import_model")  # a 4th: refused
            assert msg.startswith("❌") and "3 runs and imported models" in msg, msg
        held = store.models.held_bytes() / 2**20
        grown = trimmed_rss() - baseline
        print(f"\n6 imports of {MODEL_MB} MB models: {held:.0f} MB held, RSS +{grown:.0f} MB (budget {BUDGET_MB} MB)")
        assert held <= BUDGET_MB and grown < BUDGET_MB + 48, (held, grown)  # not 6 x 32 MB
        # the first import was evicted long ago: it is read again from its folder and generates
        first = names[a][0]
        assert first not in store.models.names(store.key(a.session_hash))
        text = a.predict(first, "Once", 4, 0, 50, 1.0, 1.0, "1", "fp32", api_name="/generate")
        assert text.startswith("Once") and "⚠️" not in text, text
        assert store.models.held_bytes() <= BUDGET_MB * 2**20
        assert model_bytes(store.models.peek(store.key(a.session_hash), first)[0]) > 25 * 2**20
        for c in (a, b):  # closing the sessions gives their memory back
            store.close(c.session_hash)
        gc.collect()
        after = trimmed_rss()
        print(f"after closing both sessions: RSS {after - baseline:+.0f} MB against the baseline")
        assert after < baseline + 24, (baseline, after)
        for c in (a, b, warm):
            c.close()
