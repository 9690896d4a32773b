"""loralab-eval: evaluate a finished run on its own test split, or on other data.

  loralab-eval RUN_DIR                         # the run's test split (its validation split if none)
  loralab-eval RUN_DIR --merged                # merged/ instead of the base + adapter/
  loralab-eval RUN_DIR data=local data.test_file=more.jsonl   # another data config's test split
  loralab-eval RUN_DIR --split val data.metrics=[exact_match,token_f1]

Writes RUN_DIR/eval/<name>/eval.json (the figures, what was evaluated, on which data) and
generations.jsonl (prompt, reference, output, correct per metric); nothing else in the run
directory. When the run logged to W&B, the figures go into the same W&B run (its id, resumed) as
`eval/<name>/...`; offline runs write the resumed run under eval/<name>/wandb/ to sync.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from loralab.errors import ConfigError
from loralab.finished import FinishedRun, RunUseError, package_versions

EVAL_DIR = "eval"
SPLITS = ("test", "val")


def eval_config(run: FinishedRun, overrides: list[str]) -> Any:
    """The run's saved config with its data changed by `overrides`: `data=NAME` (another data
    config, composed as loralab-train composes it) and `data.<key>=value`. Only the data changes:
    the model and the adapter are the run's."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(run.cfg, resolve=False))
    choice = [o for o in overrides if o.partition("=")[0] == "data"]
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not (key == "data" or key.startswith("data.")):
            raise ConfigError(
                f"loralab-eval changes the data only: {item!r} is not data=NAME or data.<key>=value "
                "(the model and adapter are the run's)"
            )
    if choice:
        from hydra import compose, initialize_config_dir
        from hydra.errors import HydraException

        from loralab.config.paths import CONF_DIR
        from loralab.validation import register_schemas

        register_schemas()
        try:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                composed = compose("train", overrides=[choice[-1]])
        except HydraException as exc:
            options = sorted(p.stem for p in (Path(CONF_DIR) / "data").glob("*.yaml") if not p.stem.startswith("_"))
            if "Could not find 'data/" in str(exc):
                raise ConfigError(f"{choice[-1]}: no such data config; choose one of {options}") from None
            raise ConfigError(f"{choice[-1]}: {str(exc).splitlines()[0]}") from None
        cfg.data = OmegaConf.to_container(composed.data, resolve=False)
    for item in overrides:
        if item.partition("=")[0] == "data":
            continue
        key = item.partition("=")[0]
        field = key.split(".")[1] if key.count(".") else ""
        if field not in cfg.data:
            import difflib

            close = difflib.get_close_matches(field, list(cfg.data), n=1)
            hint = f"did you mean data.{close[0]}?" if close else "see docs/configs.md for the data keys"
            raise ConfigError(f"{item!r}: the data config has no key {field!r}: {hint}")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except Exception as exc:  # a malformed value: YAML or OmegaConf says why
            raise ConfigError(f"{item!r} is not a valid value ({str(exc).splitlines()[0]})") from None
    return cfg


def eval_data(cfg: Any, split: str) -> Any:
    """The data config, checked. Local data needs only the file evaluated (data.test_file for the
    test split): the checks are those of a config that trains on it, then it is the test file again."""
    from omegaconf import OmegaConf

    from loralab.validation import validate_data

    data = cfg.data
    if split == "test" and data.get("source") == "local":
        # only the test file is read (the run's training files may be gone, or on another machine)
        if not data.get("test_file"):
            raise ConfigError(
                "the local data has no data.test_file: pass data.test_file=... (the file to evaluate), or --split val"
            )
        checked = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        checked.data.train_file, checked.data.test_file, checked.data.val_file = data.test_file, None, None
        typed = validate_data(checked)
        typed.test_file, typed.train_file = typed.train_file, None
        return typed
    return validate_data(cfg)


def default_name(split: str, overrides: list[str], merged: bool = False) -> str:
    """`test`, `val` (`-merged` for merged/), or that with the data overrides, made safe as a
    directory name and told apart by a hash of the whole overrides (two files of one name)."""
    name = split + ("-merged" if merged else "")
    if not overrides:
        return name
    import hashlib

    digest = hashlib.sha256("\0".join(overrides).encode()).hexdigest()[:8]
    text = "-".join(o.split("/")[-1] for o in overrides)
    return f"{name}-{re.sub(r'[^A-Za-z0-9_.=,-]+', '_', text)[:80]}-{digest}"


def evaluate_run(
    run_dir: str | Path,
    overrides: list[str] | None = None,
    *,
    split: str = "test",
    merged: bool = False,
    name: str | None = None,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate; write eval/<name>/eval.json and generations.jsonl; return eval.json's content."""
    import torch

    overrides = list(overrides or [])
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r}: choose one of {list(SPLITS)}")
    if name is not None and (not name or "/" in name or name.startswith(".")):
        raise ConfigError(f"--name {name!r}: give a plain directory name, e.g. --name gsm8k")
    for key, value in (("--batch-size", batch_size), ("--max-new-tokens", max_new_tokens)):
        if value is not None and value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    run = FinishedRun.open(run_dir, "loralab-eval")
    cfg = eval_config(run, overrides)
    data_cfg = eval_data(cfg, split)
    if batch_size is not None:
        data_cfg.eval_batch_size = batch_size
    if max_new_tokens is not None:
        data_cfg.max_new_tokens = max_new_tokens
    from loralab.metrics import check_regex

    pattern = check_regex(data_cfg.answer_regex)
    task = run.task()
    if data_cfg.format not in task.formats:
        raise ConfigError(
            f"the run trained a {task.name} model, which cannot read data.format={data_cfg.format} (it reads "
            f"{', '.join(task.formats)}): evaluate it on data of that format"
        )
    out_dir = run.path / EVAL_DIR / (name or default_name(split, overrides, merged))
    if merged and not (run.merged_dir / "config.json").is_file():
        run.load(merged=True)  # refuses with the fix, before the data is read
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")

    started = time.time()
    source = run.source()
    tokenizer = source.load_tokenizer()
    from loralab.data.datamodule import LoraDataModule

    dm = LoraDataModule(data_cfg, tokenizer, cache_dir=cfg.paths.cache_dir, task=task)
    if split == "test":
        if not (data_cfg.num_test if data_cfg.source == "builtin" else data_cfg.test_file or data_cfg.test_split):
            raise ConfigError(
                f"the data ({data_cfg.name}) has no test split: set data.num_test (built-in tasks), data.test_file "
                "(local) or data.test_split (hub), or pass --split val"
            )
        dm.setup_test(run.labels())
    else:
        dm.setup("fit")
        if task.labelled and dm.labels != run.labels():
            raise RunUseError(
                f"the data's labels {dm.labels} are not the ones the run's head was trained on {run.labels()}: "
                "evaluate on data with the same label set"
            )
    dataset, rows = (dm.test_set, dm.test_generation_set) if split == "test" else (dm.val_set, dm.generation_set)
    model, _ = run.load(merged=merged, device=device)

    loader = dm._eval_loader(dataset)
    from tqdm.auto import tqdm

    from loralab.evaluation import Answering, greedy_answers, loss_sums, per_answer, split_figures

    bar = tqdm(loader, desc=f"{split} loss", disable=not progress, leave=False)
    records: list[dict] = []
    if task.generates:
        # the loss as the run computed it (runs from before compute.labelled_head: full logits)
        from omegaconf import OmegaConf

        labelled = bool(OmegaConf.select(run.cfg, "compute.labelled_head", default=False))
        # and its prefix (runs from before compute.shared_prefix: each row whole)
        shared = bool(OmegaConf.select(run.cfg, "compute.shared_prefix", default=False))
        # and its answers from the loss batches' pass (runs from before compute.prompt_once: apart)
        once = bool(OmegaConf.select(run.cfg, "compute.prompt_once", default=False)) and labelled
        answering = Answering(once and task.answers_in_loss, rows, tokenizer, data_cfg.max_new_tokens)
        sums = loss_sums(model, task, bar, device, labelled=labelled, shared_prefix=shared, answering=answering)
        figures = split_figures(sums, split, task)
        prompts = [r["prompt_ids"] for r in rows]
        answers = answering.collected()
        step = data_cfg.eval_batch_size
        # as the run generated
        if answers is None:
            answers = []
            for start in tqdm(range(0, len(prompts), step), desc="generating", disable=not progress, leave=False):
                answers += greedy_answers(
                    model, task, tokenizer, prompts[start : start + step], data_cfg.max_new_tokens, step, shared
                )
        refs = [r["reference"] for r in rows]
        scores = per_answer(answers, refs, list(data_cfg.metrics), pattern)
        for metric in data_cfg.metrics:
            figures[f"{split}/{metric}"] = sum(s[metric] for s in scores) / max(len(rows), 1)
        for row, answer, score_ in zip(rows, answers, scores, strict=True):
            records.append(
                {
                    "prompt": tokenizer.decode(row["prompt_ids"], skip_special_tokens=False),
                    "reference": row["reference"],
                    "output": answer,
                    "correct": score_,
                }
            )
    else:
        sums = torch.zeros(3, device=device)
        names = model.config.id2label
        for batch in bar:
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.no_grad():
                out = task.forward(model, batch)
            count, correct = task.val_counts(out, batch)
            sums += torch.stack([out.loss.float() * count, count, correct])
            for ids, mask, label, guess in zip(
                batch["input_ids"], batch["attention_mask"], batch["labels"], out.logits.argmax(-1), strict=True
            ):
                records.append(
                    {
                        "prompt": tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True),
                        "reference": names[int(label)],
                        "output": names[int(guess)],
                        "correct": {"accuracy": float(int(label) == int(guess))},
                    }
                )
        figures = split_figures(sums, split, task)
    step = run.summary.get("global_step")
    result = {
        "run_dir": str(run.path),
        "evaluated": "merged/" if merged else "base + adapter/",
        # adapter/ and merged/ hold the final step; the run's own test figures are its best checkpoint's
        "step": step,
        "run_test_step": run.summary.get("test_step"),
        "split": split,
        "examples": len(dataset),
        "generated": len(records) if task.generates else 0,
        "data": {
            "name": data_cfg.name,
            "overrides": overrides,
            "fingerprint": dm.test_fingerprint if split == "test" else dm.fingerprint,
        },
        "metrics": list(data_cfg.metrics) if task.generates else [task.metric],
        "answer_regex": data_cfg.answer_regex,
        "figures": figures,
        "device": device,
        "wall_time_s": round(time.time() - started, 2),
        "versions": package_versions(),
    }
    from loralab.io import write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "generations.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    write_text(out_dir / "eval.json", json.dumps(result, indent=2) + "\n")
    try:
        result["wandb"] = publish(run, out_dir, out_dir.name, figures)
    except Exception as exc:  # noqa: BLE001 (W&B's own errors: the evaluation is written already)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        result["wandb"] = {"error": first}
        print(f"loralab-eval: warning: the figures did not reach W&B ({first}); they are in eval.json", file=sys.stderr)
    write_text(out_dir / "eval.json", json.dumps(result, indent=2) + "\n")
    return result


def wandb_run_id(run: FinishedRun) -> str | None:
    """The id of the W&B run the training logged to (its directory under RUN_DIR/wandb/)."""
    found = sorted(run.path.glob("wandb/*run-*-*"))
    return found[-1].name.rsplit("-", 1)[-1] if found else None


def publish(run: FinishedRun, out_dir: Path, name: str, figures: dict) -> dict | None:
    """The figures into the run's W&B run (resumed by id) as eval/<name>/<figure>."""
    run_id = wandb_run_id(run)
    node = (run.cfg.get("logger") or {}).get("wandb")
    if run_id is None or node is None:
        return None
    import wandb

    from loralab.loggers import wandb_credentials_present

    mode = "offline" if not wandb_credentials_present() else None
    values = {f"eval/{name}/{k}": v for k, v in figures.items()}
    with wandb.init(
        id=run_id,
        project=node.get("project"),
        entity=node.get("entity"),
        dir=str(out_dir),
        resume="allow",
        mode=mode,
        settings=wandb.Settings(silent=True),
    ) as wb:
        wb.summary.update(values)
    return {"run_id": run_id, "mode": mode or "online", "keys": sorted(values)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="loralab-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a finished run directory (it holds summary.json and adapter/)")
    parser.add_argument("overrides", nargs="*", help="data=NAME and data.<key>=value: other data to evaluate on")
    parser.add_argument("--split", default="test", help="test (default) or val")
    parser.add_argument("--merged", action="store_true", help="evaluate merged/ instead of the base + adapter/")
    parser.add_argument("--name", help="the directory under RUN_DIR/eval/ (default: the split and overrides)")
    parser.add_argument("--batch-size", type=int, help="examples per batch (default: data.eval_batch_size)")
    parser.add_argument("--max-new-tokens", type=int, help="generation length (default: data.max_new_tokens)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when there is one)")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' start-up lines")
    args = parser.parse_intermixed_args(argv)
    from loralab.commands import run_command

    def body() -> int:
        result = evaluate_run(
            args.run_dir,
            args.overrides,
            split=args.split,
            merged=args.merged,
            name=args.name,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            device=args.device,
        )
        shown = ", ".join(f"{k} {v:.4g}" for k, v in result["figures"].items() if not k.endswith("/ppl"))
        print(f"{result['split']} ({result['examples']} examples, {result['evaluated']}): {shown}")
        if result["run_test_step"] not in (None, result["step"]) and args.split == "test":
            print(
                f"note: the run's own test figures are its best checkpoint's (step {result['run_test_step']}); "
                f"this evaluated the final weights (step {result['step']})"
            )
        name = args.name or default_name(args.split, args.overrides, args.merged)
        print(f"wrote {Path(args.run_dir) / EVAL_DIR / name}")
        return 0

    run_command("loralab-eval", body, args.verbose)


if __name__ == "__main__":
    main()
