"""`README.md` for `final/` and each checkpoint's model: what the weights are, in HF's model-card format.

YAML front matter (`base_model`, `library_name`, `pipeline_tag`, `tags`, `datasets` when the task
names a hub dataset), then the R3 effect table with its intervals when it was measured, how to
load the model, the training config and the versions that produced it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .atomic import write_text_atomic
from .env_report import package_versions
from .model_names import EMBEDDED_MODELS

__all__ = ["EMBEDDED_HUB_IDS", "model_card", "write_model_card"]

# what an embedded model is on the hub, for `base_model`
EMBEDDED_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
_VERSIONS = ("python", "r3fast", "torch", "transformers", "vllm", "peft", "triton")


def _base_model(name: str) -> str | None:
    """A hub id for `base_model`, or None for a local directory (the hub would reject a path)."""
    if name.lower() in EMBEDDED_MODELS:
        return EMBEDDED_HUB_IDS.get(name.lower())
    if Path(name).exists() or name.startswith((".", "/", "~")):
        return None
    return name


def _front_matter(config: dict[str, Any], task_name: str) -> str:
    task = config["task"]
    meta: dict[str, Any] = {}
    base = _base_model(config["model"]["name"])
    if base:
        meta["base_model"] = base
    meta["library_name"] = "transformers"
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["r3fast", "grpo", "reflect-retry-reward", "self-reflection", f"task:{task_name}"]
    hub_dataset = task.get("options", {}).get("hub_dataset")
    if isinstance(hub_dataset, str):
        meta["datasets"] = [hub_dataset]
    if config["model"].get("lora"):
        meta["tags"].append("lora")
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def model_card(
    config: dict[str, Any],
    *,
    task_name: str,
    effects: dict[str, dict] | None = None,
    step: int | None = None,
    repo_id: str | None = None,
) -> str:
    """The card's text. `effects`: decoding -> `effect(...)` (None: not measured yet); `step`: a
    checkpoint's step (None: the final model); `repo_id`: where it is pushed, for the load snippet."""
    from .effect import effect_table

    model = config["model"]["name"]
    steps = config["trainer"]["steps"]
    what = f"checkpoint at step {step} of {steps}" if step is not None else f"final model after {steps} steps"
    where = repo_id or "path/to/this/directory"
    lines = [
        _front_matter(config, task_name),
        f"# {model} trained with R3 on {task_name}",
        "",
        f"This is the {what} of an r3fast run: GRPO on self-reflections "
        '("Reflect, Retry, Reward", Bensal et al., arXiv 2505.24726). A failed first try is followed '
        "by a reflection and a second try; only the reflection tokens are trained, rewarded 1 when the "
        f"second try passes the task's verifier. Base model: `{model}`; task: `{task_name}`.",
        "",
        "## R3 effect",
        "",
    ]
    if effects:
        lines += [
            "Held-out examples of the task, vanilla (the base model) vs trained, 1st try and 2nd try "
            "(after one reflection):",
            "",
            effect_table(effects),
        ]
    elif config["eval"]["n"] <= 0:
        lines.append("Not measured (eval.n = 0).")
    else:
        lines.append("Not measured yet: the trained model is evaluated after the last step (see `final/`).")
    lines += [
        "",
        "## How to use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{where}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        "```",
        "",
        "Measure it again with r3fast:",
        "",
        "```bash",
        f"r3fast eval --model {where} --task {task_name} --n 100",
        "```",
        "",
        "## Training config",
        "",
        "```yaml",
        yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False).rstrip(),
        "```",
        "",
        "## Versions",
        "",
    ]
    versions = package_versions()
    lines += [f"- {k}: {versions[k]}" for k in _VERSIONS if k in versions]
    return "\n".join(lines) + "\n"


def write_model_card(model_dir: str | Path, config: dict[str, Any], **kw: Any) -> Path:
    """`model_dir/README.md` (atomic); keyword arguments as for `model_card`."""
    path = Path(model_dir) / "README.md"
    write_text_atomic(path, model_card(config, **kw))
    return path
