"""The LightningModule: steps, metrics and optimizer. No file I/O and no freezing (callbacks do those)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch

from loralab.distributed import sharded_strategy
from loralab.evaluation import Answering, greedy_answers, loss_sums, split_figures
from loralab.metrics import check_regex, score
from loralab.tasks import get_task
from loralab.timing import PhaseClock
from loralab.variants.registry import AdapterInfo

log = logging.getLogger(__name__)


class LoraModule(pl.LightningModule):
    """Trains the adapter in `adapter.model` for its task; logs train/loss, val/loss, val/ppl and
    the task's metric: val/exact_match (causal LM, seq2seq) or val/accuracy (classification)."""

    def __init__(
        self,
        adapter: AdapterInfo,
        tokenizer: Any,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        max_new_tokens: int = 16,
        generation_batch_size: int = 32,
        metrics: list[str] | tuple[str, ...] = ("exact_match",),
        answer_regex: str | None = None,
        labelled_head: bool = False,
        compile_blocks: bool = False,
        shared_prefix: bool = False,
        shared_prefix_train: bool | str = False,
        prompt_once: bool = False,
    ) -> None:
        super().__init__()
        self.adapter = adapter
        self.model = adapter.model
        # from_pretrained leaves the base in eval mode; LoRA dropout must be active in training
        self.model.train()
        self.tokenizer = tokenizer
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.max_new_tokens = max_new_tokens
        self.generation_batch_size = generation_batch_size
        self.task = get_task(adapter.task)
        # causal LMs: only the labelled positions through the output head (compute.labelled_head);
        # not under sharded strategies, whose wrapped model must run as a whole
        self.labelled_head = labelled_head
        # compute.compile: the model's blocks compiled for the training steps (loralab.compiling)
        self.compile_blocks = compile_blocks
        self._compiler: Any = None
        # compute.shared_prefix: the prompts' common first tokens computed once per generation batch
        # and per validation / test loss batch; compute.shared_prefix_train: per training batch
        self.shared_prefix = shared_prefix
        # (auto: on where the steps are bound by arithmetic, the CPU; resolved at the first step)
        self.shared_prefix_train = shared_prefix_train
        # compute.prompt_once: the validation / test loss batches answer their rows on the way, each
        # prompt through the model once for both (one process; causal LMs with the labelled head)
        self.prompt_once = prompt_once
        self._answering: Answering | None = None
        # answers that came from the loss batches' pass (the tests read it)
        self.answered_in_loss = 0
        # what the automatic choices came to (summary.json `compute`)
        self.compute_choices: dict = {}
        # seconds per phase besides the training steps (summary.json `time`)
        self.clock = PhaseClock()
        # how greedy answers are scored (loralab.metrics), each logged as val/<name> and test/<name>
        self.metrics = list(metrics)
        self.answer_pattern = check_regex(answer_regex)
        # frozen base weights are not part of checkpoints (see AdapterCheckpoint)
        self.strict_loading = False
        self.tokens_seen = 0
        self.train_seconds = 0.0
        self.last_val_step = -1
        self._batch_start = 0.0
        self._val_sums: list[torch.Tensor] = []
        self._warned_sharded = False
        self._global_tokens: int | None = None
        # the untrained model's figures kept between runs (loralab.before_cache; set by loralab.train)
        self.before_cache: Any = None

    def forward(self, **batch: torch.Tensor) -> Any:
        return self.model(**batch)

    # ---- training ----------------------------------------------------------------------
    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self._batch_start = time.perf_counter()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        world = self.trainer.world_size
        labelled = self._labelled()
        # compiled blocks run without a key/value cache: whole rows there
        prefix = self._prefix_train() and labelled and self._compiler is None
        if world == 1 or not self.task.token_loss:
            loss = self.task.loss(self.model, batch, labelled=labelled, shared_prefix=prefix)
        else:
            # the mean over every predicted token of the global batch, as one process computes
            # it: each rank divides its token-loss sum by (global tokens / world size), and the
            # strategy's gradient average makes that sum / global tokens. (The model's own mean
            # per rank would weigh a rank's tokens by 1 / its own count.)
            local = torch.stack([self.task.predicted(batch), self.task.tokens(batch)]).float()
            predicted, seen = self.trainer.strategy.reduce(local, reduce_op="sum")
            self._global_tokens = int(seen)  # throughput is counted over every process
            num_items = (predicted / world).clamp_min(1e-6)
            loss = self.task.loss(self.model, batch, num_items=num_items, labelled=labelled, shared_prefix=prefix)
        self.log(
            "train/loss",
            loss,
            prog_bar=True,
            batch_size=batch["input_ids"].shape[0],
            sync_dist=self.trainer.world_size > 1,
        )
        groups = self.trainer.optimizers[0].param_groups
        self.log("train/lr", groups[0]["lr"])
        # variants with several groups (LoRA+) name them: each group's rate is logged
        for group in groups:
            if "name" in group and group["params"]:
                self.log(f"train/lr/{group['name']}", group["lr"])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: dict, batch_idx: int) -> None:
        seconds = time.perf_counter() - self._batch_start
        tokens = self._global_tokens if self._global_tokens is not None else int(self.task.tokens(batch))
        self._global_tokens = None
        self.tokens_seen += tokens
        self.train_seconds += seconds
        self.log("train/tokens_per_s", tokens / max(seconds, 1e-9), prog_bar=True)
        # stop through should_stop so that Lightning validates at the last step
        if 0 < self.trainer.max_steps <= self.trainer.global_step:
            self.trainer.should_stop = True

    def on_train_start(self) -> None:
        if self.compile_blocks and self._compiler is None:
            from loralab.compiling import BlockCompiler

            self._compiler = BlockCompiler(self.model)
            log.info("compute.compile: %d blocks compiled for the training steps", len(self._compiler))
        if self._compiler is not None:
            self._compiler.train_mode()

    def on_train_end(self) -> None:
        # the merge check copies the model, and generation runs it: eager from here on
        if self._compiler is not None:
            self._compiler.eager_mode()
            self._compiler = None

    # ---- validation --------------------------------------------------------------------
    def on_validation_start(self) -> None:
        self.clock.start("validate")
        if self._compiler is not None:
            self._compiler.eager_mode()

    def on_validation_end(self) -> None:
        self.clock.stop("validate")
        if self._compiler is not None and self.trainer.training:
            self._compiler.train_mode()

    def on_validation_epoch_start(self) -> None:
        self._val_sums = []
        self._answering = self.answering(getattr(self.trainer.datamodule, "generation_set", None) or [])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # the model's loss is a mean over `count` positions: the epoch's loss weighs batches by it
        self._val_sums.append(
            self._answering.batch_sums(self.model, self.task, batch, self._labelled(), self.shared_prefix)
        )

    def answering(self, rows: list[dict]) -> Answering:
        """What a split's loss batches collect on the way (compute.prompt_once, evaluation.Answering):
        on with one process, a task that can, and the labelled head."""
        world = self.trainer.world_size if self._trainer is not None else 1
        on = self.prompt_once and self.task.answers_in_loss and world == 1 and self._labelled()
        return Answering(on, rows, self.tokenizer, self.max_new_tokens)

    def _collected(self, answering: Answering | None) -> list[str] | None:
        """The answers the loss batches collected (counted in answered_in_loss), or None."""
        answers = answering.collected() if answering is not None else None
        self.answered_in_loss += len(answers) if answers is not None else 0
        return answers

    def _prefix_train(self) -> bool:
        """compute.shared_prefix_train, `auto` resolved by the device the steps run on."""
        if self.shared_prefix_train == "auto":
            on = self.device.type == "cpu"
            why = (
                "on the CPU the steps are bound by arithmetic, which the shared prefix cuts"
                if on
                else f"on {self.device.type} a step of this size waits on kernel launches, and the prefix "
                "split adds ~80% more of them (the first GPU run: 0.36x the hand-written loop with it on)"
            )
            self.shared_prefix_train = on
            self.compute_choices["shared_prefix_train"] = {"asked": "auto", "used": on, "why": why}
            log.info("compute.shared_prefix_train=auto: %s (%s)", "on" if on else "off", why)
        return bool(self.shared_prefix_train)

    def _labelled(self) -> bool:
        return self.labelled_head and not (self._trainer is not None and sharded_strategy(self.trainer))

    def on_validation_epoch_end(self) -> None:
        sums = torch.stack(self._val_sums).sum(0) if self._val_sums else torch.zeros(3, device=self.device)
        sums = self.all_gather(sums).reshape(-1, 3).sum(0)
        loss = (sums[0] / sums[1].clamp_min(1)).item()
        self.log("val/loss", loss, prog_bar=True, rank_zero_only=True)
        self.log("val/ppl", math.exp(min(loss, 50.0)), rank_zero_only=True)
        if self.task.metric == "accuracy":
            self.log("val/accuracy", (sums[2] / sums[1].clamp_min(1)).item(), prog_bar=True)
        elif self.task.generates:
            rows = getattr(self.trainer.datamodule, "generation_set", None) or []
            if rows and sharded_strategy(self.trainer):
                # greedy decoding runs the model outside the strategy's forward, which under
                # FSDP/ZeRO-3 holds only a shard of the weights: not measured there
                if not self._warned_sharded:
                    log.warning(
                        "val/exact_match is not measured under %s (generation needs the whole model): "
                        "val/loss and val/ppl are; measure exact match on the saved adapter with trainer=gpu",
                        type(self.trainer.strategy).__name__,
                    )
                    self._warned_sharded = True
            elif rows:
                for name, value in self.answer_scores(rows, answers=self._collected(self._answering)).items():
                    self.log(f"val/{name}", value, prog_bar=True)
        self.last_val_step = self.trainer.global_step

    @torch.no_grad()
    def evaluate(self, loader: Any, rows: list[dict], prefix: str) -> dict[str, float]:
        """One split's metrics outside Lightning's loops, as validation computes them (the test split
        after fit): `<prefix>/loss`, `/ppl`, and the task's metric. With several processes each rank
        runs its share and the sums are reduced."""
        was_training = self.model.training
        self.model.eval()
        try:
            answering = self.answering(rows)
            sums = loss_sums(
                self.model, self.task, loader, self.device, self._labelled(), self.shared_prefix, answering
            )
            if self._trainer is not None and self.trainer.world_size > 1:
                sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
            metrics = split_figures(sums, prefix, self.task)
            if self.task.generates and rows and not (self._trainer is not None and sharded_strategy(self.trainer)):
                scores = self.answer_scores(rows, answers=self._collected(answering))
                metrics.update({f"{prefix}/{name}": value for name, value in scores.items()})
        finally:
            self.model.train(was_training)
        return metrics

    def generate_answers(self, prompts: list[list[int]]) -> list[str]:
        """Greedy answers to token-id prompts, in batches, as the task generates them."""
        return greedy_answers(
            self.model,
            self.task,
            self.tokenizer,
            prompts,
            self.max_new_tokens,
            self.generation_batch_size,
            self.shared_prefix,
        )

    def answer_scores(
        self, rows: list[dict], names: list[str] | None = None, answers: list[str] | None = None
    ) -> dict[str, float]:
        """Each metric's mean over the rows' greedy answers against their references (one
        generation pass for every metric; `answers`: already generated, one process). With several
        processes each answers every world_size-th prompt and the sums are reduced."""
        names = self.metrics if names is None else names
        world = self.trainer.world_size if self._trainer is not None else 1
        rank = self.trainer.global_rank if self._trainer is not None else 0
        mine = rows[rank::world]
        if answers is None or world > 1:
            answers = self.generate_answers([r["prompt_ids"] for r in mine]) if mine else []
        sums = score(answers, [r["reference"] for r in mine], names, self.answer_pattern)
        totals = torch.tensor([float(sums[name]) for name in names], dtype=torch.float64)
        if world > 1:
            totals = self.trainer.strategy.reduce(totals.to(self.device), reduce_op="sum").cpu()
        return {name: float(total) / len(rows) for name, total in zip(names, totals.tolist(), strict=True)}

    def exact_match(self, rows: list[dict]) -> float:
        """Share of greedy answers equal to the reference (after stripping whitespace)."""
        return self.answer_scores(rows, ["exact_match"])["exact_match"]

    # ---- optimizer ---------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.adapter.make_optimizer(self.optimizer_factory)
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, num_training_steps=total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
