"""Learner memory by component: full fine-tune vs LoRA vs LoRA + gradient checkpointing.

For each setting, a fresh subprocess builds the learner (policy, KL reference, AdamW), runs one
step over recorded R3 lengths and reports, in MiB:

    weights      every parameter of the policy (frozen base included)
    grads        gradients of the trainable parameters (their dtype)
    optimizer    AdamW's two moments of the trainable parameters
    reference    the frozen KL reference: a full copy, or 0 for LoRA (adapters disabled)
    activations  measured: the storages autograd keeps for the backward of the largest row (saved-tensor
                 hooks; parameters excluded), the memory gradient checkpointing trades for recompute
    sampler      a colocated vLLM's own weights copy in its dtype (its KV cache is sized apart:
                 sampler.gpu_memory_utilization on CUDA, 1 GiB by default on CPU)

The first four are counted exactly from the tensors; activations are measured; peak_total is the
process's peak (CUDA: torch's peak allocation over a step; CPU: peak RSS, libraries included).

    python benchmarks/bench_memory.py                                   # CPU, SmolLM2-135M
    python benchmarks/bench_memory.py --device cuda --dims qwen2.5-1.5b --compute-dtype bfloat16

Prints a table; writes benchmarks/results/memory_<device>_<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_vs_trl import DIMS, sequences  # noqa: E402  (same recorded lengths, same random dims)

SETTINGS = {
    "full": {},
    "lora": {"lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}},
    "lora+ckpt": {
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "ckpt": True,
    },
    "full+ckpt": {"ckpt": True},
}
MIB = 2**20


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def nbytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def saved_for_backward(learner, row, plan) -> int:
    """Bytes the autograd graph of one row holds for its backward (activations), parameters excluded:
    every distinct storage the forward saves, seen through saved-tensor hooks (device-independent;
    with gradient checkpointing only what the checkpoints keep)."""
    import torch

    model, loss = learner.model, learner.loss
    ref = learner.ref_logprobs(row)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = loss(model, row, plan, ref_logp=ref)
    out.loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def child(args) -> None:
    import copy

    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from r3fast.config import LossConfig
    from r3fast.data import TrainSequence, pack_step
    from r3fast.guard import NonFiniteGuard
    from r3fast.learner import Learner
    from r3fast.lora import apply_lora, merged_weights
    from r3fast.loss import SpanLoss
    from r3fast.model import use_packed_attention
    from r3fast.models import resolve_model_path

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    setting = SETTINGS[args.child]
    if args.dims:
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(Qwen2Config(**DIMS[args.dims], max_position_embeddings=4096))
    else:
        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(args.model), dtype=torch.float32)
    model = use_packed_attention(model.to(dev, getattr(torch, args.dtype)))
    if setting.get("ckpt"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ref = None
    if "lora" in setting:
        model = apply_lora(model, setting["lora"])
    elif args.beta > 0:
        ref = copy.deepcopy(model).eval().requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-6)
    loss = SpanLoss(LossConfig(beta=args.beta), temperature=0.9, max_span_tokens=512,
                    compute_dtype=getattr(torch, args.compute_dtype))  # fmt: skip
    off = "lora" in setting and args.beta > 0
    learner = Learner(model=model, ref_model=ref, loss=loss, optimizer=opt, guard=NonFiniteGuard(3),
                      device=dev, grad_clip=1.0, ref_adapters_off=off)  # fmt: skip
    vocab = model.config.vocab_size
    seqs = [TrainSequence.from_parts(p, r, a, group_id=g) for p, r, a, g in
            sequences(Path(args.lengths), args.groups, vocab)]  # fmt: skip
    plan, rows = pack_step(seqs, max_tokens=args.max_tokens, shared_prefix=True, seed=0, step=0)
    # warm-up step: allocates the grads and AdamW's moments, so the measured step sees them resident
    learner.step(plan, rows)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    learner.step(plan, rows)
    total = torch.cuda.max_memory_allocated() if dev.type == "cuda" else peak_rss()
    act = max(saved_for_backward(learner, row.to(dev), plan) for row in rows)
    serve = 2 if args.compute_dtype == "bfloat16" else next(model.parameters()).element_size()
    out = {
        "weights_mb": nbytes(model.parameters()) / MIB,
        "trainable_params": sum(p.numel() for p in trainable),
        "grads_mb": nbytes(trainable) / MIB,
        "optimizer_mb": 2 * sum(p.numel() * 4 for p in trainable) / MIB,
        "reference_mb": (nbytes(ref.parameters()) if ref is not None else 0) / MIB,
        "activations_mb": act / MIB,
        "sampler_weights_mb": sum(t.numel() for _, t in merged_weights(model)) * serve / MIB,
        "peak_total_mb": total / MIB,
        "tokens": sum(r.num_tokens for r in rows),
    }
    print("RESULT " + json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--dims", default=None, choices=sorted(DIMS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument(
        "--lengths", default=str(ROOT / "benchmarks" / "results" / "r3_lengths_countdown-paper_smollm2.json")
    )
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--beta", type=float, default=0.001)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if a.child:
        return child(a)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items()
             if k not in ("settings", "child", "out") and v is not None]  # fmt: skip
    rows = {}
    for name in a.settings:
        cmd = [sys.executable, __file__, *flags, "--child", name]
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
        rows[name] = json.loads(line[7:])
    cols = ["weights_mb", "grads_mb", "optimizer_mb", "reference_mb", "activations_mb", "sampler_weights_mb",
            "peak_total_mb"]  # fmt: skip
    print(
        f"{'setting':<10} " + " ".join(f"{c.removesuffix('_mb'):>14}" for c in cols) + f" {'trainable':>12}"
    )
    for name, r in rows.items():
        print(f"{name:<10} " + " ".join(f"{r[c]:>14.0f}" for c in cols) + f" {r['trainable_params']:>12,}")
    date = dt.date.today().strftime("%Y%m%d")
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"memory_{a.device}_{date}.json"
    import torch
    import transformers

    out.write_text(json.dumps({
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": a.device if a.device != "cpu" else f"cpu ({platform.processor() or platform.machine()})",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "args": {k: v for k, v in vars(a).items() if k != "child"},
        "settings": rows,
        "notes": "MiB. weights/grads/optimizer/reference counted from the tensors; activations = storages "
                 "saved for backward by the largest row (hooks); peak_total = process peak. "
                 "Shared-prefix rows.",
    }, indent=1))  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
