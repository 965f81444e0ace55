"""R3Trainer: reflect, retry, reward — GRPO on the reflection tokens only.

One step: take failures -> sample G reflections each -> retry after each -> reward 1/0 ->
group advantages -> drop groups with equal rewards -> pack `context + reflection` rows ->
fused span loss (reflection tokens only) -> optimiser step -> weight sync to the sampler.
Before the first step and after the last, the held-out set is measured twice (1st try, 2nd try
after one reflection): the paper's four columns land in `report.md`.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_dir, write_text_atomic
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import R3Config
from .data import pack_step
from .distributed import Dist
from .effect import effect, effect_table, write_effect
from .errors import UserError
from .evaluate import EvalResult, decoding_label, evaluate, format_eval_table
from .failures import FailureSource
from .guard import NonFiniteGuard
from .learner import Learner
from .lora import apply_lora, is_lora, save_merged
from .loss import SpanLoss, check_supported
from .metrics import MetricsLogger, peak_memory_mb, read_metrics
from .model import use_packed_attention
from .models import load_model, resolve_device
from .optim import build_optimizer, build_scheduler
from .progress import progress_bar, quiet_library_bars
from .report import write_report
from .rollout import rollout, to_sequences
from .rundir import check_resume_config, check_run_dir, prepare_run_dir
from .sampling import HFSampler, Sampler, SamplingParams, VLLMSampler
from .seeds import seed_for
from .tasks import get_task

__all__ = ["R3Trainer"]


class R3Trainer:
    """Build from an `R3Config`; pass `task=` (any object with build_prompt/verify/dataset) to
    train on your own task, and `model=`/`tokenizer=` to bring a model already in memory.

    The run directory is checked before anything loads: a non-empty one needs `resume=True` (to
    continue it) or `overwrite=True`; a resume whose config differs from the saved one in fields
    that change the run's meaning needs `allow_config_change=True` (see `rundir.MAY_CHANGE`)."""

    def __init__(
        self,
        config: R3Config,
        *,
        task=None,
        model=None,
        tokenizer=None,
        resume: bool = False,
        overwrite: bool = False,
        allow_config_change: bool = False,
        callbacks: list[Callable[[int, dict], None]] | None = None,
    ) -> None:
        self.cfg = config
        self.run_dir = Path(config.trainer.output_dir)
        quiet_library_bars()
        requested = resolve_device(config.model.device)
        # torchrun: one process per device, each with its own share of the data and its own sampler
        self.dist = Dist.from_env(requested.type)
        self.device = self.dist.device(requested)
        if self.dist.enabled and config.trainer.data_parallel == "fsdp2":
            # Sharded weights would make every generated token a collective (ranks generate different
            # lengths) and every checkpoint a gather; the learner shards (Dist.wrap), the loop not yet.
            raise UserError(
                "trainer.data_parallel=fsdp2 is supported by r3fast.learner.Learner (Dist.wrap), not yet by "
                "the training loop, whose samplers and checkpoints need whole weights: use ddp"
            )
        check_run_dir(self.run_dir, resume=resume, overwrite=overwrite)  # every rank sees the same dir
        self.config_changes = (
            check_resume_config(self.run_dir, config.to_dict(), allow=allow_config_change) if resume else []
        )
        self.dist.barrier()
        # rank 0 alone writes the run directory
        self.notes = (
            prepare_run_dir(self.run_dir, resume=resume, overwrite=overwrite) if self.dist.is_main else []
        )
        self.task = task if task is not None else get_task(config.task.name, **config.task.options)
        mc = config.model
        if model is None:
            model, tokenizer = load_model(
                mc.name, dtype=mc.dtype, device=self.device, load_in_4bit=mc.load_in_4bit,
                compute_dtype=mc.compute_dtype,
            )  # fmt: skip
        elif tokenizer is None:
            raise ValueError("pass tokenizer= together with model=")
        self.model, self.tokenizer = (model if mc.load_in_4bit else model.to(self.device)), tokenizer
        check_supported(self.model)
        # Varlen attention over packed rows (flash-attn / torch varlen / flex / per-sequence SDPA),
        # instead of transformers' dense [T, T] block mask. The reference copy below inherits it.
        use_packed_attention(self.model)
        if mc.gradient_checkpointing:  # non-reentrant: works with LoRA and with our attention kwargs
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if mc.lora is not None:
            self.model = apply_lora(self.model, mc.lora, quantized=mc.load_in_4bit)
        # The reference policy for the KL term, only when it is used: LoRA disables the adapters of the
        # policy itself; a full fine-tune keeps a frozen copy.
        self.ref_model = None
        if config.loss.beta > 0 and mc.lora is None:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        # The learner's forward runs through DDP (world size > 1), which all-reduces the gradients.
        self.module = self.dist.wrap(self.model, config.trainer.data_parallel, self.device)
        self.optimizer = build_optimizer(self.model.parameters(), config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.optim, config.trainer.steps)
        s = config.sampler
        self.loss = SpanLoss(
            config.loss, temperature=s.temperature, max_span_tokens=s.max_reflection_tokens,
            compute_dtype=getattr(torch, mc.compute_dtype),
        )  # fmt: skip
        self.guard = NonFiniteGuard(config.trainer.max_nonfinite_steps)
        lc = config.loss
        self.learner = Learner(
            model=self.model,
            ref_model=self.ref_model,
            loss=self.loss,
            optimizer=self.optimizer,
            guard=self.guard,
            device=self.device,
            grad_clip=config.optim.grad_clip,
            num_iterations=lc.num_iterations,
            is_correction=lc.is_correction,
            is_cap=lc.is_cap,
            ref_adapters_off=lc.beta > 0 and mc.lora is not None,
            dist=self.dist,
            module=self.module,
        )
        self.sampler = self._build_sampler()
        torch.manual_seed(config.trainer.seed)  # after the sampler: vLLM re-seeds the global generator
        self.source = FailureSource(
            task=self.task,
            path=None if config.data.mines_online else config.data.failures,
            online=config.data.mines_online,
            seed=config.trainer.seed,
            tries=config.data.mine_tries,
            rank=self.dist.rank,
            world=self.dist.world,
        )
        # sampling seeds: the run's own at world size 1, one stream per rank beyond
        seed = config.trainer.seed
        self.sample_seed = seed if not self.dist.enabled else seed_for(seed, "rank", self.dist.rank)
        self.callbacks = callbacks or []
        self.step = 0
        self.resumed = resume
        ckpt = latest_checkpoint(self.run_dir) if resume else None
        if ckpt is not None:
            state = load_checkpoint(
                ckpt, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler
            )
            self.step = state["step"]
            self.source.load_state_dict(self._own_source_state(state))
            self.guard.load_state_dict(state.get("guard", {}))
            self._apply_optim_changes()
            self.sampler.sync_weights(self.model)
        t = config.trainer
        self.logger = None  # rank 0 logs
        if self.dist.is_main:
            self.logger = MetricsLogger(
                self.run_dir,
                resume_step=self.step if ckpt else None,
                report_to=t.reporters,
                wandb_project=t.wandb_project,
                config=config.to_dict(),
            )

    def _own_source_state(self, state: dict) -> dict:
        """This rank's failure cursor from a checkpoint (written by a run with the same world size)."""
        sources = state.get("sources", [state.get("source")])
        if len(sources) != self.dist.world:
            raise UserError(
                f"--resume: the checkpoint was written by {len(sources)} process(es); resume it with "
                f"--nproc-per-node {len(sources)} (this run has {self.dist.world})"
            )
        return sources[self.dist.rank]

    def _apply_optim_changes(self) -> None:
        """The checkpoint restores the saved lr peak, betas and weight decay; an allowed change of
        any of them (`allow_config_change`) must win over the saved values, not be ignored."""
        if not any(k.startswith("optim.") for k, _, _ in self.config_changes):
            return
        o = self.cfg.optim
        for group in self.optimizer.param_groups:
            group["betas"], group["weight_decay"] = tuple(o.betas), o.weight_decay
        sched = self.scheduler.state_dict()
        sched["peak"] = [o.lr] * len(sched["peak"])
        self.scheduler.load_state_dict(sched)

    def _build_sampler(self) -> Sampler:
        s = self.cfg.sampler
        if s.backend == "hf":
            return HFSampler(self.model, self.tokenizer, max_batch_size=s.max_batch_size)
        learner_bytes = None
        if s.gpu_memory_utilization == "auto" and self.device.type == "cuda":
            learner_bytes = self.learner.peak_bytes(
                self.cfg.data.max_tokens,
                self.tokenizer.eos_token_id,
                eight_bit=self.cfg.optim.optimizer == "adamw8bit",
            )
        # vLLM raises VLLMUnavailableError with the reason when it cannot run: no fall-back to HF.
        mc = self.cfg.model
        sampler = VLLMSampler(
            mc.name,
            dtype=mc.compute_dtype
            if mc.compute_dtype != "float32"
            else mc.dtype,  # what the learner computes in
            gpu_memory_utilization=s.gpu_memory_utilization,
            learner_bytes=learner_bytes,
            sync_bucket_mb=s.sync_bucket_mb,
            sleep_level=s.sleep_level,
            max_model_len=s.max_model_len,
            seed=self.cfg.trainer.seed,
        )
        sampler.sync_weights(self.model)
        return sampler

    # ---------------------------------------------------------------- sampling parameters

    def _params(
        self, *, reflection: bool, seed: int | None, temperature: float | None = None
    ) -> SamplingParams:
        s = self.cfg.sampler
        return SamplingParams(
            temperature=s.temperature if temperature is None else temperature,
            top_p=s.top_p,
            max_new_tokens=s.max_reflection_tokens if reflection else s.max_answer_tokens,
            seed=seed,
        )

    # ---------------------------------------------------------------- evaluation

    def evaluate(self, n: int | None = None, temperature: float | None = None) -> EvalResult:
        """1st try, then reflection + 2nd try on failures, over the first n held-out examples
        (always the same ones); temperature: default the headline decoding (0 is greedy)."""
        n = self.cfg.trainer.eval_n if n is None else n
        examples = self.task.dataset(n, seed=self.cfg.trainer.seed, split="eval")
        t = self.cfg.trainer.eval_temperatures[0] if temperature is None else temperature
        seed = self.cfg.trainer.seed
        self.sampler.wake()
        try:
            return evaluate(
                self.sampler,
                self.tokenizer,
                self.task,
                examples,
                answer_params=self._params(
                    reflection=False, seed=seed_for(seed, "eval-answer"), temperature=t
                ),
                reflection_params=self._params(
                    reflection=True, seed=seed_for(seed, "eval-reflect"), temperature=t
                ),
                chunk_size=self.cfg.sampler.chunk_size,
                progress=self.cfg.trainer.progress,
                reflect_prompt=self.cfg.task.reflect_prompt,
            )
        finally:
            self.sampler.sleep()

    def _final_evals(self, name: str) -> dict[str, EvalResult]:
        """One evaluation per decoding of `trainer.eval_temperatures` (or, for the vanilla model
        after a resume, their saved results), every example's texts saved as eval_<name>_<decoding>.json."""
        if self.cfg.trainer.eval_n <= 0:
            return {}
        out = {}
        for t in self.cfg.trainer.eval_temperatures:
            label = decoding_label(t)
            path = self.run_dir / f"eval_{name}_{label.replace('=', '')}.json"
            if name == "vanilla" and self.resumed and path.is_file():
                out[label] = EvalResult.from_json(json.loads(path.read_text()))
                continue
            res = self.evaluate(temperature=t)
            write_text_atomic(path, json.dumps({"summary": res.summary(), "records": res.records}, indent=1))
            out[label] = res
        return out

    # ---------------------------------------------------------------- one step

    def _learn(self, seqs) -> dict:
        """One step's learning: its packed rows (a pure function of seqs, seed, step), then μ updates."""
        d = self.cfg.data
        plan, rows = None, []
        if seqs:
            plan, rows = pack_step(
                seqs,
                max_tokens=d.max_tokens,
                shared_prefix=d.shared_prefix,
                seed=self.sample_seed,
                step=self.step,
            )
        return self.learner.step(plan, rows, label=f"step {self.step + 1}")

    def _rollout_metrics(self, local: dict) -> dict:
        """Rollout metrics over every rank: counts summed, rates averaged (equal shares)."""
        if not self.dist.enabled:
            return local
        keys = sorted(k for k, v in local.items() if isinstance(v, (int, float)))
        total = dict(zip(keys, self.dist.sum([float(local[k]) for k in keys], self.device)))
        counts = {"groups", "groups_with_signal", "groups_all_equal_dropped"}
        return {k: int(v) if k in counts else v / self.dist.world for k, v in total.items()}

    def train_step(self) -> dict:
        # Every draw of the step from its own named stream: a resumed run samples what the straight run did.
        cfg, seed, step = self.cfg, self.sample_seed, self.step
        t0 = time.perf_counter()
        self.sampler.wake()
        failures = self.source.next(
            cfg.data.failures_per_step,
            sampler=self.sampler,
            tokenizer=self.tokenizer,
            params=self._params(reflection=False, seed=seed_for(seed, "mine", step)),
            progress=cfg.trainer.progress,
        )
        result = rollout(
            self.sampler,
            self.tokenizer,
            self.task,
            failures,
            group_size=cfg.sampler.group_size,
            reflection_params=self._params(reflection=True, seed=seed_for(seed, "reflect", step)),
            answer_params=self._params(reflection=False, seed=seed_for(seed, "retry", step)),
            chunk_size=cfg.sampler.chunk_size,
            progress=cfg.trainer.progress,
            reflect_prompt=cfg.task.reflect_prompt,
        )
        self.sampler.sleep()
        t1 = time.perf_counter()
        metrics = {**self._rollout_metrics(result.metrics()), "lr": self.scheduler.get_last_lr()[0]}
        # no group with a signal (on any rank): nothing to learn from, the weights stay as they are
        metrics.update(
            self._learn(to_sequences(result.kept, mask_truncated=cfg.loss.mask_truncated_completions))
        )
        self.scheduler.step()
        t2 = time.perf_counter()
        self.sampler.sync_weights(self.model)
        t3 = time.perf_counter()
        metrics.update(
            rollout_s=t1 - t0,
            learner_s=t2 - t1,
            sync_s=t3 - t2,
            step_s=t3 - t0,
            tokens_per_s=metrics["tokens"] / max(t2 - t1, 1e-9),
            peak_memory_mb=peak_memory_mb(self.device),
            updated=metrics["updates"] > 0,
        )
        self.step += 1
        return metrics

    # ---------------------------------------------------------------- the loop

    def save(self) -> Path | None:
        """A checkpoint (rank 0 writes it, holding every rank's failure cursor); None on other ranks."""
        self.guard.check_weights(self.model, f"checkpoint at step {self.step}")
        sources = self.dist.gather(self.source.state_dict())
        if not self.dist.is_main:
            self.dist.barrier()
            return None
        path = save_checkpoint(
            self.run_dir,
            self.step,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            tokenizer=self.tokenizer,
            keep=self.cfg.trainer.keep_checkpoints,
            trainer_state={
                "source": sources[0],
                "sources": sources,
                "guard": self.guard.state_dict(),
                "config": self.cfg.to_dict(),
            },
        )
        self.dist.barrier()
        return path

    def export(self) -> Path:
        """The final model as a plain HF directory: `r3fast eval --model <run>/final` loads it."""
        self.guard.check_weights(self.model, "final export")
        dest = self.run_dir / "final"
        with atomic_dir(dest) as tmp:
            if is_lora(self.model):  # merged weights (plain from_pretrained), the adapter in final/adapter
                save_merged(self.model, tmp, self.tokenizer)
            else:
                self.model.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
        return dest

    def _periodic_eval(self) -> dict:
        """`trainer.eval_every`: the same small held-out set each time, so the curve compares."""
        res = self.evaluate(self.cfg.trainer.eval_every_n)
        return {"eval_first_try": res.first_acc, "eval_second_try": res.second_acc}

    def _on_main(self, fn: Callable[[], Any], default: Any = None) -> Any:
        """fn() on rank 0 (evaluation, logging, files) while the other ranks wait at a barrier."""
        out = fn() if self.dist.is_main else default
        self.dist.barrier()
        return out

    def _start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.run_dir / "config.json", json.dumps(self.cfg.to_dict(), indent=1))
        if self.cfg.trainer.progress:
            lines = list(self.notes) + [self.logger.describe()]
            lines += [f"resume: applying changed {k}: {a!r} -> {b!r}" for k, a, b in self.config_changes]
            if self.dist.enabled:
                lines.append(f"data parallel: {self.dist.world} processes ({self.cfg.trainer.data_parallel})")
            print("\n".join(lines), flush=True)

    def train(self) -> dict:
        t_start = time.perf_counter()
        cfg = self.cfg.trainer
        self._on_main(self._start)
        vanilla = self._on_main(lambda: self._final_evals("vanilla"), {})
        bar = progress_bar(
            total=cfg.steps,
            initial=self.step,
            desc="train",
            unit="steps",
            enabled=cfg.progress and self.dist.is_main,
            every_update=True,
        )
        while self.step < cfg.steps:
            metrics = self.train_step()
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                metrics.update(self._on_main(self._periodic_eval, {}))
            self._on_main(lambda m=metrics: self.logger.log(self.step, m))
            if metrics["tokens"]:  # steps without a learner pass neither break nor extend a streak
                self.guard.record(metrics["skipped_nonfinite"], self.step)
            loss = metrics["loss"]
            bar.set_postfix(
                reward=f"{metrics['reward_mean']:.2f}",
                loss=f"{loss:.3g}" if math.isfinite(loss) else "non-finite (step skipped)",
            )
            bar.update(1)
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                self.save()
            for cb in self.callbacks:
                cb(self.step, metrics)
        bar.close()
        self.save()
        summary = self._on_main(lambda: self._finish(vanilla, t_start), {"steps": self.step})
        self.dist.close()
        return summary

    def _finish(self, vanilla: dict[str, EvalResult], t_start: float) -> dict:
        """Rank 0, after the last step: final/, the trained model's evaluations, effect and report."""
        final = self.export()
        trained = self._final_evals("trained")
        self.logger.close()
        summary = {"steps": self.step, "final_model": str(final), "seconds": time.perf_counter() - t_start}
        effects = {k: effect(vanilla[k], trained[k]) for k in vanilla}
        if effects:
            for k in vanilla:
                print(format_eval_table({f"vanilla {k}": vanilla[k], f"trained {k}": trained[k]}))
            print(effect_table(effects))
            summary["effect"] = write_effect(self.run_dir, effects, self.cfg.to_dict(), summary["seconds"])
        report = write_report(
            self.run_dir,
            title=f"R3 on {getattr(self.task, 'name', 'task')} — {self.cfg.model.name}",
            effects=effects,
            metrics=read_metrics(self.logger.path),
            config=self.cfg.to_dict(),
            seconds=summary["seconds"],
        )
        summary["report"] = str(report)
        write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=1))
        return summary
