"""Generate streams in chunks: a few updates for 200 tokens made in ~0.4 s, not one per token, the last one always
the whole text."""

import time

from slm_blocks.ui.streaming import chunked


def tokens(n: int, every_s: float):
    text = ""
    for i in range(n):
        time.sleep(every_s)
        text += "ab"[i % 2]
        yield text


def test_200_tokens_in_a_few_updates_and_the_last_is_whole():
    t0 = time.monotonic()
    out = list(chunked(tokens(200, 0.002), interval_s=0.08))
    took = time.monotonic() - t0
    assert out[-1] == "ab" * 100
    assert out[0] == "a"  # the first token at once
    assert len(out) <= took / 0.08 + 2, (len(out), took)
    assert all(len(a) < len(b) for a, b in zip(out, out[1:]))


def test_interval_zero_passes_every_update():
    assert list(chunked(iter(["a", "ab", "abc"]), interval_s=0)) == ["a", "ab", "abc"]
    assert list(chunked(iter([]))) == []


def test_one_thread_per_step_and_restored():
    import torch

    from slm_blocks.ui.streaming import one_thread

    before = torch.get_num_threads()
    seen = list(one_thread(torch.get_num_threads() for _ in range(3)))
    assert seen == [1, 1, 1] and torch.get_num_threads() == before
