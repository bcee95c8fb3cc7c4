"""hub_access: the token a Hub read passes, and what a training worker inherits (tests/ui/test_hub_credentials.py
checks the same end to end against a fake Hub)."""

import os
import subprocess
import sys

from slm_blocks.training import hub_access
from slm_blocks.training.hub_access import read_token, reading_as, worker_env


def test_reads_use_the_request_token_then_the_process_default(monkeypatch):
    monkeypatch.setattr(hub_access, "_process_default", False)
    assert read_token() is False
    with reading_as("hf_visitor"):
        assert read_token() == "hf_visitor"
        with reading_as(False):
            assert read_token() is False
        assert read_token() == "hf_visitor"
    assert read_token() is False


def test_a_worker_never_inherits_the_owners_token():
    env = {"HF_TOKEN": "hf_owner", "HUGGING_FACE_HUB_TOKEN": "hf_owner", "PATH": os.environ["PATH"]}
    for token, handed in ((False, "False"), ("hf_visitor", "hf_visitor")):
        child = worker_env(env, token)
        assert "hf_owner" not in child.values() and child["HF_HUB_DISABLE_IMPLICIT_TOKEN"] == "1"
        code = ("from slm_blocks.training.hub_access import adopt_worker_env, read_token; import os; "
                "adopt_worker_env(); from huggingface_hub import get_token; "
                "print(read_token(), get_token(), 'SLM_HUB_READ_TOKEN' in os.environ)")
        out = subprocess.run([sys.executable, "-c", code], env={**child, "PYTHONPATH": os.getcwd()},
                             capture_output=True, text=True, check=True).stdout.split()
        assert out == [handed, "None", "False"], out
    assert worker_env(env, None) is env  # a local owner's opt-in: the worker reads as the owner, like the CLI
