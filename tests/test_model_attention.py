"""Attention backends for packed rows: masks, backend choice, the registered function, CUDA kernels."""

from __future__ import annotations

import random

import pytest
import torch
from test_data_common import VOCAB, random_groups, single_thread, tiny_model, token_logp

from r3fast.data import pack_groups, pack_sequences
from r3fast.model import available_backends, forward_hidden, select_backend, use_packed_attention
from r3fast.model.attention import dense_packed_mask, flex_block_mask

CPU = torch.device("cpu")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _brute_mask(doc: list[int], br: list[int]) -> torch.Tensor:
    t = len(doc)
    m = torch.zeros(t, t, dtype=torch.bool)
    for q in range(t):
        for k in range(q + 1):
            m[q, k] = doc[q] == doc[k] and (br[k] == 0 or br[k] == br[q])
    return m


@pytest.mark.parametrize("shared", [False, True])
def test_masks_match_brute_force(shared: bool) -> None:
    from torch.nn.attention.flex_attention import create_mask

    seqs = random_groups(random.Random(30), 3, 3, (3, 7), (1, 5))
    (row,) = (pack_groups if shared else pack_sequences)(seqs, 500)
    cu = row.cu_seqlens.tolist()
    doc = [d for d in range(len(cu) - 1) for _ in range(cu[d + 1] - cu[d])]
    br = row.branch_ids.tolist() if shared else [0] * len(doc)
    want = _brute_mask(doc, br)
    assert torch.equal(dense_packed_mask(row.cu_seqlens, row.branch_ids)[0, 0], want)
    block = flex_block_mask(row.cu_seqlens, row.branch_ids)
    got = create_mask(block.mask_mod, None, None, row.num_tokens, row.num_tokens, device="cpu")
    assert torch.equal(got[0, 0], want)


def test_backend_choice_on_cpu() -> None:
    assert available_backends(CPU, torch.float32, grad=True) == ["sdpa"]
    assert available_backends(CPU, torch.float32, grad=False) == ["sdpa", "flex"]
    assert select_backend(CPU, torch.bfloat16) == "sdpa"
    with pytest.raises(ValueError, match="unknown attention backend"):
        select_backend(CPU, torch.float32, prefer="xformers")
    with pytest.raises(ValueError, match="not available"):
        select_backend(CPU, torch.float32, prefer="torch_varlen")
    gpu = available_backends(torch.device("cuda"), torch.bfloat16, tree=True)
    assert gpu == ["flex", "sdpa"]  # varlen kernels cannot apply a tree mask


def test_compiled_flex_is_not_chosen_for_heads_under_16() -> None:
    """Inductor's flex_attention refuses head_dim < 16 (seen on an H200 with the tests' tiny models):
    such a model gets SDPA on CUDA, and asking for flex says why."""
    cuda = torch.device("cuda")
    assert "flex" in available_backends(cuda, torch.float32, head_dim=16)
    assert available_backends(cuda, torch.float32, head_dim=8) == ["sdpa"]
    assert select_backend(cuda, torch.float32, tree=True, head_dim=8) == "sdpa"
    with pytest.raises(ValueError, match="head_dim=8"):
        select_backend(cuda, torch.float32, prefer="flex", head_dim=8)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("shared", [False, True])
def test_cpu_flex_forward_matches_sdpa(shared: bool) -> None:
    """flex's mask_mod path end to end (forward only: flex has no CPU backward)."""
    model = use_packed_attention(tiny_model("qwen2"))
    seqs = random_groups(random.Random(31), 2, 4, (9, 15), (2, 7))
    (row,) = (pack_groups if shared else pack_sequences)(seqs, 500)
    with torch.no_grad():
        h_flex, name = forward_hidden(model, row, backend="flex")
        h_sdpa, _ = forward_hidden(model, row, backend="sdpa")
    assert name == "flex"
    torch.testing.assert_close(h_flex, h_sdpa, atol=1e-5, rtol=0)


def test_registered_attention_is_plain_sdpa_outside_forward_hidden() -> None:
    """A model switched to r3fast_packed still generates right with padding (e.g. the HF sampler)."""
    ref, ours = tiny_model("llama"), use_packed_attention(tiny_model("llama"))
    ids = torch.randint(0, VOCAB, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :5] = 0  # left padding
    with torch.no_grad():
        a = ref(input_ids=ids, attention_mask=mask).logits
        b = ours(input_ids=ids, attention_mask=mask).logits
        ga = ref.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
        gb = ours.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=1e-5, rtol=0)
    assert torch.equal(ga, gb)


def test_backend_argument_needs_registered_attention() -> None:
    model = tiny_model("llama")
    (row,) = pack_sequences(random_groups(random.Random(32), 1, 2, (4, 4), (2, 2)), 50)
    with pytest.raises(ValueError, match="use_packed_attention"):
        forward_hidden(model, row, backend="sdpa")


# --- CUDA: written for the GPU machine; skipped without CUDA ---------------------------------------


def _cuda_case(arch: str, dtype: torch.dtype, shared: bool, backend: str) -> None:
    """Packed span log-probs with `backend` vs each sequence alone in fp32 (the ground truth).

    The packed error must be no worse than the same model run unpacked in the same dtype, plus a tolerance.
    """
    dev = torch.device("cuda")
    ref_model = tiny_model(arch).to(dev)
    model = use_packed_attention(tiny_model(arch).to(dev, dtype))
    low_model = tiny_model(arch).to(dev, dtype)
    seqs = random_groups(random.Random(40), 4, 8, (150, 250), (20, 120))
    rows = (pack_groups if shared else pack_sequences)(seqs, 4096)
    packed: dict[int, torch.Tensor] = {}
    for row in rows:
        row = row.to(dev)
        h, name = forward_hidden(model, row, backend=backend)
        assert name == backend
        lp = token_logp(model, h, row.targets)
        (lp * row.advantages * row.span_mask).sum().backward()  # backward must run on this backend
        for i in row.seq_index[row.span_mask].unique().tolist():
            packed[i] = lp[row.span_mask & (row.seq_index == i)].detach().float()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    with torch.no_grad():
        for i, s in enumerate(seqs):
            t = torch.tensor(s.input_ids, device=dev)
            sl = slice(s.span_start - 1, s.span_end - 1)
            truth = _logp_dev(ref_model, t)[sl]
            low = _logp_dev(low_model, t)[sl]
            err, base = (packed[i] - truth).abs().max(), (low - truth).abs().max()
            assert err <= base + tol, f"seq {i}: packed err {err:.3g} vs unpacked {base:.3g}"


def _logp_dev(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    h = model.get_decoder()(input_ids=ids[None], use_cache=False).last_hidden_state[0]
    tgt = torch.cat([ids[1:], ids.new_full((1,), -100)])
    return token_logp(model, h, tgt).float()


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("backend", ["flash_attn_varlen", "torch_varlen", "flex"])
def test_cuda_packed_backends(arch: str, backend: str) -> None:
    if backend not in available_backends(torch.device("cuda"), torch.bfloat16):
        pytest.skip(f"{backend} not installed on this machine")
    _cuda_case(arch, torch.bfloat16, shared=False, backend=backend)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_flex_tree_mask(dtype: torch.dtype) -> None:
    _cuda_case("llama", dtype, shared=True, backend="flex")


def test_sliding_window_models_refused() -> None:
    """The packed backends model no sliding window: refuse instead of silently attending too far."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, use_sliding_window=True, sliding_window=4,
                      max_window_layers=0)  # fmt: skip
    model = use_packed_attention(Qwen2ForCausalLM(cfg).eval())
    (row,) = pack_sequences(random_groups(random.Random(33), 1, 2, (6, 6), (3, 3)), 50)
    with pytest.raises(NotImplementedError, match="sliding"):
        forward_hidden(model, row)
