import numpy as np
import pytest

from volara_assets.ops import relabel


def test_equals_dict_lookup_with_passthrough_and_background():
    rng = np.random.default_rng(1)
    fragments = rng.integers(0, 20, (5, 6, 7)).astype(np.uint64)
    keys = np.array([0, 3, 17, 5, 9, 12], dtype=np.uint64)  # unsorted, maps 0 too
    values = np.array([99, 30, 170, 50, 3, 3], dtype=np.uint64)
    lut = np.stack([keys, values])
    mapping = {int(k): int(v) for k, v in zip(keys, values, strict=True)}
    expected = np.vectorize(lambda x: 0 if x == 0 else mapping.get(int(x), int(x)))(fragments)
    out = relabel(fragments, lut)
    assert out.dtype == np.uint64
    np.testing.assert_array_equal(out, expected.astype(np.uint64))
    assert (out[fragments == 0] == 0).all()
    assert (out[fragments == 4] == 4).all()  # unmapped passes through


def test_empty_lut_is_identity_copy():
    fragments = np.array([[0, 1, 2**40]], dtype=np.uint64)
    out = relabel(fragments, np.zeros((2, 0), dtype=np.uint64))
    np.testing.assert_array_equal(out, fragments)
    out[0, 1] = 7
    assert fragments[0, 1] == 1  # a copy, never a view of the input


def test_large_ids_survive():
    big = 2**63 + 11
    fragments = np.array([0, big, big + 1, 2**32 + 1], dtype=np.uint64)
    lut = np.array([[big, 2**32 + 1], [big + 5, 2**62 + 3]], dtype=np.uint64)
    out = relabel(fragments, lut)
    assert out.tolist() == [0, big + 5, big + 1, 2**62 + 3]


def test_duplicate_key_and_bad_shape_raise():
    with pytest.raises(ValueError, match="fragment id 3"):
        relabel(np.ones(3, np.uint64), np.array([[3, 3], [1, 2]]))
    with pytest.raises(ValueError, match=r"lut: expected shape \(2, K\)"):
        relabel(np.ones(3, np.uint64), np.zeros((3, 2)))
