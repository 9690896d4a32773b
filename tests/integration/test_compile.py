"""compute.compile: the decoder blocks run compiled in the training steps and eagerly everywhere
else; a compiled step computes the eager step's loss (to float32 rounding), and the run ends with
no block left compiled (the merge check copies the model)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from loralab.train import train

# one step, no dropout (a compiled dropout draws its masks from another generator), nothing else
ONE_STEP = [
    "trainer.max_steps=1",
    "variant.dropout=0",
    "validate_before=false",
    "data.generation_examples=0",
    "callbacks.forgetting=null",
]


def test_a_compiled_step_is_the_eager_step(make_cfg, caplog):
    from torch._dynamo.utils import counters

    losses = {}
    # a third run, eager with full logits: the same loss by another order of operations, so their
    # difference is this machine's own float32 rounding of it
    for on, extra in ((False, []), (True, []), ("rounding", ["compute.labelled_head=false"])):
        counters.clear()
        switch = "true" if on is True else "false"
        cfg = make_cfg(*ONE_STEP, f"compute.compile={switch}", *extra, run=f"compile-{on}")
        with caplog.at_level(logging.INFO, logger="loralab.module"):
            _, objects = train(cfg)
        model = objects["module"].model
        summary = json.loads((Path(cfg.paths.run_dir) / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["merge_passed"]
        losses[on] = summary["final_train_loss"]
        # graphs were compiled (and run) only where asked
        assert (counters["stats"]["unique_graphs"] > 0) == (on is True)
        # nothing compiled is left on the model the run returns
        assert all(getattr(m, "_compiled_call_impl", None) is None for m in model.modules())
    assert "compute.compile: 2 blocks compiled for the training steps" in caplog.text
    eager, compiled = losses[False], losses[True]
    rounding = abs(losses["rounding"] - eager)
    assert abs(compiled - eager) <= 8 * rounding + 64 * torch.finfo(torch.float32).eps * abs(eager)
