"""The Share tab's "Quantize & deploy" and the Generate tab's weights choice, through the real app server
(gradio_client): the table, the GGUF download, int8 generation, GGUF import (a good file and a corrupt one)."""

import shutil
from pathlib import Path

import pytest

from slm_blocks.ui.state import Limits, SessionRun, SessionStore


@pytest.fixture(scope="module")
def served(tmp_path_factory, trained_tiny_char):
    from gradio_client import Client

    from conftest import running_app

    store = SessionStore(Limits(data_dir=tmp_path_factory.mktemp("deploy-app")))
    with running_app(store) as (demo, url):
        c = Client(url, verbose=False)
        session = store.get(c.session_hash)
        run_dir = session.root / "runs" / "shakespeare"
        shutil.copytree(trained_tiny_char.dir, run_dir)  # as if this session had trained it
        session.runs["shakespeare"] = SessionRun("shakespeare", run_dir)
        yield c, store, session


def test_compare_table_lists_every_variant(served):
    c, _, _ = served
    table, notes = c.predict("shakespeare", "default", api_name="/compare_weights")
    rows = {r[0]: r for r in table["data"]}
    assert list(rows) == ["fp32", "bf16", "int8", "int4", "gguf-q8_0"], table
    assert rows["fp32"][1].endswith("(1.00×)") and "(0.2" in rows["int8"][1]  # int8: about a quarter of fp32
    assert all(r[3] != "—" for r in rows.values())  # a held-out loss for every variant
    assert "q8_0 weights" in notes


@pytest.fixture(scope="module")
def exported_gguf(served):
    c, _, _ = served
    return c.predict("shakespeare", "q8_0", api_name="/export_gguf")


def test_export_gguf_gives_the_file_and_a_modelfile(served, exported_gguf):
    c, _, _ = served
    gguf, archive, msg = exported_gguf
    assert msg.startswith("✅") and "greedy continuation identical" in msg and "tokenizer identical" in msg, msg
    assert Path(gguf).name == "shakespeare-q8_0.gguf" and Path(gguf).stat().st_size > 100_000
    assert Path(archive).suffix == ".zip"
    # bad inputs come back as messages naming the field
    for run, words in [("", "Run"), ("nope", "not one of this session's runs")]:
        _, _, msg = c.predict(run, "q8_0", api_name="/export_gguf")
        assert msg.startswith("❌") and words in msg and "Traceback" not in msg, msg
    _, _, msg = c.predict("shakespeare", "q2_k", api_name="/export_gguf")
    assert msg.startswith("❌") and "f16, q8_0" in msg, msg


def test_no_argument_makes_a_folder_anywhere_before_it_is_checked(served, tmp_path):
    """/export_gguf's quantization became part of a folder name (preprocess is off, so any text arrives):
    `x/../../…/somewhere/sub` made that folder on the server before the value was checked."""
    c, _, session = served
    target = tmp_path / "planted"
    depth = len(session.root.resolve().parts) + 2
    for quant in (f"x/{'../' * depth}{target.relative_to('/')}/sub", f"x/{'../' * depth}{target}", "../../x"):
        _, _, msg = c.predict("shakespeare", quant, api_name="/export_gguf")
        assert msg.startswith("❌") and "GGUF quantization" in msg and "Traceback" not in msg, msg
    assert not target.exists()
    assert not [p for p in (session.root / "exports").glob("shakespeare-gguf-x*")] if \
        (session.root / "exports").exists() else True


def test_generate_with_int8_weights_and_bad_weights(served):
    c, _, _ = served
    args = ["shakespeare", "ROMEO:\n", 30, 0, 50, 1.0, 1.0, "1"]
    fp32 = c.predict(*args, "fp32", api_name="/generate")
    int8 = c.predict(*args, "int8", api_name="/generate")
    assert fp32.startswith("ROMEO:\n") and int8.startswith("ROMEO:\n") and len(int8) > len("ROMEO:\n") + 10
    assert c.predict(*args, api_name="/generate").startswith("ROMEO:\n")  # older callers: weights default fp32
    bad = c.predict(*args, "int3", api_name="/generate")
    assert bad.startswith("⚠️") and "Weights" in bad, bad


def test_import_gguf_good_and_corrupt(served, exported_gguf, tmp_path):
    from gradio_client import handle_file

    c, store, session = served
    gguf, _, msg = exported_gguf
    assert msg.startswith("✅"), msg
    msg, pick = c.predict(handle_file(gguf), api_name="/import_gguf")
    assert msg.startswith("✅ Imported as **gguf") and "transformer×4" in msg, msg
    name = msg.split("**")[1]
    text = c.predict(name, "ROMEO:\n", 20, 0, 50, 1.0, 1.0, "1", "fp32", api_name="/generate")
    assert text.startswith("ROMEO:\n") and len(text) > 10
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(Path(gguf).read_bytes()[:5000])
    msg, _ = c.predict(handle_file(str(bad)), api_name="/import_gguf")
    assert msg.startswith("❌") and "not a valid GGUF file" in msg and "Traceback" not in msg, msg
    assert not any("broken" in str(p) for p in (session.root / "imports").rglob("*.gguf"))


def _patched(gguf: str, tmp_path, key: bytes, value: int) -> Path:
    """A copy of the file with one uint32 header value changed (what a crafted file does)."""
    import struct

    data = bytearray(Path(gguf).read_bytes())
    at = data.index(key) + len(key)
    assert struct.unpack("<I", data[at:at + 4])[0] == 4  # GGUF value type 4: uint32
    data[at + 4:at + 8] = struct.pack("<I", value)
    out = tmp_path / f"patched-{value}.gguf"
    out.write_bytes(bytes(data))
    return out


def test_a_gguf_header_that_lies_about_its_tensors_is_refused_before_anything_is_built(served, exported_gguf,
                                                                                       tmp_path):
    """block_count patched from 4 to 100 (transformers would build 100 blocks, in time quadratic in the count,
    before any size check saw them), a wider embedding claimed, a context that the position table lacks."""
    from gradio_client import handle_file

    c, _, session = served
    gguf, _, msg = exported_gguf
    before = set((session.root / "imports").iterdir()) if (session.root / "imports").exists() else set()
    for key, value, words in ((b"gpt2.block_count", 100, "block_count says 100, the file holds tensors of 4 blocks"),
                              (b"gpt2.embedding_length", 4096, "token embedding"),
                              (b"gpt2.context_length", 1 << 20, "position table")):
        msg, _ = c.predict(handle_file(str(_patched(gguf, tmp_path, key, value))), api_name="/import_gguf")
        assert msg.startswith("❌") and "header does not match its tensors" in msg and words in msg, msg
    after = set((session.root / "imports").iterdir()) if (session.root / "imports").exists() else set()
    assert after == before, "a refused import left files"


def test_reading_a_gguf_file_has_a_time_limit(served, exported_gguf):
    """The reading runs in a worker process that is stopped at SLM_IMPORT_TIMEOUT (a file can cost minutes of
    CPU in transformers' loader; it once held the app's only import slot for 90 s)."""
    import dataclasses

    from gradio_client import handle_file

    c, store, session = served
    gguf, _, _ = exported_gguf
    limits = store.limits
    store.limits = dataclasses.replace(limits, import_timeout_s=1)  # less than the worker needs to start
    try:
        msg, _ = c.predict(handle_file(gguf), api_name="/import_gguf")
    finally:
        store.limits = limits
    assert msg.startswith("❌") and "took longer than 1 s" in msg, msg
    msg, _ = c.predict(handle_file(gguf), api_name="/import_gguf")  # with the app's own limit it imports
    assert msg.startswith("✅ Imported as"), msg
