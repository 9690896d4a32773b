"""Which process is rank 0 before Lightning knows (run-level files are written by it alone), and
the trainer checks that read the strategy."""

from __future__ import annotations

import pytest

from loralab.distributed import env_rank, is_rank_zero, strategy_family

LAUNCH = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "JSM_NAMESPACE_RANK")


@pytest.mark.parametrize(
    ("env", "rank"),
    [
        ({}, 0),
        ({"RANK": "3", "LOCAL_RANK": "1"}, 3),  # torchrun, loralab's workers
        ({"LOCAL_RANK": "1"}, 1),  # Lightning's launcher, one node
        ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, 0),
        # a worker started inside an interactive SLURM job inherits SLURM_PROCID=0
        ({"SLURM_PROCID": "0", "LOCAL_RANK": "1"}, 1),
        ({"SLURM_PROCID": "5"}, 5),  # srun tasks
        ({"OMPI_COMM_WORLD_RANK": "2"}, 2),
    ],
)
def test_env_rank(monkeypatch, env, rank):
    for key in LAUNCH:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert env_rank() == rank and is_rank_zero() == (rank == 0)


def test_process_on_another_node_is_not_rank_zero(monkeypatch):
    for key in LAUNCH:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not is_rank_zero()


@pytest.mark.parametrize(
    ("strategy", "kind"),
    [
        ("deepspeed_stage_3", "deepspeed"),
        ("fsdp_cpu_offload", "fsdp"),
        ({"_target_": "lightning.pytorch.strategies.FSDPStrategy"}, "fsdp"),
        ({"_target_": "lightning.pytorch.strategies.DeepSpeedStrategy"}, "deepspeed"),
        ("ddp", ""),
    ],
)
def test_strategy_names_are_recognised(strategy, kind):
    assert strategy_family({"strategy": strategy}) == kind
