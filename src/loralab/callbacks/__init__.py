"""Lightning callbacks: freezing, adapter checkpoints, guards, merge validation, the run summary."""

from loralab.callbacks.adapter_checkpoint import AdapterCheckpoint, find_checkpoint
from loralab.callbacks.forgetting import Forgetting
from loralab.callbacks.freeze import Freeze, build_manifest, verify_frozen
from loralab.callbacks.guards import NonFiniteGuard, StopOnSignal
from loralab.callbacks.memory import MemoryProfile
from loralab.callbacks.merge_check import MergeCheck, compare_logits
from loralab.callbacks.progress import ProgressBar
from loralab.callbacks.run_summary import RunSummary
from loralab.callbacks.test_split import TestEvaluation

__all__ = [
    "AdapterCheckpoint",
    "Forgetting",
    "Freeze",
    "MemoryProfile",
    "MergeCheck",
    "NonFiniteGuard",
    "ProgressBar",
    "RunSummary",
    "StopOnSignal",
    "TestEvaluation",
    "build_manifest",
    "compare_logits",
    "find_checkpoint",
    "verify_frozen",
]
