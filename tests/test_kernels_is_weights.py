"""Importance weights on the clipped surrogate (sampler/learner correction): TRL's placement, by hand.

L_t = −min(r_t·A_t, clip(r_t)·A_t)·w_t + β·k3_t, dapo reduction (Σ/M); logp from float64 logits.
Nothing here shares code with the implementation under test.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import pytest
from r3fast.kernels import span_grpo_loss

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def by_hand(hidden, weight, targets, mask, adv, old, ref, w, beta, eps_low, eps_high):
    z = hidden[mask].double() @ weight.double().T  # [M, V]
    logp = torch.log_softmax(z, -1).gather(1, targets[mask][:, None])[:, 0]
    ratio = torch.exp(logp - old.double())
    a = adv[mask].double()
    surrogate = -torch.minimum(ratio * a, ratio.clamp(1 - eps_low, 1 + eps_high) * a)
    d = ref.double() - logp
    return (surrogate * w.double() + beta * (torch.exp(d) - d - 1)).sum() / mask.sum()


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("full_length", [False, True])
def test_is_weights_scale_the_surrogate_only(impl, full_length):
    g = torch.Generator().manual_seed(7)
    n, h, v = 33, 12, 101
    hidden, weight = torch.randn(n, h, generator=g), torch.randn(v, h, generator=g) * 0.5
    targets, adv = torch.randint(0, v, (n,), generator=g), torch.randn(n, generator=g)
    mask = torch.rand(n, generator=g) < 0.6
    m = int(mask.sum())
    old, ref = -3 - torch.rand(m, generator=g) * 3, -3 - torch.rand(m, generator=g) * 3
    w = torch.rand(m, generator=g) * 2  # truncated IS weights in [0, 2]; some near 0
    kw = dict(beta=0.05, eps_low=0.2, eps_high=0.28)
    args = [x.to(DEVICE) for x in (hidden, weight, targets, mask, adv, old, ref, w)]
    hid, wt = args[0].clone().requires_grad_(), args[1].clone().requires_grad_()
    want = by_hand(hid, wt, *args[2:], **kw)
    want_grads = torch.autograd.grad(want, (hid, wt))
    is_w = torch.zeros(n, device=DEVICE).masked_scatter(args[3], args[7]) if full_length else args[7]
    hid2, wt2 = args[0].clone().requires_grad_(), args[1].clone().requires_grad_()
    got = span_grpo_loss(hid2, wt2, args[2], args[3], args[4], old_logp=args[5], ref_logp=args[6],
                         is_weights=is_w, loss_type="dapo", impl=impl, **kw)  # fmt: skip
    assert got.loss.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    for a, b in zip(torch.autograd.grad(got.loss, (hid2, wt2)), want_grads, strict=True):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-6)
    # and without the weights the loss differs: the test would see them ignored
    plain = span_grpo_loss(hid2, wt2, args[2], args[3], args[4], old_logp=args[5], ref_logp=args[6],
                           loss_type="dapo", impl=impl, **kw)  # fmt: skip
    assert abs(plain.loss.item() - want.item()) > 1e-3
