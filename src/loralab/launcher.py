"""How a multi-process run starts its worker processes.

Lightning's own subprocess launcher re-runs the command line in each worker. Under Hydra that
re-composes the config (other timestamps, and in a multirun, the whole sweep again). Here a
worker runs the run's saved, resolved `config.yaml` instead (`python -m loralab.worker`): every
process trains exactly the configuration rank 0 recorded, into rank 0's run directory.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

log = logging.getLogger(__name__)

# what a launch sets in this process's environment, restored after the run (a sweep's next job
# in the same process must start afresh)
LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS")


def adopt_launcher(trainer: Any, config_file: Path, run_dir: Path, cfg: Any = None) -> None:
    """Replace the strategy's script launcher (which re-runs the command line) by one that runs
    the saved config in each worker. No-op for one process or when processes are started from
    outside (torchrun, srun). On other nodes than node 0 (no shared disk assumed) the launching
    process writes its own copy of the resolved config for its workers."""
    strategy = trainer.strategy
    launcher = getattr(strategy, "_launcher", None)
    if type(launcher) is not _SubprocessScriptLauncher:
        return
    node = launcher.cluster_environment.node_rank()
    if node != 0 and cfg is not None:
        from omegaconf import OmegaConf

        config_file = run_dir / "ranks" / f"config.node{node}.yaml"
        config_file.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), config_file)
    strategy._launcher = JobLauncher(
        launcher.cluster_environment, launcher.num_processes, launcher.num_nodes, config_file, run_dir
    )


class JobLauncher(_SubprocessScriptLauncher):
    """Lightning's subprocess launcher, but its workers run the saved config (`loralab.worker`)
    and it undoes what it set in this process when the run ends (`finish`)."""

    def __init__(self, env: Any, num_processes: int, num_nodes: int, config_file: Path, run_dir: Path) -> None:
        super().__init__(env, num_processes, num_nodes)
        self.config_file = Path(config_file)
        self.run_dir = Path(run_dir)
        self.saved_env = {k: os.environ.get(k) for k in LAUNCH_VARIABLES}
        self.threads = None
        self.watcher: _Watcher | None = None

    def launch(self, function: Any, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        # the workers run the whole job (validate, then fit): started at the first entry point
        if not self.procs:
            self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
            if not self.cluster_environment.creates_processes_externally:
                self._start_workers()
            # the processes share the cores: torch's threads are split between them
            if self.saved_env["OMP_NUM_THREADS"] is None and self.threads is None:
                import torch

                self.threads = torch.get_num_threads()
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.num_processes))
        return function(*args, **kwargs)

    def finish(self, failed: bool) -> None:
        """After the job: wait for the workers (kill them when rank 0 failed: they would wait
        for it), restore this process's environment and threads."""
        if self.watcher is not None:
            self.watcher.stopped = True
        for proc in self.procs:
            try:
                proc.wait(timeout=5 if failed else 300)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []
        for key, value in self.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)

    def _start_workers(self) -> None:
        env = self.cluster_environment
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        logs = self.run_dir / "ranks"
        logs.mkdir(parents=True, exist_ok=True)
        ranks = []
        for local_rank in range(1, self.num_processes):
            rank = env.node_rank() * self.num_processes + local_rank
            worker_env = {
                **os.environ,
                "NODE_RANK": str(env.node_rank()),
                "LOCAL_RANK": str(local_rank),
                "RANK": str(rank),
                "WORLD_SIZE": str(self.num_processes * self.num_nodes),
                "LORALAB_WORKER": "1",
            }
            for key in ("SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "JSM_NAMESPACE_RANK"):
                worker_env.pop(key, None)  # the worker's rank is RANK, not its parent's task id
            out = open(logs / f"rank{rank}.log", "ab")  # noqa: SIM115
            command = [sys.executable, "-m", "loralab.worker", str(self.config_file)]
            self.procs.append(
                subprocess.Popen(
                    command, env=worker_env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
                )
            )
            out.close()
            ranks.append(rank)
        self.watcher = _Watcher(self.procs, ranks, self.run_dir)
        self.watcher.start()


def _die_with_parent() -> None:
    """In a worker, before it starts: the kernel kills it when rank 0's process dies (Linux), so
    no worker is left waiting in a collective for a rank 0 that is gone."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Watcher(threading.Thread):
    """Ends the run when a worker dies before the last collective: the others would wait for
    it in their next collective for the process group's timeout (30 min). It records the
    failure in summary.json and stops the other workers; with gloo rank 0's next collective then
    fails at once and the run ends as a failed run (a sweep goes on to its next job). A rank 0
    still blocked after GRACE_S (NCCL waits out its timeout) is killed."""

    GRACE_S = 60

    def __init__(self, procs: list, ranks: list[int], run_dir: Path) -> None:
        super().__init__(daemon=True, name="loralab-worker-watcher")
        self.procs = list(procs)
        self.ranks = ranks
        self.run_dir = run_dir
        self.main_pid = os.getpid()
        self.stopped = False  # set after the last collective, or when the run ends

    def run(self) -> None:
        while not self.stopped:
            codes = [p.poll() for p in self.procs]
            failed = [(rank, c) for rank, c in zip(self.ranks, codes, strict=True) if c not in (None, 0)]
            if failed:
                self._end(*failed[0])
                return
            if all(c == 0 for c in codes):
                return
            time.sleep(1)

    def _end(self, rank: int, code: int) -> None:
        from loralab.reporting.summary import write_failed_summary

        message = f"WorkerFailed: rank {rank} exited with code {code}: see {self.run_dir / 'ranks'}/rank{rank}.log"
        write_failed_summary(self.run_dir, message)
        log.error("%s: ending the run", message)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        deadline = time.time() + self.GRACE_S
        while time.time() < deadline:
            if self.stopped:  # rank 0 failed its collective and is finishing as a failed run
                return
            time.sleep(1)
        os.kill(self.main_pid, signal.SIGKILL)
