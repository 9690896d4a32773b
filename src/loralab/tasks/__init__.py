"""Tasks: what the base model is trained to do. A task owns its transformers model class, peft's task
type, how an example (a data format's Item) is encoded into ids and labels, collation, the loss,
the validation metrics, greedy generation, and the checks of a loaded model. Imports nothing heavy:
the config checks choose a task before torch loads.

- `causal_lm`: a decoder continues the prompt (prompt_completion, chat); exact match.
- `seq_cls`: a classification head on top (classification); accuracy.
- `seq2seq`: an encoder reads the prompt, a decoder writes the answer (prompt_completion, chat);
  exact match.
"""

from __future__ import annotations

from loralab.errors import ConfigError
from loralab.tasks.base import Task
from loralab.tasks.causal_lm import CausalLM
from loralab.tasks.seq2seq import Seq2SeqLM
from loralab.tasks.seq_cls import SequenceClassification

TASKS: dict[str, Task] = {t.name: t for t in (CausalLM(), SequenceClassification(), Seq2SeqLM())}

__all__ = ["TASKS", "Task", "choose_task", "get_task"]


def get_task(name: str | Task) -> Task:
    """The task called `name` (a Task is returned as it is)."""
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}: set data.task to one of {sorted(TASKS)} (or leave it unset)")
    return TASKS[name]


def check_format(task: str, fmt: str) -> None:
    """Refuse a task that cannot read the data format (before anything loads)."""
    chosen = get_task(task)
    if fmt not in chosen.formats:
        fits = sorted(name for name, t in TASKS.items() if fmt in t.formats)
        raise ConfigError(
            f"data.task={task} cannot train on data.format={fmt} (it reads {', '.join(chosen.formats)}): "
            f"set data.task to one of {fits}, or leave data.task unset"
        )


def choose_task(requested: str | None, fmt: str, encoder_decoder: bool, model: str) -> Task:
    """The task for this data and model: `requested` (data.task) when set, else classification data
    trains a classification head, and text data trains a causal LM, or a seq2seq LM when the model
    is an encoder-decoder. A requested task the model cannot do is refused in one line."""
    if requested is None:
        requested = "seq_cls" if fmt in TASKS["seq_cls"].formats else "seq2seq" if encoder_decoder else "causal_lm"
    check_format(requested, fmt)
    task = get_task(requested)
    if task.labelled and encoder_decoder:
        return SequenceClassification(ends_with_eos=True)
    if task.encoder_decoder is not None and task.encoder_decoder != encoder_decoder:
        kind = "an encoder-decoder" if encoder_decoder else "not an encoder-decoder"
        fits = "seq2seq" if encoder_decoder else "causal_lm"
        raise ConfigError(
            f"model {model} is {kind}: it cannot train as data.task={requested}; set data.task={fits}, or leave "
            "data.task unset to choose from the model"
        )
    return task
