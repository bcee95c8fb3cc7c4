"""The app starts in-process and its /validate_spec endpoint answers through gradio_client."""

import json

import pytest

from slm_blocks import load_preset


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from gradio_client import Client

    from slm_blocks.ui import build_app
    from slm_blocks.ui.state import Limits, SessionStore

    demo = build_app(SessionStore(Limits(data_dir=tmp_path_factory.mktemp("app")))).queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=None, quiet=True)
    yield Client(url, verbose=False)
    demo.close()


def test_validate_spec_endpoint(client):
    ok, summary = client.predict(load_preset("llama").to_json(), api_name="/validate_spec")
    assert "valid" in ok and "parameters" in summary
    bad = load_preset("llama").to_dict()
    bad["blocks"][2]["attention"]["n_heads"] = 7
    problems, _ = client.predict(json.dumps(bad), api_name="/validate_spec")
    assert "block 2" in problems and "n_heads" in problems and "Traceback" not in problems
    problems, _ = client.predict("{not json", api_name="/validate_spec")
    assert "not valid JSON" in problems
