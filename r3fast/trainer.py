"""R3Trainer: reflect, retry, reward — GRPO on the reflection tokens only.

One step: take failures -> sample G reflections each -> retry after each -> reward 1/0 ->
group advantages -> drop groups with equal rewards -> pack `context + reflection` rows ->
fused span loss (reflection tokens only) -> optimiser step -> weight sync to the sampler.
Before the first step and after the last, the held-out set is measured twice (1st try, 2nd try
after one reflection): the paper's four columns land in `report.md`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_dir, write_text_atomic
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .checkpoint_sharded import gathered_state_dict, is_sharded_checkpoint, load_sharded, save_sharded
from .config import R3Config
from .data import pack_step
from .distributed import Dist
from .errors import UserError
from .evaluate import EvalResult, decoding_label, evaluate_as_trained
from .failures import FailureSource
from .finish import run_artefacts, write_run_outputs
from .guard import NonFiniteGuard
from .learner import Learner
from .logging_setup import log_to_file
from .lora import is_lora, save_merged
from .loss import SpanLoss, check_impl_device
from .manifest import claim
from .metric_schema import reduce_over_ranks
from .metrics import MetricsLogger, peak_memory_mb
from .model_card import model_card, write_model_card
from .models import resolve_device
from .optim import apply_optim_changes, build_optimizer, build_scheduler
from .phases import phase, take_phases
from .policy import build_policy, build_reference, inference_copy
from .progress import progress_bar, quiet_library_bars
from .rollout import rollout, to_sequences
from .rundir import check_resume_config, check_run_dir, prepare_run_dir
from .runlock import lock_run_dir
from .sampling import SamplingParams, build_sampler, needs_learner_bytes, sampling_params
from .sampling.build import serving_dtype
from .seeds import seed_for
from .tasks.base import verify_counts
from .validate import build_configured_task

__all__ = ["R3Trainer"]


def _build_dist(cfg: R3Config) -> tuple[Dist, torch.device]:
    """(the data-parallel group, this process's device), refusing what this host or the loop cannot
    run. torchrun: one process per device, each with its own share of the data and its own sampler."""
    requested = resolve_device(cfg.model.device)  # one line if this host lacks it, before any load
    check_impl_device(cfg.loss.impl, requested)
    mc = cfg.model
    dist = Dist.for_loop(requested.type, cfg.trainer.data_parallel, lora=mc.lora is not None,
                         load_in_4bit=mc.load_in_4bit)  # fmt: skip
    return dist, dist.device(requested)


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
        self.cfg, self.run_dir = config, Path(config.trainer.output_dir)
        quiet_library_bars()
        torch.manual_seed(config.trainer.seed)  # every builder below leaves the generator as it found it
        self.dist, self.device = _build_dist(config)
        flags = dict(resume=resume, overwrite=overwrite, allow=allow_config_change)
        self.config_changes, self.lock, self.notes = self._claim_run_dir(**flags)
        self.task = build_configured_task(config.task, task)
        self.model, self.tokenizer = build_policy(config.model, self.device, model, tokenizer)
        mode, compute = config.trainer.data_parallel, getattr(torch, config.model.compute_dtype)
        self.sharded = self.dist.shards(mode)
        # FSDP2: the sampler never generates from the shards. HF: a whole copy of its own, taken before
        # sharding; vLLM: its own engine. Either is refreshed from the shards after every step.
        gen_model = self.model
        if self.sharded:
            hf = config.sampler.backend == "hf"
            gen_model = inference_copy(self.model, serving_dtype(config.model)) if hf else None
        ref = build_reference(config, self.model)
        self.ref_model = self.dist.wrap_reference(ref, mode, self.device, compute_dtype=compute)
        # The learner's forward runs through DDP / FSDP2 (world size > 1), which sync the gradients.
        self.module = self.dist.wrap(self.model, mode, self.device, compute_dtype=compute)
        self.optimizer = build_optimizer(self.model.parameters(), config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.optim, config.trainer.steps)
        self.loss = SpanLoss.from_config(config)
        self.guard = NonFiniteGuard(config.trainer.max_nonfinite_steps, kept=self._kept)
        self.learner = Learner.from_config(
            config, self.model, ref_model=self.ref_model, loss=self.loss, optimizer=self.optimizer,
            guard=self.guard, device=self.device, dist=self.dist, module=self.module,
        )  # fmt: skip
        probe = needs_learner_bytes(config, self.device)
        learner_bytes = self.learner.peak_bytes_for(config, self.tokenizer.eos_token_id) if probe else None
        self.sampler = build_sampler(config, gen_model, self.tokenizer, learner_bytes=learner_bytes,
                                     own_weights=self.sharded)  # fmt: skip
        if self.sharded:
            self.sampler.sync_weights(self.model)  # vLLM built from the copy too: the learner's weights rule
        self.source = FailureSource.from_config(config, self.task, rank=self.dist.rank, world=self.dist.world)
        # sampling seeds: the run's own at world size 1, one stream per rank beyond
        seed = config.trainer.seed
        self.sample_seed = seed if not self.dist.enabled else seed_for(seed, "rank", self.dist.rank)
        self.callbacks, self.resumed = callbacks or [], resume
        self.step, restored = self._restore() if resume else (0, False)
        self.logger = self._build_logger(restored) if self.dist.is_main else None  # rank 0 logs

    def _claim_run_dir(self, *, resume: bool, overwrite: bool, allow: bool) -> tuple[list, Any, list[str]]:
        """(config changes on resume, the lock, notes): checked on every rank (the same dir); rank 0
        alone writes it, holding its lock for the run's life (train() gives it back)."""
        check_run_dir(self.run_dir, resume=resume, overwrite=overwrite)
        changes = check_resume_config(self.run_dir, self.cfg.to_dict(), allow=allow) if resume else []
        self.dist.barrier()
        if not self.dist.is_main:
            return changes, None, []
        lock = lock_run_dir(self.run_dir)
        notes = prepare_run_dir(self.run_dir, resume=resume, overwrite=overwrite)
        # before any is written: --overwrite may remove them
        claim(self.run_dir, run_artefacts(self.cfg.eval.temperatures))
        log_to_file(self.run_dir)  # vLLM's full log (the screen shows only its warnings)
        return changes, lock, notes

    def _restore(self) -> tuple[int, bool]:
        """(step, whether a checkpoint was loaded): the newest checkpoint's weights, optimiser,
        schedule, failure cursor and guard, then the sampler given the weights."""
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return 0, False
        parts = dict(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler)
        if is_sharded_checkpoint(ckpt):  # FSDP2's, loaded at this world size (DCP reshards)
            state = load_sharded(ckpt, **parts, dist=self.dist)
        elif self.sharded:
            raise UserError(
                f"--resume: {ckpt} holds whole weights (a ddp or single-process run) and this run shards "
                "them (trainer.data_parallel=fsdp2): resume it with trainer.data_parallel=ddp"
            )
        else:
            state = load_checkpoint(ckpt, **parts)
        self.source.load_state_dict(self._own_source_state(state))
        self.guard.load_state_dict(state.get("guard", {}))
        if any(k.startswith("optim.") for k, _, _ in self.config_changes):
            apply_optim_changes(self.optimizer, self.scheduler, self.cfg.optim)
        self.sampler.sync_weights(self.model)
        return state["step"], True

    def _build_logger(self, restored: bool) -> MetricsLogger:
        mc = self.cfg.metrics
        return MetricsLogger(self.run_dir, resume_step=self.step if restored else None,
                             report_to=mc.reporters, wandb_project=mc.wandb_project,
                             config=self.cfg.to_dict())  # fmt: skip

    def _kept(self) -> str:
        """For the NaN guard's message: what is on disk, after checking it."""
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return "no intact checkpoint exists yet (the run must start again)"
        return f"checkpoint {ckpt.name} is intact (verified): --resume continues from it"

    def close(self) -> None:
        """Give the run directory's lock back (train() does it when it ends, however it ends)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _own_source_state(self, state: dict) -> dict:
        """This rank's failure cursor from a checkpoint; one saved at another world size is re-dealt
        (`FailureSource.redeal`), with a note that the step's batch follows the world size."""
        sources = state.get("sources", [state.get("source")])
        if len(sources) != self.dist.world and self.dist.is_main:
            print(f"resume: saved by {len(sources)} process(es), continued by {self.dist.world}: the failure "
                  f"order is re-dealt, and a step now takes {self.dist.world} x data.failures_per_step "
                  "failures", flush=True)  # fmt: skip
        return FailureSource.redeal(sources, self.dist.world, self.dist.rank)

    def _params(self, *, reflection: bool, seed: int | None) -> SamplingParams:
        return sampling_params(self.cfg.sampler, reflection=reflection, seed=seed)

    # ---------------------------------------------------------------- evaluation

    def evaluate(self, n: int | None = None, temperature: float | None = None) -> EvalResult:
        """The run's evaluation protocol (`evaluate_as_trained`, shared with `r3fast eval --run`):
        1st try, then reflection + 2nd try on failures, over the first n held-out examples."""
        self.sampler.wake()
        try:
            return evaluate_as_trained(
                self.cfg, self.sampler, self.tokenizer, self.task, n=n, temperature=temperature
            )
        finally:
            self.sampler.sleep()

    def _final_evals(self, name: str) -> dict[str, EvalResult]:
        """One evaluation per decoding of `eval.temperatures` (or, for the vanilla model
        after a resume, their saved results), every example's texts saved as eval_<name>_<decoding>.json."""
        if self.cfg.eval.n <= 0:
            return {}
        out = {}
        for t in self.cfg.eval.temperatures:
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
            with phase("pack") as p:
                plan, rows = pack_step(
                    seqs, max_tokens=d.max_tokens, shared_prefix=d.shared_prefix, seed=self.sample_seed,
                    step=self.step,
                )  # fmt: skip
                p.tokens += sum(r.num_tokens for r in rows)
        return self.learner.step(plan, rows, label=f"step {self.step + 1}")

    def _rollout_metrics(self, local: dict) -> dict:
        """Rollout metrics over every rank, each by its schema rule (r3fast.metric_schema)."""
        if not self.dist.enabled:
            return local
        return reduce_over_ranks(local, lambda xs: self.dist.sum(xs, self.device), self.dist.world)

    def train_step(self) -> dict:
        # Every draw of the step from its own named stream: a resumed run samples what the straight run did.
        cfg, seed, step = self.cfg, self.sample_seed, self.step
        t0 = time.perf_counter()
        verify_before = verify_counts(self.task)
        self.sampler.wake()
        failures = self.source.next(
            cfg.data.failures_per_step,
            sampler=self.sampler,
            tokenizer=self.tokenizer,
            params=self._params(reflection=False, seed=seed_for(seed, "mine", step)),
            progress=cfg.metrics.progress,
        )
        result = rollout(
            self.sampler,
            self.tokenizer,
            self.task,
            failures,
            group_size=cfg.rollout.group_size,
            scale_rewards=cfg.rollout.scale_rewards,
            reflection_params=self._params(reflection=True, seed=seed_for(seed, "reflect", step)),
            answer_params=self._params(reflection=False, seed=seed_for(seed, "retry", step)),
            chunk_size=cfg.sampler.chunk_size,
            progress=cfg.metrics.progress,
            reflect_prompt=cfg.task.reflect_prompt,
        )
        self.sampler.sleep()
        t1 = time.perf_counter()
        # a user's verify that returned a non-bool or hung this step (scored as failures)
        verify = {k: v - verify_before[k] for k, v in verify_counts(self.task).items()}
        metrics = self._rollout_metrics({**result.metrics(), **verify})
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        # no group with a signal (on any rank): nothing to learn from, the weights stay as they are
        metrics.update(
            self._learn(to_sequences(result.kept, mask_truncated=cfg.rollout.mask_truncated_completions))
        )
        self.scheduler.step()
        t2 = time.perf_counter()
        with phase("sync"):
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
        """A checkpoint holding every rank's failure cursor: whole weights written by rank 0 (None on
        the others), or under FSDP2 every rank's shards (r3fast.checkpoint_sharded)."""
        self.guard.check_weights(self.model, f"checkpoint at step {self.step}")
        sources = self.dist.gather(self.source.state_dict())
        parts = dict(
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            tokenizer=self.tokenizer,
            keep=self.cfg.checkpoint.keep,
            model_card=model_card(self.cfg.to_dict(), task_name=self._task_name(), step=self.step),
            trainer_state={
                "source": sources[0],
                "sources": sources,
                "guard": self.guard.state_dict(),
                "config": self.cfg.to_dict(),
            },
        )
        if self.sharded:
            return save_sharded(self.run_dir, self.step, **parts, dist=self.dist)
        path = save_checkpoint(self.run_dir, self.step, **parts) if self.dist.is_main else None
        self.dist.barrier()
        return path

    def export(self, whole: dict[str, torch.Tensor] | None = None) -> Path:
        """The final model as a plain HF directory: `r3fast eval --model <run>/final` loads it.
        whole: under FSDP2, the weights gathered on rank 0 (`gathered_state_dict`)."""
        dest = self.run_dir / "final"
        self.guard.check_weights(self.model if whole is None else whole.values(), "final export")
        with atomic_dir(dest) as tmp:
            if is_lora(self.model):  # merged weights (plain from_pretrained), the adapter in final/adapter
                save_merged(self.model, tmp, self.tokenizer)
            else:
                self.model.save_pretrained(tmp, state_dict=whole)
                self.tokenizer.save_pretrained(tmp)
            write_model_card(tmp, self.cfg.to_dict(), task_name=self._task_name())  # effect: after evals
        return dest

    def _task_name(self) -> str:
        return str(getattr(self.task, "name", self.cfg.task.name))

    def _periodic_eval(self) -> dict:
        """`eval.every`: the same small held-out set each time, so the curve compares."""
        with phase("eval"):
            res = self.evaluate(self.cfg.eval.every_n)
        return {"eval_first_try": res.first_acc, "eval_second_try": res.second_acc}

    def _on_main(self, fn: Callable[[], Any], default: Any = None) -> Any:
        """fn() on rank 0 (evaluation, logging, files) while the other ranks wait at a barrier."""
        out = fn() if self.dist.is_main else default
        self.dist.barrier()
        return out

    def _start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.run_dir / "config.json", json.dumps(self.cfg.to_dict(), indent=1))
        if self.cfg.metrics.progress:
            lines = list(self.notes) + [self.logger.describe()]
            lines += [f"resume: applying changed {k}: {a!r} -> {b!r}" for k, a, b in self.config_changes]
            if self.dist.enabled:
                lines.append(f"data parallel: {self.dist.world} processes ({self.cfg.trainer.data_parallel})")
            print("\n".join(lines), flush=True)

    def train(self) -> dict:
        try:
            return self._train()
        finally:
            self.close()

    def _train(self) -> dict:
        t_start = time.perf_counter()
        cfg, every = self.cfg.trainer, self.cfg.eval.every
        save_every = self.cfg.checkpoint.every
        self._on_main(self._start)
        vanilla = self._on_main(lambda: self._final_evals("vanilla"), {})
        take_phases()  # the vanilla evaluations are no step's
        bar = progress_bar(
            total=cfg.steps,
            initial=self.step,
            desc="train",
            unit="steps",
            enabled=self.cfg.metrics.progress and self.dist.is_main,
            every_update=True,
        )
        while self.step < cfg.steps:
            metrics = self.train_step()
            if every and self.step % every == 0:
                metrics.update(self._on_main(self._periodic_eval, {}))
            metrics.update(take_phases())  # since the last record: this step, the checkpoint before it
            self._on_main(lambda m=metrics: self.logger.log(self.step, m))
            if metrics["tokens"]:  # steps without a learner pass neither break nor extend a streak
                self.guard.record(metrics["skipped_nonfinite"], self.step)
            loss = metrics["loss"]
            bar.set_postfix(
                reward=f"{metrics['reward_mean']:.2f}",
                loss=f"{loss:.3g}" if math.isfinite(loss) else "non-finite (step skipped)",
            )
            bar.update(1)
            if save_every and self.step % save_every == 0 and self.step < cfg.steps:
                with phase("checkpoint"):
                    self.save()
            for cb in self.callbacks:
                cb(self.step, metrics)
        bar.close()
        self.save()
        whole = gathered_state_dict(self.model) if self.sharded else None  # collective; rank 0 holds it
        summary = self._on_main(lambda: self._finish(vanilla, t_start, whole), {"steps": self.step})
        if self.dist.enabled:  # the DDP / FSDP2 wrappers hold the process group: gone before it is
            self.module = self.learner.module = self.ref_model = self.learner.ref_model = None
        self.dist.close()
        return summary

    def _finish(self, vanilla: dict[str, EvalResult], t_start: float, whole: dict | None) -> dict:
        """Rank 0, after the last step: final/, the trained model's evaluations, effect and report."""
        final = self.export(whole)
        trained = self._final_evals("trained")
        self.logger.close()
        summary = {"steps": self.step, "final_model": str(final), "seconds": time.perf_counter() - t_start}
        return write_run_outputs(
            self.run_dir, self.cfg.to_dict(), final=final, vanilla=vanilla, trained=trained,
            metrics_path=self.logger.path, task_name=self._task_name(), summary=summary,
            push_to_hub=self.cfg.trainer.push_to_hub,
        )  # fmt: skip
