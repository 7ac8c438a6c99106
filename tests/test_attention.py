"""Window attention, its shifted variant and rotary positions."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from fractalflow.model.attention import HeadRMSNorm, apply_rope, global_attention, rope_angles, window_attention


def qkv(height, width, heads=2, head_dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, height, width, heads, head_dim, generator=generator) for _ in range(3)]


def reference_window_attention(q, k, v, window, shift):
    """Dense attention with a mask written from the definition of Swin's shifted windows."""
    batch, height, width, heads, head_dim = q.shape
    full_h, full_w = height + (-height % window), width + (-width % window)

    def key(row, col):
        rolled_r, rolled_c = (row - shift) % full_h, (col - shift) % full_w
        wrapped = (rolled_r + shift >= full_h, rolled_c + shift >= full_w)
        return rolled_r // window, rolled_c // window, wrapped

    cells = list(itertools.product(range(height), range(width)))
    groups = [key(r, c) for r, c in cells]
    mask = torch.tensor([[a == b for b in groups] for a in groups])

    def flat(t):
        return t.reshape(batch, height * width, heads, head_dim).transpose(1, 2)

    out = F.scaled_dot_product_attention(flat(q), flat(k), flat(v), attn_mask=mask)
    return out.transpose(1, 2).reshape(q.shape)


def test_window_equals_global_when_window_covers_map():
    q, k, v = qkv(8, 8)
    for shift in (0, 4):
        torch.testing.assert_close(window_attention(q, k, v, window=8, shift=shift), global_attention(q, k, v))


@pytest.mark.parametrize("height,width,window,shift", [(8, 8, 4, 0), (8, 8, 4, 2), (6, 10, 4, 2), (7, 5, 4, 0)])
def test_window_attention_matches_dense_reference(height, width, window, shift):
    q, k, v = qkv(height, width)
    expected = reference_window_attention(q, k, v, window, shift)
    torch.testing.assert_close(window_attention(q, k, v, window, shift), expected, atol=1e-5, rtol=1e-5)


def test_window_attention_is_local():
    q, k, v = qkv(8, 8)
    before = window_attention(q, k, v, window=4, shift=0)
    k2, v2 = k.clone(), v.clone()
    k2[:, 6, 6] += 5.0
    v2[:, 6, 6] += 5.0
    after = window_attention(q, k2, v2, window=4, shift=0)
    torch.testing.assert_close(after[:, :4, :4], before[:, :4, :4])
    assert not torch.allclose(after[:, 4:, 4:], before[:, 4:, 4:])


def test_rope_scores_depend_only_on_relative_offset():
    head_dim = 16
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(head_dim, generator=generator), torch.randn(head_dim, generator=generator)
    cos, sin = rope_angles(12, 12, head_dim, torch.device("cpu"))

    def score(qpos, kpos):
        return (apply_rope(q, cos[qpos][0], sin[qpos][0]) * apply_rope(k, cos[kpos][0], sin[kpos][0])).sum()

    torch.testing.assert_close(score((1, 2), (3, 7)), score((6, 4), (8, 9)))
    assert not torch.allclose(score((1, 2), (3, 7)), score((1, 2), (7, 3)))


def test_head_rms_norm_is_nn_rms_norm_in_fp32_and_stays_in_bf16_under_autocast():
    norm = HeadRMSNorm(32)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    reference = torch.nn.RMSNorm(32)
    reference.load_state_dict(norm.state_dict())
    x = torch.randn(4, 8, 32)
    assert torch.equal(norm(x), reference(x))
    half = norm(x.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), reference(x), rtol=2e-2, atol=2e-2)
