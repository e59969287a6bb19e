"""Window sums of pixel covariances (conv and pooling rules) against a direct numpy loop."""

import itertools

import numpy as np
import pytest

from owidth.kernels import spatial as sp


def naive(x, groups, window, strides, pads, out):
    """sum_d x[..., st s + d - lo, ...] with the same offset d on every group; zeros outside."""
    res = np.zeros(x.shape[:groups[0][0]] + tuple(out) * len(groups))
    lead = groups[0][0]
    for idx in itertools.product(*[range(o) for o in out * len(groups)]):
        acc = np.zeros(x.shape[:lead])
        for d in itertools.product(*[range(f) for f in window]):
            src = []
            for g in range(len(groups)):
                for i in range(len(window)):
                    src.append(idx[g * len(window) + i] * strides[i] + d[i] - pads[i][0])
            if all(0 <= v < x.shape[groups[g][i]] for g in range(len(groups)) for i, v in
                   enumerate(src[g * len(window):(g + 1) * len(window)])):
                acc = acc + x[(Ellipsis,) + tuple(src)] if lead == 0 else acc + x[(slice(None),) * lead + tuple(src)]
        res[(slice(None),) * lead + idx] = acc
    return res


@pytest.mark.parametrize("case", [
    ((5, 4), (3, 3), (1, 1), "SAME", 2, 2),   # flat-shift path: stride 1, same size, two groups
    ((5, 4), (3, 2), (1, 1), "SAME", 1, 3),   # one group (diagonal representation), 3 leading axes
    ((6, 5), (2, 2), (2, 2), "VALID", 2, 2),  # general path: strides (pooling)
    ((7,), (3,), (2,), "SAME", 2, 1),          # 1-D, strided, padded
    ((6, 6), (3, 3), (1, 1), "VALID", 2, 2),  # VALID: smaller output (general path)
])
def test_window_sum_matches_a_direct_loop(case):
    spatial, window, strides, padding, n_groups, lead = case
    out, pads = sp.out_shape_and_pads("test", spatial, window, strides, padding)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2,) * lead + tuple(spatial) * n_groups)
    groups = sp.pixel_groups(lead, len(spatial), n_groups == 2)
    got = np.asarray(sp.window_sum(x, groups, window, strides, pads, out))
    np.testing.assert_allclose(got, naive(x, groups, window, strides, pads, out), rtol=1e-13, atol=1e-13)
    if n_groups == 2:  # symmetric input (groups swapped) -> symmetric output, bit for bit
        perm = tuple(range(lead)) + tuple(range(lead + len(spatial), lead + 2 * len(spatial))) + \
            tuple(range(lead, lead + len(spatial)))
        xs = x + np.transpose(x, perm)
        ys = np.asarray(sp.window_sum(xs, groups, window, strides, pads, out))
        assert np.array_equal(ys, np.transpose(ys, perm))
