"""Same loss and gradients as Liger's `LigerFusedLinearGRPOLoss` (liger-kernel pinned in the test
extras), for every loss type both define, on the same hidden states, lm_head weight, tokens,
advantages, old and reference log-probs; both KL gradients (plain k3 and the ratio-weighted one)."""

from __future__ import annotations

import pytest
import torch
from r3fast.kernels import span_grpo_loss

liger = pytest.importorskip("liger_kernel.chunked_loss", reason="liger-kernel is in the test extras")

B, T, H, V, TAU = 5, 11, 24, 203, 0.9


def problem(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([11, 3, 7, 1, 9])  # completions of different lengths, right-padded
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # [B, T]
    hidden = torch.randn(B, T, H, generator=g)
    weight = 0.4 * torch.randn(V, H, generator=g)
    ids = torch.randint(0, V, (B, T), generator=g)
    logp = torch.log_softmax((hidden @ weight.T) / TAU, -1).gather(-1, ids[..., None]).squeeze(-1)
    return dict(
        hidden=hidden,
        weight=weight,
        ids=ids,
        mask=mask,
        adv=torch.randn(B, generator=g),
        old=logp + 0.3 * torch.randn(B, T, generator=g),  # ratios on both sides of the clip range
        ref=logp + 0.3 * torch.randn(B, T, generator=g),
    )


def compare(p: dict, liger_kw: dict, mine_kw: dict) -> tuple[float, float, float]:
    """Liger's loss (on [B, T] rows) and r3fast's (on the flattened masked positions) on problem p,
    forward and both gradients compared; returns (|Δloss|, |their loss|, max |Δgrad|)."""
    theirs_loss = liger.LigerFusedLinearGRPOLoss(
        compiled=False, use_ref_model=True, chunk_size=2, temperature=TAU, max_completion_length=T, **liger_kw
    )
    h1 = p["hidden"].clone().requires_grad_()
    w1 = p["weight"].clone().requires_grad_()
    out = theirs_loss(
        h1, w1, p["ids"], p["mask"], p["adv"], ref_per_token_logps=p["ref"], old_per_token_logps=p["old"]
    )
    theirs = out[0] if isinstance(out, tuple) else out
    theirs.backward()

    h2 = p["hidden"].reshape(B * T, H).clone().requires_grad_()
    w2 = p["weight"].clone().requires_grad_()
    mine = span_grpo_loss(
        h2, w2, p["ids"].reshape(-1), p["mask"].reshape(-1).bool(),
        p["adv"][:, None].expand(B, T).reshape(-1), old_logp=p["old"].reshape(-1),
        ref_logp=p["ref"].reshape(-1), temperature=TAU,
        seq_ids=torch.arange(B)[:, None].expand(B, T).reshape(-1), impl="torch", **mine_kw,
    )  # fmt: skip
    mine.loss.backward()
    # fp32 on both sides, different chunking and summation order
    torch.testing.assert_close(mine.loss, theirs.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h2.grad.reshape(B, T, H), h1.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w2.grad, w1.grad, rtol=1e-4, atol=1e-6)
    dg = max((h2.grad.reshape(B, T, H) - h1.grad).abs().max().item(), (w2.grad - w1.grad).abs().max().item())
    return (mine.loss - theirs).abs().item(), abs(theirs.item()), dg


@pytest.mark.parametrize("bias_kl", [False, True], ids=["k3", "bias_corrected_kl"])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_loss_and_gradients_equal_liger(loss_type, bias_kl):
    compare(
        problem(seed=7),
        dict(beta=0.04, epsilon_low=0.2, epsilon_high=0.28, loss_type=loss_type,
             use_bias_correction_kl=bias_kl),
        # dr_grpo: Liger divides by B × max_completion_length, as TRL does
        dict(beta=0.04, eps_low=0.2, eps_high=0.28, loss_type=loss_type, bias_correction_kl=bias_kl,
             num_items=B * T if loss_type == "dr_grpo" else None),
    )  # fmt: skip


# The types and levels Liger 0.8.5 shares with TRL and r3fast. Liger refuses sapo at the sequence
# level; its luspo scales the whole [B, T] per-token loss (padding included) by the sequence length,
# which equals TRL's only when the per-token loss is one value per sequence: sequence level, β = 0.
LIGER_NEW = [("cispo", "token", 0.04), ("sapo", "token", 0.04), ("vespo", "token", 0.04),
             ("grpo", "sequence", 0.04), ("luspo", "sequence", 0.0)]  # fmt: skip


@pytest.mark.parametrize("loss_type,level,beta", LIGER_NEW, ids=[f"{t}-{lv}" for t, lv, _ in LIGER_NEW])
def test_new_loss_types_equal_liger(loss_type, level, beta):
    eps_high = 1.2 if loss_type == "cispo" else 0.28  # cispo: the cap ε_max on the ratio itself
    dl, theirs, dg = compare(
        problem(seed=11),
        dict(beta=beta, epsilon_low=0.2, epsilon_high=eps_high, loss_type=loss_type,
             importance_sampling_level=level),
        dict(beta=beta, eps_low=0.2, eps_high=eps_high, loss_type=loss_type, ratio_level=level),
    )  # fmt: skip
    print(f"parity vs Liger {loss_type}/{level}: loss abs {dl:.1e} (rel {dl / theirs:.1e}), "
          f"grad max abs {dg:.1e}")  # fmt: skip
