"""Same loss, same gradients as TRL's own GRPOTrainer code (trl pinned in the test extras).

TRL's side is its real `GRPOTrainer._compute_loss` (with its own log-prob path, fused LM head and
reference model), fed the R3 sequences as TRL lays them out: prompt = context (left-padded),
completion = reflection (right-padded), one call per micro-batch with TRL's gradient-accumulation
normalisers. r3fast's side is its packed learner (packed rows, span kernel, step-wide normalisers).
Both start from the same tiny model saved to disk, in fp32.
"""

from __future__ import annotations

import random

import pytest
import torch
from conftest import tiny_llama
from r3fast.kernels.reference import naive_is_weights

from r3fast.config import LearnerConfig, LossConfig
from r3fast.data import TrainSequence, pack_step
from r3fast.guard import NonFiniteGuard
from r3fast.learner import Learner, correction_weights
from r3fast.loss import SpanLoss
from r3fast.model import use_packed_attention

trl = pytest.importorskip("trl", reason="trl is in r3fast's test extras (.ci/setup installs it)")

TEMPERATURE, MAX_COMPLETION = 0.9, 16
REPORT: list[tuple[str, float, float]] = []  # (case, loss rel diff, max grad rel diff), printed with -s
LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]  # every loss type both trainers define


@pytest.fixture(scope="module", autouse=True)
def print_report():
    """With -s: the measured loss and gradient differences of every case, after the module."""
    yield
    for what, dl, dg in REPORT:
        print(f"parity vs TRL  {what:<45} loss rel {dl:.1e}  grad rel (max over params) {dg:.1e}")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, smol_tokenizer):
    d = tmp_path_factory.mktemp("tiny")
    tiny_llama(len(smol_tokenizer), seed=3).save_pretrained(d)
    smol_tokenizer.save_pretrained(d)
    return d


def make_sequences(vocab: int, seed: int = 0) -> list[TrainSequence]:
    """2 groups x 4 reflections: each group one prefix, reflections of 3..16 tokens."""
    rng = random.Random(seed)
    seqs = []
    for g in range(2):
        prefix = [rng.randrange(3, vocab) for _ in range(rng.randint(12, 30))]
        advs = [rng.gauss(0, 1) for _ in range(4)]
        for a in advs:
            refl = [rng.randrange(3, vocab) for _ in range(rng.randint(3, MAX_COMPLETION))]
            seqs.append(TrainSequence.from_parts(prefix, refl, a, group_id=g))
    return seqs


def trl_trainer(
    model_dir, tokenizer, loss_type: str, beta: float, bias_kl: bool, micro_batches: int, **extra
):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=str(model_dir / f"trl-{loss_type}"),
        loss_type=loss_type,
        beta=beta,
        epsilon=0.2,
        epsilon_high=extra.pop("epsilon_high", 0.28),
        temperature=TEMPERATURE,
        max_completion_length=MAX_COMPLETION,
        use_bias_correction_kl=bias_kl,
        num_generations=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=micro_batches,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        **extra,
    )
    tr = GRPOTrainer(
        model=str(model_dir),  # a path: TRL loads the policy and its reference model itself
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["unused"] * 2}),
        processing_class=tokenizer,
    )
    tr.current_gradient_accumulation_steps = micro_batches  # set by HF Trainer's loop during training
    move_away(tr.model)  # TRL's reference stays the saved model
    return tr


def trl_inputs(seqs: list[TrainSequence], pad: int) -> dict:
    """TRL's batch layout: prompts left-padded, completions right-padded, with masks."""
    p_len = max(s.span_start for s in seqs)
    c_len = max(s.span_len for s in seqs)
    prompt = torch.full((len(seqs), p_len), pad)
    pmask = torch.zeros(len(seqs), p_len, dtype=torch.long)
    comp = torch.full((len(seqs), c_len), pad)
    cmask = torch.zeros(len(seqs), c_len, dtype=torch.long)
    for i, s in enumerate(seqs):
        ctx, refl = s.input_ids[: s.span_start], s.input_ids[s.span_start : s.span_end]
        prompt[i, p_len - len(ctx) :], pmask[i, p_len - len(ctx) :] = torch.tensor(ctx), 1
        comp[i, : len(refl)], cmask[i, : len(refl)] = torch.tensor(refl), 1
    return {
        "prompt_ids": prompt,
        "prompt_mask": pmask,
        "completion_ids": comp,
        "completion_mask": cmask,
        "advantages": torch.tensor([s.advantage for s in seqs]),
    }


def trl_step(tr, micro_batches: list[list[TrainSequence]], old: dict | None, pad: int, is_ratio=None):
    """Σ over micro-batches of TRL's loss (what its accumulation loop backpropagates) and the grads.
    is_ratio: {id(sequence): [span] importance-sampling ratio}, fed as TRL's vLLM correction."""
    model = tr.model
    model.train()
    model.zero_grad(set_to_none=True)
    total_tokens = sum(s.span_len for mb in micro_batches for s in mb)
    loss_sum = 0.0
    for mb in micro_batches:
        inputs = trl_inputs(mb, pad)
        inputs["num_items_in_batch"] = torch.tensor(float(total_tokens))
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        att = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        keep = inputs["completion_ids"].shape[1]
        if tr.beta != 0:
            with torch.no_grad():
                inputs["ref_per_token_logps"] = tr._get_per_token_logps_and_entropies(
                    tr.ref_model, ids, att, keep
                )[0]
        if old is not None:
            o = torch.zeros(len(mb), keep)
            for i, s in enumerate(mb):
                o[i, : s.span_len] = old[id(s)]
            inputs["old_per_token_logps"] = o
        if is_ratio is not None:  # what _generate_and_score_completions hands on with vLLM's correction
            tr.use_vllm = tr.vllm_importance_sampling_correction = True
            w = torch.ones(len(mb), keep)  # padding: ratio 1 (TRL zeroes the log-ratio gap there)
            for i, s in enumerate(mb):
                w[i, : s.span_len] = is_ratio[id(s)]
            inputs["importance_sampling_ratio"] = w
        loss = tr._compute_loss(model, inputs)
        loss.backward()
        loss_sum += float(loss)
    return loss_sum, {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


class GradCapture(torch.optim.Optimizer):
    """An optimiser whose step records the gradients it is handed (and changes nothing)."""

    def __init__(self, params):
        super().__init__(list(params), {})
        self.seen: dict[int, torch.Tensor] = {}

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.seen[id(p)] = p.grad.detach().clone()


@torch.no_grad()
def move_away(model: torch.nn.Module) -> torch.nn.Module:
    """The policy a few steps into training: the saved weights plus a fixed perturbation, so that
    it differs from the reference and the KL term and its gradient are not zero."""
    for i, p in enumerate(model.parameters()):
        g = torch.Generator().manual_seed(100 + i)
        p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model


def r3fast_model(model_dir, *, policy: bool = True):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return use_packed_attention(move_away(model) if policy else model)


def r3fast_step(
    model_dir, seqs, cfg: LossConfig, *, max_tokens: int, shared_prefix: bool, old=None, sampler=None,
    learner_cfg: LearnerConfig | None = None,
):
    """Loss and grads of r3fast's learner over the same sequences (ratio from `old` when given;
    with `sampler` log-probs, the learner's correction weights from old vs sampler)."""
    model = r3fast_model(model_dir)
    ref = r3fast_model(model_dir, policy=False).eval().requires_grad_(False) if cfg.beta > 0 else None
    loss = SpanLoss(cfg, temperature=TEMPERATURE, max_span_tokens=MAX_COMPLETION)
    plan, rows = pack_step(seqs, max_tokens=max_tokens, shared_prefix=shared_prefix, seed=0, step=0)
    opt = GradCapture(model.parameters())
    learner = Learner(model=model, ref_model=ref, loss=loss, optimizer=opt, guard=NonFiniteGuard(3),
                      device=torch.device("cpu"), grad_clip=0.0)  # fmt: skip
    if old is None:
        metrics = learner.step(plan, rows)
    else:  # the loss layer the learner runs, with a given old policy
        model.train()
        metrics = {"loss": 0.0}
        scale = loss.micro_batch_scale(len(rows))
        for row in rows:
            src = row.seq_index[row.span_mask].tolist()
            pos = {}
            o = []
            for k in src:  # span tokens of a sequence come in order
                o.append(float(old[id(seqs[k])][pos.get(k, 0)]))
                pos[k] = pos.get(k, 0) + 1
            r = loss.logprobs(ref, row) if ref is not None else None
            w = None
            if sampler is not None:
                samp = per_row(sampler, seqs, row)
                lc = learner_cfg or LearnerConfig()
                w, _ = correction_weights(torch.tensor(o), samp, row.seq_index[row.span_mask],
                                          lc.is_correction, lc.is_clip_max, lc.is_clip_min)  # fmt: skip
            out, _ = loss(model, row, plan, ref_logp=r, old_logp=torch.tensor(o), is_weights=w)
            (out.loss * scale).backward()
            metrics["loss"] += float(out.loss) * scale
        opt.step()
    grads = {n: opt.seen[id(p)] for n, p in model.named_parameters() if id(p) in opt.seen}
    return metrics["loss"], grads, rows


def per_row(values: dict, seqs, row) -> torch.Tensor:
    """[M] of a row: values[id(sequence)][k] for the row's span tokens, in order."""
    pos, out = {}, []
    for k in row.seq_index[row.span_mask].tolist():
        out.append(float(values[id(seqs[k])][pos.get(k, 0)]))
        pos[k] = pos.get(k, 0) + 1
    return torch.tensor(out)


# Both sides are fp32 with different summation orders (packed rows vs padded batches, a span kernel
# vs log_softmax): a sum of K terms is off by ≲ K·eps relative, eps = 2^-23 ≈ 1.2e-7. The loss sums
# ≲ 2·16 span terms per sequence over 8 sequences (K ≈ 100: 1.2e-5 worst case, ~√K·eps typically);
# a gradient entry also sums over V = 49k-wide softmax columns and the layers' matmuls, measured by
# its norm, where the errors average out. Bounds: 1e-5 (loss) and 2e-5 (gradient norm).
LOSS_RTOL, GRAD_RTOL = 1e-5, 2e-5


def assert_same(trl_loss, trl_grads, loss, grads, what):
    assert loss == pytest.approx(trl_loss, rel=LOSS_RTOL, abs=1e-7), what
    assert set(grads) == set(trl_grads), what
    for name, g in trl_grads.items():
        err = (grads[name] - g).norm() / g.norm().clamp_min(1e-12)
        assert err < GRAD_RTOL, f"{what}: {name} relative gradient error {err:.2e}"
    REPORT.append((what, abs(loss - trl_loss) / max(abs(trl_loss), 1e-12), max(
        float((grads[n] - g).norm() / g.norm().clamp_min(1e-12)) for n, g in trl_grads.items())))


def rows_as_micro_batches(seqs, rows):
    return [[seqs[k] for k in dict.fromkeys(r.seq_index[r.seq_index >= 0].tolist())] for r in rows]


@pytest.mark.parametrize("bias_kl", [False, True], ids=["k3", "bias_corrected_kl"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_and_gradients_equal_trls(model_dir, smol_tokenizer, loss_type, bias_kl):
    """ratio ≠ 1 (an old policy is given), β > 0, asymmetric ε, two micro-batches."""
    seqs = make_sequences(len(smol_tokenizer))
    g = torch.Generator().manual_seed(1)
    # an old policy near the current one: ratios on both sides of the clip range
    probe = r3fast_model(model_dir)
    loss = SpanLoss(LossConfig(), temperature=TEMPERATURE, max_span_tokens=MAX_COMPLETION)
    _, rows = pack_step(seqs, max_tokens=10_000, shared_prefix=False, seed=0, step=0)
    cur = loss.logprobs(probe, rows[0])
    src = rows[0].seq_index[rows[0].span_mask]
    old = {
        id(s): cur[src == k] + 0.3 * torch.randn(int((src == k).sum()), generator=g)
        for k, s in enumerate(seqs)
    }

    cfg = LossConfig(loss_type=loss_type, beta=0.04, eps_low=0.2, eps_high=0.28, bias_correction_kl=bias_kl)
    mine, grads, rows = r3fast_step(model_dir, seqs, cfg, max_tokens=100, shared_prefix=False, old=old)
    assert len(rows) >= 2, "the test needs more than one micro-batch"
    # TRL's micro-batches: equal halves (its per-device batch), except bnpo, whose loss is defined per
    # micro-batch: there TRL gets r3fast's rows
    mbs = rows_as_micro_batches(seqs, rows) if loss_type == "bnpo" else [seqs[:4], seqs[4:]]
    tr = trl_trainer(model_dir, smol_tokenizer, loss_type, 0.04, bias_kl, len(mbs))
    theirs, their_grads = trl_step(tr, mbs, old, smol_tokenizer.pad_token_id)
    assert_same(theirs, their_grads, mine, grads, f"{loss_type} bias_kl={bias_kl}")


@pytest.mark.parametrize("shared_prefix", [False, True], ids=["packed", "shared_prefix"])
def test_the_learner_step_equals_trls(model_dir, smol_tokenizer, shared_prefix):
    """The trainer's own path (μ = 1, so ratio ≡ 1; β = 0.001 as in the paper; dapo), whole step."""
    seqs = make_sequences(len(smol_tokenizer), seed=5)
    cfg = LossConfig(loss_type="dapo", beta=0.001)
    mine, grads, rows = r3fast_step(
        model_dir, seqs, cfg, max_tokens=60 if shared_prefix else 120, shared_prefix=shared_prefix
    )
    assert len(rows) >= 2
    tr = trl_trainer(model_dir, smol_tokenizer, "dapo", 0.001, False, 2)
    theirs, their_grads = trl_step(tr, [seqs[:4], seqs[4:]], None, smol_tokenizer.pad_token_id)
    assert_same(theirs, their_grads, mine, grads, f"learner shared_prefix={shared_prefix}")


def old_policy(model_dir, seqs, scale: float = 0.3, seed: int = 1) -> dict:
    """{id(sequence): [span] log-probs near the current policy's}: ratios on both sides of the clip."""
    g = torch.Generator().manual_seed(seed)
    probe = r3fast_model(model_dir)
    loss = SpanLoss(LossConfig(), temperature=TEMPERATURE, max_span_tokens=MAX_COMPLETION)
    _, rows = pack_step(seqs, max_tokens=10_000, shared_prefix=False, seed=0, step=0)
    cur = loss.logprobs(probe, rows[0])
    src = rows[0].seq_index[rows[0].span_mask]
    return {
        id(s): cur[src == k] + scale * torch.randn(int((src == k).sum()), generator=g)
        for k, s in enumerate(seqs)
    }


# Every (loss type, ratio level) TRL 1.16 offers beyond the four above and r3fast accepts
# (r3fast refuses what TRL only warns about: see LossConfig).
NEW_CASES = [("cispo", "token"), ("sapo", "token"), ("sapo", "sequence"), ("luspo", "sequence"),
             ("vespo", "token"), ("grpo", "sequence")]  # fmt: skip
# cispo's eps_high is the cap ε_max on the ratio itself: 1.2 caps some tokens and not others
EPS_HIGH = {"cispo": 1.2}


@pytest.mark.parametrize("beta,bias_kl", [(0.0, False), (0.04, False), (0.04, True)],
                         ids=["beta0", "k3", "bias_corrected_kl"])  # fmt: skip
@pytest.mark.parametrize("loss_type,level", NEW_CASES, ids=[f"{t}-{lv}" for t, lv in NEW_CASES])
def test_new_loss_types_equal_trls(model_dir, smol_tokenizer, loss_type, level, beta, bias_kl):
    """cispo, sapo, luspo, vespo and GSPO's sequence ratio: ratio ≠ 1 (an old policy, as at μ = 2),
    asymmetric ε, two micro-batches of packed rows."""
    seqs = make_sequences(len(smol_tokenizer))
    old = old_policy(model_dir, seqs)
    eps_high = EPS_HIGH.get(loss_type, 0.28)
    cfg = LossConfig(loss_type=loss_type, importance_sampling_level=level, beta=beta, eps_low=0.2,
                     eps_high=eps_high, bias_correction_kl=bias_kl)  # fmt: skip
    mine, grads, rows = r3fast_step(model_dir, seqs, cfg, max_tokens=100, shared_prefix=False, old=old)
    assert len(rows) >= 2, "the test needs more than one micro-batch"
    tr = trl_trainer(model_dir, smol_tokenizer, loss_type, beta, bias_kl, 2, epsilon_high=eps_high,
                     importance_sampling_level=level)  # fmt: skip
    theirs, their_grads = trl_step(tr, [seqs[:4], seqs[4:]], old, smol_tokenizer.pad_token_id)
    assert_same(theirs, their_grads, mine, grads, f"{loss_type}/{level} beta={beta} bias_kl={bias_kl}")


@pytest.mark.parametrize("loss_type", ["grpo", "luspo"])
def test_sequence_ratios_on_shared_prefix_rows_equal_trls(model_dir, smol_tokenizer, loss_type):
    """One ratio per sequence id, also when a group's sequences share one prefix in a row."""
    seqs = make_sequences(len(smol_tokenizer), seed=5)
    old = old_policy(model_dir, seqs, seed=2)
    cfg = LossConfig(loss_type=loss_type, importance_sampling_level="sequence", beta=0.04,
                     eps_low=0.2, eps_high=0.28)  # fmt: skip
    mine, grads, rows = r3fast_step(model_dir, seqs, cfg, max_tokens=60, shared_prefix=True, old=old)
    assert len(rows) >= 2
    tr = trl_trainer(model_dir, smol_tokenizer, loss_type, 0.04, False, 2,
                     importance_sampling_level="sequence")  # fmt: skip
    theirs, their_grads = trl_step(tr, [seqs[:4], seqs[4:]], old, smol_tokenizer.pad_token_id)
    assert_same(theirs, their_grads, mine, grads, f"{loss_type} shared prefix")


IS_CASES = [("dapo", "token_truncate", 0.8, 1.2), ("dapo", "token_mask", 0.8, 1.2),
            ("dapo", "sequence_truncate", 0.5, 2.0), ("grpo", "sequence_mask", 0.5, 2.0),
            ("vespo", "token_truncate", 0.8, 1.2), ("vespo", "token_mask", None, 1.2)]  # fmt: skip


@pytest.mark.parametrize("loss_type,mode,clip_min,clip_max", IS_CASES,
                         ids=[f"{t}-{m}" for t, m, _, _ in IS_CASES])  # fmt: skip
def test_is_correction_modes_equal_trls(model_dir, smol_tokenizer, loss_type, mode, clip_min, clip_max):
    """TRL's four vLLM importance-sampling modes, from the sampler's log-probs: r3fast's learner
    weights vs TRL's ratio (TRL's formula, written out in the oracle) applied by TRL's own loss."""
    seqs = make_sequences(len(smol_tokenizer), seed=7)
    old = old_policy(model_dir, seqs, seed=3)
    g = torch.Generator().manual_seed(4)
    sampler = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in old.items()}
    cfg = LossConfig(loss_type=loss_type, beta=0.04, eps_low=0.2, eps_high=0.28)
    lc = LearnerConfig(is_correction=mode, is_clip_min=clip_min, is_clip_max=clip_max)
    mine, grads, rows = r3fast_step(model_dir, seqs, cfg, max_tokens=100, shared_prefix=False, old=old,
                                    sampler=sampler, learner_cfg=lc)  # fmt: skip
    assert len(rows) >= 2
    ids = torch.cat([torch.full((len(old[id(s)]),), k) for k, s in enumerate(seqs)])
    flat = naive_is_weights(torch.cat([old[id(s)] for s in seqs]), torch.cat([sampler[id(s)] for s in seqs]),
                            ids, mode, clip_min, clip_max).float()  # fmt: skip
    is_ratio = {id(s): flat[ids == k] for k, s in enumerate(seqs)}
    assert 0 < sum(int(((v == 0) | (v == clip_max)).sum()) for v in is_ratio.values()), "no bound acted"
    tr = trl_trainer(model_dir, smol_tokenizer, loss_type, 0.04, False, 2)
    theirs, their_grads = trl_step(tr, [seqs[:4], seqs[4:]], old, smol_tokenizer.pad_token_id, is_ratio)
    assert_same(theirs, their_grads, mine, grads, f"{loss_type} {mode}")
