"""The Hydra entry point: compose -> validate -> data -> model + variant -> Lightning fit.

    loralab-train                      # the default experiment
    loralab-train model=tiny variant.r=4
    python -m loralab.train data=word_sort trainer.max_steps=200
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from loralab.config import register_schemas, validate
from loralab.errors import LoralabError

log = logging.getLogger("loralab")
# conf/ beside src/ (the package is installed editable from the repository)
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def _flat(cfg: DictConfig) -> dict:
    """The resolved config as flat `a.b.c` keys, for logger config panels."""
    out: dict = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Run one experiment; return (summary, objects)."""
    import lightning.pytorch as pl
    from hydra.utils import instantiate

    from loralab.callbacks import find_checkpoint
    from loralab.data.datamodule import LoraDataModule
    from loralab.module import LoraModule
    from loralab.reporting.run_meta import write_run_meta
    from loralab.variants import get_variant

    typed = validate(cfg)  # 1. config checks: before anything loads
    run_dir = Path(cfg.paths.run_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    source = instantiate(cfg.model)  # cheap: checks the model's location
    ckpt = find_checkpoint(cfg.ckpt_path, cfg.resume, run_dir / "checkpoints")
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.logger or {}).values() if c is not None]

    tokenizer = source.load_tokenizer()  # 2. data, before the model: data errors come fast
    datamodule = LoraDataModule(typed.data, tokenizer, cache_dir=cfg.paths.cache_dir)
    datamodule.setup("fit")
    write_run_meta(run_dir, cfg, source.describe(), datamodule.describe())

    base = source.load_model(typed.data.task, datamodule.labels)  # 3. model + variant
    adapter = get_variant(typed.variant.name).build(base, typed.variant, typed.data.task)
    module = LoraModule(
        adapter,
        tokenizer,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        max_new_tokens=typed.data.max_new_tokens,
        generation_batch_size=typed.data.eval_batch_size,
    )

    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)  # 4. fit
    for lg in loggers:
        lg.log_hyperparams(_flat(cfg))
    if cfg.validate_before and ckpt is None:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)

    summary = next(cb for cb in callbacks if hasattr(cb, "collect")).collect(trainer, module, "completed", None)
    return summary, {"trainer": trainer, "module": module, "datamodule": datamodule, "callbacks": callbacks}


def _close_wandb(failed: bool) -> None:
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1 if failed else 0)


def run(cfg: DictConfig) -> dict:
    """train() with the run-level guarantees: a failed summary on early errors, W&B closed."""
    from loralab.reporting.summary import SUMMARY_FILE, print_summary, write_failed_summary

    run_dir = Path(cfg.paths.run_dir)
    failed = True
    try:
        summary, _ = train(cfg)
        failed = False
    except BaseException as exc:
        if not (run_dir / SUMMARY_FILE).exists():
            write_failed_summary(run_dir, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        _close_wandb(failed)
    print_summary(summary)
    return summary


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except LoralabError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"loralab: error: {exc}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Console script `loralab-train`."""
    register_schemas()
    _hydra_main()


if __name__ == "__main__":
    main()
