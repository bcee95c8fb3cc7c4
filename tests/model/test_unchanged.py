"""Block types became plug-ins (issue 22) without changing what anything computes: for every preset and the
free-order specs of the model tests, the initial weights, logits, generated tokens, estimate, exported
safetensors, GGUF files and pruned weights are the ones recorded before (tests/model/unchanged.py)."""

import json

import pytest
import torch

from tests.model.unchanged import FIXTURE, _tokenizer, record

EXPECTED = json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def tokenizer():
    return _tokenizer()


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the fixture was written: a matmul's rounding can depend on the threads
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_outputs_unchanged(name, tokenizer):
    expected = EXPECTED[name]
    got = {"spec": expected["spec"], **record(name, expected["spec"], tokenizer)}
    got = json.loads(json.dumps(got, sort_keys=True))  # the fixture's JSON types (tuples as lists)
    different = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
    assert not different, f"{name}: {different} changed"
