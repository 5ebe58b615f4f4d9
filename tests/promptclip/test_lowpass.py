"""The input low-pass: rows blurred by their own domain's sigma, the others left bit for bit."""

from __future__ import annotations

import math

import pytest
import torch

from promptclip.lowpass import lowpass, lowpass_rows


def test_each_row_gets_its_own_sigma_and_unfiltered_rows_keep_their_bits():
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    sigmas = [0.0, 0.45, 0.0, 1.0, 0.45]
    out = lowpass_rows(x, sigmas)
    for b, s in enumerate(sigmas):
        want = lowpass(x[b:b + 1], s)[0]
        assert torch.equal(out[b], want), b
    assert torch.equal(out[0], x[0]) and torch.equal(out[2], x[2])
    assert not torch.allclose(out[1], x[1]) and out[3].std() < out[1].std() < x[1].std()  # more sigma, smoother
    assert lowpass_rows(x, [0.0] * 5) is x  # nothing asked: no copy, no op
    assert torch.equal(lowpass_rows(x, [0.45] * 5), lowpass(x, 0.45))


def test_the_blur_keeps_a_flat_image_and_its_mean():
    flat = torch.full((1, 3, 12, 12), 0.7)
    torch.testing.assert_close(lowpass(flat, 0.8), flat)
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(lowpass(x, 0.6).mean(), x.mean(), atol=2e-3, rtol=0)


@pytest.mark.parametrize("sigma", [0.3, 0.45, 1.0, 2.5])
def test_the_blur_is_torchvisions_gaussian_blur_bit_for_bit(sigma):
    """Bundles were trained and calibrated on this blur; a faster one must not move a single bit."""
    from torchvision.transforms.functional import gaussian_blur

    x = torch.randn(3, 3, 40, 40, generator=torch.Generator().manual_seed(3))
    k = 2 * math.ceil(3 * sigma) + 1
    assert torch.equal(lowpass(x, sigma), gaussian_blur(x, [k, k], [sigma, sigma]))
