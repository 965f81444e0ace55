"""Where is a task in the model's zone of proximal development? (issue: the R3 effect)

For each task setting: first-try accuracy (greedy and sampled), and for the sampled failures the
R3 signal a training step would see — G reflections each, one retry after each: retry success,
fraction of groups whose rewards differ (the only ones GRPO learns from), reflection length and
truncation rate. One vLLM (or HF) engine serves every setting.

    python benchmarks/probe_zone.py --n 200 --settings '[{"num_numbers": 2, "ops": "+-"}]'

Prints a table and writes JSON (device, versions, date, every figure).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch
import transformers

from r3fast.evaluate import evaluate
from r3fast.failure_file import Failure
from r3fast.models import load_model, load_tokenizer
from r3fast.prompts import REFLECT_PROMPT
from r3fast.rollout import rollout
from r3fast.sampling import HFSampler, SamplingParams, VLLMSampler
from r3fast.tasks import get_task

RESULTS = Path(__file__).resolve().parent / "results"


def probe(
    sampler, tok, task, n, group, answer_tokens, reflection_tokens, temp, reflect_prompt=REFLECT_PROMPT
):
    ex = task.dataset(n, seed=0, split="eval")
    ans = lambda t, s: SamplingParams(temperature=t, max_new_tokens=answer_tokens, seed=s)  # noqa: E731
    refl = lambda t, s: SamplingParams(temperature=t, max_new_tokens=reflection_tokens, seed=s)  # noqa: E731

    def run(t: float, seed: int):
        return evaluate(sampler, tok, task, ex, answer_params=ans(t, seed),
                        reflection_params=refl(t, seed + 1), progress=False,
                        reflect_prompt=reflect_prompt)  # fmt: skip

    row = {}
    for label, t in (("greedy", 0.0), ("sampled", temp)):
        r = run(t, 1)
        reflected = sum("reflection" in x for x in r.records)
        row[label] = {"first": r.first_acc, "second": r.second_acc, "seconds": r.seconds,
                      "reflections": reflected}  # fmt: skip
    # The training signal: sampled first-try failures, G reflections each.
    r = run(temp, 3)
    fails = [Failure(example=x["example"], attempt=x["first_try"]) for x in r.records if not x["first_ok"]]
    fails = fails[: max(8, n // 6)]
    t0 = time.perf_counter()
    res = rollout(
        sampler,
        tok,
        task,
        fails,
        group_size=group,
        reflection_params=refl(temp, 5),
        answer_params=ans(temp, 6),
        progress=False,
        reflect_prompt=reflect_prompt,
    )
    m = res.metrics()
    row["rollout"] = {
        k: m[k]
        for k in (
            "retry_success",
            "frac_groups_with_signal",
            "reflection_len_mean",
            "reflection_truncated_frac",
        )
    }
    row["rollout"].update(failures=len(fails), seconds=time.perf_counter() - t0)
    row["examples"] = [
        {
            "question": task.build_prompt(g.failure.example)[-1]["content"],
            "attempt": g.failure.attempt,
            "reflection": g.reflections[0].text,
            "retry": g.retries[0],
            "reward": g.rewards[0],
        }
        for g in res.groups[:3]
    ]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="countdown")
    p.add_argument("--settings", required=True, help="JSON list of task-option mappings")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--answer-tokens", type=int, default=32)
    p.add_argument("--reflection-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--tag", default="")
    p.add_argument("--reflect-prompt", default=REFLECT_PROMPT)
    a = p.parse_args()
    tok = load_tokenizer(a.model)
    if a.backend == "vllm":
        sampler = VLLMSampler(a.model, dtype="float32")  # what the trainer serves (model.dtype)
        sampler.wake()
    else:
        model, tok = load_model(a.model)
        sampler = HFSampler(model, tok)
    rows = []
    for opts in json.loads(a.settings):
        task = get_task(a.task, **opts)
        t0 = time.perf_counter()
        row = probe(
            sampler,
            tok,
            task,
            a.n,
            a.group,
            a.answer_tokens,
            a.reflection_tokens,
            a.temperature,
            a.reflect_prompt,
        )
        row.update(options=opts, seconds=time.perf_counter() - t0)
        rows.append(row)
        g, s, r = row["greedy"], row["sampled"], row["rollout"]
        print(
            f"{json.dumps(opts):<60} greedy {g['first']:.2f}/{g['second']:.2f}  "
            f"T={a.temperature} {s['first']:.2f}/{s['second']:.2f}  retry {r['retry_success']:.3f} "
            f"signal {r['frac_groups_with_signal']:.2f} len {r['reflection_len_mean']:.0f} "
            f"trunc {r['reflection_truncated_frac']:.2f}  {row['seconds']:.0f}s",
            flush=True,
        )
    out = RESULTS / f"probe_zone_{date.today():%Y%m%d}{a.tag}.json"
    out.write_text(
        json.dumps(
            {
                "args": vars(a),
                "device": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "date": str(date.today()),
                "rows": rows,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
