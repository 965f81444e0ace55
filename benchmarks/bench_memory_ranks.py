"""Per-rank learner memory, DDP vs FSDP2: measured at 2 ranks on CPU (gloo), computed at 1.5B-8B.

Measured: for each model and mode, 2 spawned ranks build the learner as `r3fast train` does
(`Dist.wrap`, `wrap_reference`, AdamW, the HF sampler's own whole copy under FSDP2), take one learner
step over recorded R3 lengths, and count what rank 0 holds from its tensors (local shards), next to
the accounting of benchmarks/memory_ranks.py for the same model (they must agree), the process's
peak RSS, and the seconds and bytes of one sampler refresh from the shards (`sync_weights`).
Computed: the same accounting on meta-device models of 1.5B / 7B / 8B at 1, 2, 4, 8 ranks, full
fine-tuning (DDP, FSDP2), LoRA and QLoRA (DDP), with what fits an 80 GB GPU.

    python benchmarks/bench_memory_ranks.py    # writes benchmarks/results/memory_ranks_cpu_<date>.json
    python benchmarks/bench_memory_ranks.py --models tiny --out /tmp/m.json   # seconds
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from bench_vs_trl import DIMS, sequences  # noqa: E402
from memory_ranks import MODELS, measured_bytes, meta_model, static_bytes  # noqa: E402

GIB = 2**30
FIT_GIB = 64  # static bytes that fit an 80 GB GPU with 16 GiB left for activations and vLLM's KV cache
ITEMS = ["weights", "grads", "optimizer", "reference", "sampler", "gathered"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build(model_name: str):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from r3fast.models import resolve_model_path

    torch.manual_seed(0)
    if model_name in DIMS:
        return Qwen2ForCausalLM(Qwen2Config(**DIMS[model_name], max_position_embeddings=4096))
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(model_name), dtype=torch.float32)


def _rank(rank: int, world: int, port: int, model_name: str, mode: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    import copy

    import torch

    from r3fast.config import LossConfig
    from r3fast.data import TrainSequence, pack_step
    from r3fast.distributed import Dist
    from r3fast.guard import NonFiniteGuard
    from r3fast.learner import Learner
    from r3fast.loss import SpanLoss
    from r3fast.model import use_packed_attention
    from r3fast.policy import inference_copy
    from r3fast.sampling.hf import HFSampler

    torch.set_num_threads(1)
    dist, cpu = Dist.from_env("cpu"), torch.device("cpu")
    model = use_packed_attention(_build(model_name)).train()
    expected = static_bytes(model, mode=mode, world=world, sampler="hf", serving_bytes=4, compute_bytes=4)
    gen = inference_copy(model, "float32") if mode == "fsdp2" else None
    ref = dist.wrap_reference(copy.deepcopy(model).eval().requires_grad_(False), mode, cpu,
                              compute_dtype=torch.float32)  # fmt: skip
    module = dist.wrap(model, mode, cpu)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    loss = SpanLoss(LossConfig(beta=0.001), temperature=0.9, max_span_tokens=512)
    learner = Learner(model=model, ref_model=ref, loss=loss, optimizer=opt, guard=NonFiniteGuard(3),
                      device=cpu, grad_clip=1.0, dist=dist, module=module)  # fmt: skip
    vocab = model.config.vocab_size
    lengths = ROOT / "benchmarks" / "results" / "r3_lengths_countdown-paper_smollm2.json"
    seqs = [
        TrainSequence.from_parts(p, r, a, group_id=g)
        for p, r, a, g in sequences(lengths, 4, vocab, seed=rank)
    ]
    plan, rows = pack_step(seqs, max_tokens=4096, shared_prefix=True, seed=0, step=0)
    learner.step(plan, rows)  # AdamW's moments allocated
    row = rows[0].to(cpu)
    out_, _ = loss(module, row, learner._global_plan(plan, len(rows))[0], ref_logp=learner.ref_logprobs(row))
    out_.loss.backward()  # gradients resident, as during a step
    got = measured_bytes(model, opt, reference=ref, sampler_model=gen)
    opt.zero_grad(set_to_none=True)
    sync = None
    if gen is not None:
        sampler = HFSampler(gen, _Tok(), own_weights=True)
        t0 = time.perf_counter()
        sampler.sync_weights(model)
        sync = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if rank == 0:
        Path(out).write_text(
            json.dumps({"measured": got, "accounted": expected, "peak_rss": rss, "sync_s": sync})
        )
    del module, ref, learner
    dist.close()


class _Tok:  # HFSampler reads only the pad and eos ids at construction; the refresh generates nothing
    pad_token_id, eos_token_id = 0, 1


def measure(model_name: str, mode: str, world: int = 2) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r.json")
        mp.spawn(_rank, args=(world, _port(), model_name, mode, out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def computed(worlds: list[int]) -> list[dict]:
    rows = []
    for name in MODELS:
        model = meta_model(name)
        params = sum(p.numel() for p in model.parameters())
        for setting, mode in [("full", "ddp"), ("full", "fsdp2"), ("lora", "ddp"), ("qlora", "ddp")]:
            for world in worlds if setting == "full" else [1]:
                b = static_bytes(model, mode=mode, world=world, setting=setting)
                total = sum(b.values())
                rows.append({"model": name, "params": params, "setting": setting, "mode": mode,
                             "world": world, **{k: v / GIB for k, v in b.items()},
                             "total_gib": total / GIB, "fits_80gb": total / GIB <= FIT_GIB})  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny", "smollm2-135m-instruct"])
    p.add_argument("--worlds", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--out", default=None)
    a = p.parse_args()
    measured = {f"{m}/{mode}": measure(m, mode) for m in a.models for mode in ("ddp", "fsdp2")}
    print("measured at 2 ranks (rank 0), MiB; accounted = benchmarks/memory_ranks.py")
    print(f"{'model/mode':<30}" + "".join(f"{k:>11}" for k in ITEMS[:-1]) + f"{'rss':>9}{'sync s':>8}")
    for key, r in measured.items():
        cells = "".join(f"{r['measured'][k] / 2**20:>11.1f}" for k in ITEMS[:-1])
        sync = "" if r["sync_s"] is None else f"{r['sync_s']:>8.3f}"
        print(f"{key:<30}{cells}{r['peak_rss'] / 2**20:>9.0f}{sync}")
        acc = {k: r["accounted"][k] for k in ITEMS[:-1]}
        if acc != r["measured"]:
            sys.exit(f"{key}: the accounting {acc} differs from the tensors {r['measured']}")
    rows = computed(a.worlds)
    print(f"\ncomputed, GiB per rank (static; fits: <= {FIT_GIB} GiB of an 80 GB GPU)")
    print(f"{'model':<14}{'setting':>8}{'mode':>7}{'ranks':>6}" + "".join(f"{k:>10}" for k in ITEMS)
          + f"{'total':>8}{'fits':>6}")  # fmt: skip
    for r in rows:
        fits = "yes" if r["fits_80gb"] else "no"
        cells = "".join(f"{r[k]:>10.1f}" for k in ITEMS)
        print(f"{r['model']:<14}{r['setting']:>8}{r['mode']:>7}{r['world']:>6}{cells}{r['total_gib']:>8.1f}{fits:>6}")
    import torch
    import transformers

    date = dt.date.today().strftime("%Y%m%d")
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"memory_ranks_cpu_{date}.json"
    out.write_text(json.dumps({
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": f"cpu ({platform.processor() or platform.machine()}), gloo, 2 ranks x 1 thread",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "measured_2_ranks": measured,
        "computed": rows,
        "notes": "Bytes of rank 0. measured: counted from its tensors after one learner step with its "
                 "gradients resident (fp32 everywhere on CPU, HF sampler: FSDP2 keeps a whole copy, DDP "
                 "shares the module), equal to the accounting; peak_rss: the process's; sync_s: one "
                 "refresh of that copy from the shards. computed: fp32 master/grads/AdamW, bf16 serving "
                 f"copy for vLLM, reference fp32 (beta > 0); fits: static <= {FIT_GIB} GiB.",
    }, indent=1))  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
