"""How loralab loads models, beyond what each family's run checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.families import save_family

ROOT = Path(__file__).resolve().parents[2]


def _use_kernels(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "USE_HUB_KERNELS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_models_load_without_hub_kernels(tmp_path):
    """transformers 5 swaps a loaded model's layers for kernels fetched from the Hub when it runs on
    CUDA (the first GPU run failed offline at its first model.eval()); loralab's models keep their
    own torch code unless USE_HUB_KERNELS=YES is set."""
    model_dir = save_family("llama", "causal_lm", tmp_path)
    plain = _use_kernels(
        f"from transformers import AutoModelForCausalLM; "
        f"print(AutoModelForCausalLM.from_pretrained({str(model_dir)!r}).use_kernels)"
    )
    # transformers' own default, without loralab: what the setting guards against
    assert plain == "True", f"transformers no longer turns hub kernels on by default (got {plain})"
    through_loralab = _use_kernels(
        f"from loralab.models.sources import Pretrained; "
        f"print(Pretrained({str(model_dir)!r}).load_model('causal_lm').use_kernels)"
    )
    assert through_loralab == "False"
