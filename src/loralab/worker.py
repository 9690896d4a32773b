"""A worker process of a multi-process run: `python -m loralab.worker <run_dir>/config.yaml`.

Rank 0 (the `loralab-train` process) saves the resolved config and starts one worker per other
local rank (loralab.launcher). A worker trains that config, in the same run directory, and
writes nothing there itself: run-level files are rank 0's.
"""

from __future__ import annotations

import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from omegaconf import OmegaConf

    from loralab.console import quiet_libraries
    from loralab.train import train

    quiet_libraries()
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m loralab.worker RUN_DIR/config.yaml (started by loralab-train)", file=sys.stderr)
        return 2
    rank = os.environ.get("LOCAL_RANK", "?")
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("WANDB_MODE", "disabled")  # W&B: one run per job, rank 0's
    cfg = OmegaConf.load(args[0])
    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
