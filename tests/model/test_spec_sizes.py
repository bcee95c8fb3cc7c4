"""Sizes an empty spec field stands for are resolved by the spec itself, once."""

from slm_blocks.model.spec import AttentionSpec, MLPSpec


def test_empty_sizes_resolve_to_their_defaults():
    a = AttentionSpec(n_heads=8)
    assert a.kv_heads() == 8 and a.head_size(256) == 32
    a = AttentionSpec(n_heads=8, n_kv_heads=2, head_dim=64)
    assert a.kv_heads() == 2 and a.head_size(256) == 64
    assert MLPSpec().hidden_size(96) == 384 and MLPSpec(hidden=100).hidden_size(96) == 100
