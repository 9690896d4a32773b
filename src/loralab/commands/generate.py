"""loralab-generate: see what training did. Answers a prompt with a finished run's model, the
tokens streamed to the terminal as they come; with no prompt, a chat (history kept; /reset
forgets it, /quit or Ctrl-D ends).

  loralab-generate RUN_DIR "What day of the week was 2024-03-01?"
  loralab-generate RUN_DIR                       # chat
  loralab-generate RUN_DIR --merged --temperature 0.7 --top-p 0.9 --seed 1 "..."

The prompt is formatted as the run's training formatted its prompts (the chat template when the
tokenizer has one). Greedy by default (--temperature 0); nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from loralab.errors import ConfigError
from loralab.finished import FinishedRun
from loralab.tasks.base import Item

HELP = "/reset forgets the conversation, /quit (or Ctrl-D) ends it"


class Generator:
    """A run's model, tokenizer and sampling settings; answers prompts in a conversation."""

    def __init__(self, run: FinishedRun, model: Any, tokenizer: Any, settings: dict, max_length: int) -> None:
        from loralab.data.formats import FORMATS

        self.run, self.model, self.tokenizer = run, model, tokenizer
        self.task = run.task()
        self.settings = settings
        self.max_length = max_length
        self.history: list[dict] = []
        conversational = FORMATS[run.cfg.data.format].conversational
        # turns as the run's training formatted prompts: chat data, or plain prompts the task puts
        # through the chat template; otherwise each prompt alone, as the raw text training read
        self.keeps_history = bool(tokenizer.chat_template) and (conversational or self.task.templates_prompts)

    def prompt_ids(self, prompt: str) -> list[int]:
        """The prompt as training encoded prompts; with a chat template, after the history."""
        if self.keeps_history:
            item = Item(messages=[*self.history, {"role": "user", "content": prompt}], answer="")
        else:
            item = Item(prompt=prompt, answer="")
        encoded = self.task.encode(self.tokenizer, item, 10**9, None)
        ids = self.task.prompt_ids(encoded)
        if len(ids) > self.max_length:  # the oldest turns go first
            ids = ids[-self.max_length :]
        return ids

    def answer(self, prompt: str, stream: Any = None) -> str:
        """The model's answer, streamed to `stream` (a text file) as it is generated."""
        from transformers import GenerationConfig, TextStreamer

        tok = self.tokenizer
        s = self.settings
        sample = s["temperature"] > 0
        config = GenerationConfig(
            max_new_tokens=s["max_new_tokens"],
            do_sample=sample,
            num_beams=1,
            min_length=0,
            repetition_penalty=s["repetition_penalty"],
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            decoder_start_token_id=getattr(self.model.config, "decoder_start_token_id", None),
            **({"temperature": s["temperature"], "top_p": s["top_p"], "top_k": s["top_k"]} if sample else {}),
        )
        streamer = None
        if stream is not None:
            streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
            streamer.on_finalized_text = lambda text, stream_end=False: (  # type: ignore[method-assign]
                stream.write(text + ("\n" if stream_end else "")),
                stream.flush(),
            )
        text = self.task.generate(self.model, [self.prompt_ids(prompt)], tok, config, streamer=streamer)[0].strip()
        if self.keeps_history:
            self.history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
        return text


def check_settings(args: argparse.Namespace) -> dict:
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not 0 <= args.temperature <= 100:
        raise ConfigError(f"--temperature must be between 0 (greedy) and 100, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k < 0:
        raise ConfigError(f"--top-k must be 0 (off) or more, got {args.top_k}")
    if args.repetition_penalty <= 0:
        raise ConfigError(f"--repetition-penalty must be above 0 (1: none), got {args.repetition_penalty}")
    return {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "repetition_penalty": args.repetition_penalty,
    }


def chat(gen: Generator, stdin: Any = sys.stdin, stdout: Any = sys.stdout) -> None:
    """Read prompts until /quit or end of input; answer each, streamed."""
    interactive = stdin.isatty()
    if interactive:
        kept = "history kept" if gen.keeps_history else "each prompt answered alone, as training read prompts"
        stdout.write(f"chatting with {gen.run.path} ({kept}); {HELP}\n")
    while True:
        if interactive:
            stdout.write("> ")
            stdout.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:  # Ctrl-C at the prompt ends the chat
            stdout.write("\n")
            break
        if not line:  # Ctrl-D, end of input
            break
        prompt = line.strip()
        if not prompt:
            continue
        if prompt in ("/quit", "/exit"):
            break
        if prompt == "/reset":
            gen.history = []
            stdout.write("(conversation forgotten)\n")
            continue
        if prompt.startswith("/"):
            stdout.write(f"unknown command {prompt.split()[0]}: {HELP}\n")
            continue
        try:
            gen.answer(prompt, stream=stdout)
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat; the turn is not kept
            stdout.write("\n(answer stopped)\n")
        stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="loralab-generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a finished run directory (it holds summary.json and adapter/)")
    parser.add_argument("prompt", nargs="?", help="the prompt (none: a chat on the terminal)")
    parser.add_argument("--merged", action="store_true", help="use merged/ instead of the base + adapter/")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="the answer's length limit (256)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); above: sampling")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (with --temperature)")
    parser.add_argument("--top-k", type=int, default=0, help="top-k sampling, 0: off (with --temperature)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="1: none")
    parser.add_argument("--seed", type=int, default=0, help="the sampling seed")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when there is one)")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' start-up lines")
    args = parser.parse_args(argv)
    from loralab.commands import run_command

    def body() -> int:
        settings = check_settings(args)
        run = FinishedRun.open(args.run_dir, "loralab-generate")
        task = run.task()
        if not task.generates:
            raise ConfigError(
                f"{run.path} trained a {task.name} model, which labels texts and does not generate: "
                "use loralab-eval to see its predictions"
            )
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer = run.load(merged=args.merged, device=device)
        torch.manual_seed(args.seed)
        limit = getattr(model.config, "max_position_embeddings", None) or 2048
        gen = Generator(run, model, tokenizer, settings, max(limit - settings["max_new_tokens"], 8))
        if args.prompt is not None:
            if not args.prompt.strip():
                raise ConfigError("the prompt is empty: pass some text, or no prompt for a chat")
            gen.answer(args.prompt, stream=sys.stdout)
        else:
            chat(gen)
        return 0

    run_command("loralab-generate", body, args.verbose)


if __name__ == "__main__":
    main()
