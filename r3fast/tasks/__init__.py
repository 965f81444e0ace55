"""Task plugins: a prompt builder, a binary verifier and a dataset per task.

task = get_task("countdown", num_numbers=2, number_range=(1, 10))
messages = task.build_prompt(example); ok = task.verify(example, completion)
"""

from r3fast.tasks.base import CustomTask, Task, make_task
from r3fast.tasks.registry import available_tasks, get_task, register_task

__all__ = ["Task", "CustomTask", "make_task", "get_task", "available_tasks", "register_task"]
