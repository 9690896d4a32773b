"""README.md and docs/*.md say only what exists.

- Every training command in a fenced shell block (`loralab-train ...`, `python -m loralab ...`,
  `make train ARGS="..."`), and every whole `loralab-train ...` command written in inline code, is
  composed with Hydra in-process from conf/ (every job of a `-m` sweep, the preset's own axes
  included) and checked with `loralab.validation.validate`; a refusal that only says the machine
  lacks what the example is for (CUDA, a cluster, the example's own files) is accepted.
- Every config key written in inline code (`variant.r`, `data.max_length=256`, `hydra.launcher.n_jobs`)
  exists in the composed config: the default one, or one with an option of the group it belongs to
  (`variant.lr_ratio` is LoRA+'s); `group=option` names an option of that group.
- Every relative link (and its #anchor) and every repository path in inline code exists; the
  README is at most 150 lines.
- Every other command in a fenced block names a console script of pyproject.toml (with flags its
  parser defines) or a target of the Makefile; `loralab-rerun`'s overrides name existing keys.
- The reference tables list what conf/ has: docs/configs.md every option of every group (and its
  default), docs/variants.md every variant with its own keys and their defaults, docs/devices.md
  every trainer preset.

A failure names the file, the line, the command or key, and what is wrong.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.object_type import ObjectType
from omegaconf import DictConfig, OmegaConf, open_dict

from loralab.config.paths import CONF_DIR
from loralab.validation import register_schemas

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 150

# Pages whose inline code (keys and whole commands) is not checked, with the reason.
INLINE_NOT_CHECKED = {
    "docs/bad-inputs.md": "the catalogue of refused inputs: its keys and values are wrong on purpose "
    "(tests/integration/test_bad_inputs.py runs every row)",
}
# Inline spans that look like config keys and are not, with the reason.
NOT_KEYS = {
    "trainer.fit": "Lightning's Trainer.fit in docs/architecture.md, not a config key",
}
# Inline whole commands not composed, with the reason.
COMMANDS_NOT_COMPOSED = {
    "loralab-train <this run's overrides> resume=auto hydra.run.dir=<this run>": "a template a run prints",
}
# Refusals that say only that this machine lacks what an example is for: (pattern, what it lacks).
MACHINE_REFUSALS = [
    (r"needs a CUDA GPU", "a CUDA GPU"),
    (r"this machine has \d+ GPU", "that many GPUs"),
    (r"needs a multi-node launch|several processes were launched from outside", "a cluster launch"),
    (r"needs the deepspeed package|needs bitsandbytes", "an optional package"),
    (r"(data\.train_file|data\.val_file|ckpt_path) not found", "the example's own files"),
]
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
# an unlabelled block is a shell block when a line starts with one of these
SHELL_LOOKING = re.compile(r"\s*(\$\s+)?(loralab-|make\b|python|pip\b|srun\b|\.venv/|[A-Z_]+=)")
# Hydra's and loralab's flags (cli.FLAGS_HELP); the value of those in TAKES_VALUE is skipped too
TRAIN_FLAGS = {"-m", "--multirun", "--verbose", "--cfg", "-c", "--resolve", "--help", "-h", "--hydra-help", "--info"}
TAKES_VALUE = {"--cfg", "-c", "--info"}
FILE_SUFFIXES = (".json", ".jsonl", ".yaml", ".yml", ".py", ".md", ".csv", ".png", ".log", ".ckpt", ".txt")
FILE_SUFFIXES += (".safetensors", ".parquet", ".gguf", ".bin", ".patch", ".sh")
REPO_DIRS = ("src/", "conf/", "tests/", "docs/", "experiments/", "benchmarks/", ".ci/")


# ---- reading the pages ------------------------------------------------------------------------
@dataclass
class Command:
    page: str
    line: int
    text: str
    argv: list[str] = field(default_factory=list)

    def where(self) -> str:
        return f"{self.page}:{self.line}: {self.text!r}"


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def fenced_blocks(page: Path) -> list[tuple[str, int, list[str]]]:
    """(language, line of the first content line, lines) of every fenced block."""
    blocks, current = [], None
    for number, line in enumerate(page.read_text().splitlines(), 1):
        fence = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
        if fence and current is None:
            current = (fence.group(2).lower(), number + 1, [])
        elif fence and current is not None:
            blocks.append(current)
            current = None
        elif current is not None:
            current[2].append(line)
    assert current is None, f"{rel(page)}: a fenced block opened at line {current[1] - 1} is never closed"
    return blocks


def prose(page: Path) -> str:
    """The page with its fenced blocks blanked out (line numbers kept)."""
    lines = page.read_text().splitlines()
    inside = False
    for i, line in enumerate(lines):
        fence = re.match(r"^\s*(```+|~~~+)", line)
        if fence or inside:
            lines[i] = ""
        if fence:
            inside = not inside
    return "\n".join(lines)


def inline_spans(page: Path) -> list[tuple[int, str]]:
    """(line, text) of every inline code span outside fenced blocks (a span may wrap a line)."""
    text = prose(page)
    return [
        (text.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split()))
        for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text)
        if "\n\n" not in m.group(1)
    ]


def shell_commands(page: Path) -> list[Command]:
    """Every command line of the shell blocks (continuations joined, comments and prompts dropped)."""
    found = []
    for lang, first, lines in fenced_blocks(page):
        if lang not in SHELL_LANGS or (not lang and not any(SHELL_LOOKING.match(line) for line in lines)):
            continue
        pending, start = "", first
        for offset, raw in enumerate(lines):
            line = re.sub(r"^\s*\$\s+", "", raw).rstrip()
            if not pending:
                start = first + offset
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line, pending = pending + line, ""
            try:
                argv = shlex.split(line, comments=True)
            except ValueError as exc:
                found.append(Command(rel(page), start, line.strip(), ["<unparsable>", str(exc)]))
                continue
            if argv:
                found.append(Command(rel(page), start, line.split(" #")[0].strip(), argv))
    return found


# ---- what exists -------------------------------------------------------------------------------
def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.M))


def console_scripts() -> dict[str, str]:
    """Script name -> the source of its entry point's module (a file, or a package's directory)."""
    section = (ROOT / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    scripts = dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.:]+)"', section, re.M))  # tomllib is Python 3.11+
    sources = {}
    for name, target in scripts.items():
        module = "src/" + target.split(":")[0].replace(".", "/")
        sources[name] = module + ".py" if (ROOT / (module + ".py")).exists() else module
    return sources


def defined_flags(source: str) -> set[str]:
    """The --flags an argparse parser in `source` (a file, or every file of a package) defines."""
    path = ROOT / source
    text = "\n".join(p.read_text() for p in ([path] if path.is_file() else sorted(path.rglob("*.py"))))
    return set(re.findall(r"""add_argument\(\s*(?:"-\w",\s*)?"(--[\w-]+)\"""", text)) | {"--help", "-h"}


def is_placeholder(value: str) -> bool:
    return value in ("...", "…") or "<" in value or ">" in value or bool(re.fullmatch(r"[A-Z][A-Z_]+", value))


def github_anchors(page: Path) -> set[str]:
    anchors, seen = set(), {}
    for lang_line in prose(page).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", lang_line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


class Configs:
    """Hydra composition from conf/, in this process (a compose takes about 0.1 s)."""

    def __init__(self) -> None:
        self.loader = GlobalHydra.instance().config_loader()
        self.cache: dict[tuple[str, ...], dict] = {}
        self.checked: dict[tuple[tuple[str, ...], bool], str | None] = {}
        self.groups = self._groups("")

    def _groups(self, parent: str) -> dict[str, list[str]]:
        found = {}
        for name in self.loader.list_groups(parent):
            group = f"{parent}/{name}" if parent else name
            options = [o for o in self.loader.get_group_options(group, ObjectType.CONFIG) if not o.startswith("_")]
            if options:
                found[group] = sorted(options)
            found.update(self._groups(group))
        return found

    def compose(self, overrides: list[str]) -> DictConfig:
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # for ${hydra:...}, as in a run
        return cfg

    def check_job(self, overrides: tuple[str, ...], validated: bool) -> str | None:
        """What is wrong with one job's config (None: nothing): it does not compose, or `validate`
        refuses it for another reason than what this machine lacks. The same job in several
        pages is checked once."""
        from loralab.errors import ConfigError
        from loralab.validation import validate

        if (overrides, validated) not in self.checked:
            problem = None
            try:
                cfg = self.compose(list(overrides))
                with open_dict(cfg):
                    del cfg["hydra"]
                if validated:  # a placeholder value (model.name_or_path=...) is the reader's to fill in
                    validate(cfg)
            except ConfigError as exc:
                if not any(re.search(pattern, str(exc)) for pattern, _ in MACHINE_REFUSALS):
                    problem = f"refused by validate: {exc}"
            except Exception as exc:  # Hydra: an unknown option, key or value type
                problem = f"does not compose: {' '.join(str(exc).split())}"
            self.checked[overrides, validated] = problem
        return self.checked[overrides, validated]

    def tree(self, overrides: tuple[str, ...] = ()) -> dict:
        """The composed config (Hydra's part included) as plain containers, unresolved."""
        if overrides not in self.cache:
            cfg = self.compose(list(overrides))
            self.cache[overrides] = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
        return self.cache[overrides]

    def group_of(self, key: str) -> str | None:
        """The config group a dotted key belongs to (the longest: model.quantization.bits -> model/quantization)."""
        parts = key.split(".")
        for n in range(len(parts) - 1, 0, -1):
            if "/".join(parts[:n]) in self.groups:
                return "/".join(parts[:n])
        return None

    def key_exists(self, key: str) -> str | None:
        """None when `key` is in the default config or in one with an option of its group, else why not."""
        if has_key(self.tree(), key):
            return None
        group = self.group_of(key)
        if group is None:
            return f"{key} is not in the default config and belongs to no config group"
        for option in self.groups[group]:
            if has_key(self.tree((f"{group}={option}",)), key):
                return None
        return f"{key} is in no option of the group {group} ({', '.join(self.groups[group])})"


def has_key(tree: dict, key: str) -> bool:
    node = tree
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


@pytest.fixture(scope="module")
def configs():
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        yield Configs()
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None  # as before: other tests see no run's Hydra config


# ---- training commands ----------------------------------------------------------------------------
def training_overrides(argv: list[str]) -> tuple[list[str], bool, bool] | None:
    """(overrides, multirun, has a placeholder value) of a training command, None when it is none."""
    for i, word in enumerate(argv):
        name = Path(word).name
        if name == "loralab-train":
            args = argv[i + 1 :]
            break
        if re.fullmatch(r"python3?(\.\d+)?", name) and argv[i + 1 : i + 3] == ["-m", "loralab"]:
            args = argv[i + 3 :]
            break
        if name == "make" and len(argv) > i + 1 and argv[i + 1] == "train":
            make_args = [a.split("=", 1)[1] for a in argv[i + 2 :] if a.startswith("ARGS=")]
            args = shlex.split(make_args[0]) if make_args else []
            break
    else:
        return None
    overrides, multirun, placeholder, skip = [], False, False, False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("-"):
            if arg not in TRAIN_FLAGS:
                raise ValueError(f"unknown flag {arg} (loralab-train takes {', '.join(sorted(TRAIN_FLAGS))})")
            multirun |= arg in ("-m", "--multirun")
            skip = arg in TAKES_VALUE
        elif is_placeholder(arg):
            continue  # `loralab-train --verbose ...`, `<preset>`: the rest still composes and validates
        elif "=" in arg and is_placeholder(arg.split("=", 1)[1]):
            overrides.append(arg.split("=", 1)[0] + "=placeholder")
            placeholder = True
        else:
            overrides.append(arg)
    return overrides, multirun, placeholder


def jobs(configs: Configs, overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override lists of every job: one for a run; a sweep's grid (the command line's axes and
    the basic sweeper's params from the config, e.g. an experiment preset's); Optuna: one job,
    after checking that every key of its search space exists."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not multirun:
        return [overrides]
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    first = [
        o.get_key_element() + "=" + next(o.sweep_string_iterator()) if o.is_sweep_override() else o.input_line
        for o in parsed
    ]
    sweeper = configs.tree(tuple(first))["hydra"]["sweeper"]
    params = sweeper.get("params") or {}
    if not sweeper["_target_"].endswith("BasicSweeper"):
        for key in params:
            if why := configs.key_exists(key):
                raise ValueError(f"the sweeper's search space: {why}")
        return [first]
    given = {o.key_or_group for o in parsed}
    grid = parsed + parser.parse_overrides([f"{k}={v}" for k, v in params.items() if k not in given])
    return [list(job) for batch in BasicSweeper.split_arguments(grid, None) for job in batch]


def check_training_command(configs: Configs, command: Command) -> tuple[list[str], int]:
    """Problems of one training command (empty: fine), and how many jobs were composed."""
    try:
        found = training_overrides(command.argv)
        assert found is not None
        overrides, multirun, placeholder = found
        composed = jobs(configs, overrides, multirun)
    except Exception as exc:
        return [f"{command.where()}: {type(exc).__name__}: {' '.join(str(exc).split())}"], 0
    problems = []
    for job in composed:
        if problem := configs.check_job(tuple(job), validated=not placeholder):
            label = f" (sweep job {' '.join(job)})" if multirun else ""
            problems.append(f"{command.where()}{label}: {problem}")
    return problems, len(composed)


def all_training_commands() -> list[Command]:
    commands = [c for page in PAGES for c in shell_commands(page) if c.argv and is_training(c.argv)]
    for page in [p for p in PAGES if rel(p) not in INLINE_NOT_CHECKED]:
        for line, span in inline_spans(page):
            if span.startswith(("loralab-train ", "python -m loralab ")) and span not in COMMANDS_NOT_COMPOSED:
                commands.append(Command(rel(page), line, span, shlex.split(span)))
    return commands


def is_training(argv: list[str]) -> bool:
    try:
        return training_overrides(argv) is not None
    except ValueError:
        return True  # a training command with a bad flag: reported by the check


def test_training_commands_compose_and_validate(configs):
    commands = all_training_commands()
    problems, composed = [], 0
    for command in commands:
        found, n = check_training_command(configs, command)
        problems += found
        composed += n
    assert len(commands) >= 30 and composed >= len(commands), (len(commands), composed)
    assert not problems, "\n".join(problems)


# ---- config keys in inline code ----------------------------------------------------------------
def inline_keys(configs: Configs, page: Path) -> list[tuple[int, str, str | None]]:
    """(line, key, value or None) of every `group.key`, `group.key=value`, `group=option` and
    `top_level_key=value` token in the page's inline code."""
    top = set(configs.tree())
    found = []
    for line, span in inline_spans(page):
        if span in NOT_KEYS:
            continue
        for token in span.split():
            match = re.fullmatch(r"[+~]?([a-z_][\w/]*(?:\.[\w-]+)*)(?:=(\S*))?", token.strip(",;:()\"'"))
            if not match or match.group(1).endswith(FILE_SUFFIXES):
                continue
            key, value = match.group(1), match.group(2)
            head = re.split(r"[./]", key)[0]
            if head not in top or ("." not in key and value is None):
                continue  # prose (`model`, `adapter/`), a module name, a file
            found.append((line, key, value))
    return found


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_config_keys_exist(configs, page):
    if rel(page) in INLINE_NOT_CHECKED:
        pytest.skip(INLINE_NOT_CHECKED[rel(page)])
    problems = []
    for line, key, value in inline_keys(configs, page):
        where = f"{rel(page)}:{line}: `{key}{'' if value is None else '=' + value}`"
        if key in configs.groups:  # group=option (a sweep: option,option)
            for option in (value or "").split(","):
                if option not in configs.groups[key] and option not in ("null", "") and not is_placeholder(option):
                    problems.append(f"{where}: {key} has no option {option!r} ({', '.join(configs.groups[key])})")
        elif why := configs.key_exists(key):
            problems.append(f"{where}: {why}")
    assert not problems, "\n".join(problems)


# ---- links, paths, length ----------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_links_and_paths_exist(page):
    problems = []
    text = prose(page)
    for m in re.finditer(r"\[[^\]]*\]\(([^)\s]+)\)", text):
        target, line = m.group(1), text.count("\n", 0, m.start()) + 1
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{rel(page)}:{line}: link {target}: {file.relative_to(ROOT)} does not exist")
        elif anchor and file.suffix == ".md" and anchor not in github_anchors(file):
            problems.append(f"{rel(page)}:{line}: link {target}: no heading #{anchor} in {rel(file)}")
    for line, span in inline_spans(page):
        for token in span.split():
            token = token.strip(",;:()")
            if token.startswith(REPO_DIRS) and not is_placeholder(token) and "*" not in token:
                if not (ROOT / token).exists():
                    problems.append(f"{rel(page)}:{line}: `{token}` does not exist in the repository")
    assert not problems, "\n".join(problems)


def test_readme_is_the_front_door():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines: at most {README_MAX_LINES}; move reference to docs/"
    )
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)", README.read_text()))
    pages = {rel(p) for p in PAGES if p != README}
    assert pages <= linked, f"README.md does not link {sorted(pages - linked)}"


# ---- other commands ----------------------------------------------------------------------------
def test_other_commands_exist():
    targets, scripts = makefile_targets(), console_scripts()
    problems, checked = [], 0
    for command in [c for page in PAGES for c in shell_commands(page)]:
        argv = command.argv
        if argv[0] == "<unparsable>":
            problems.append(f"{command.where()}: the shell cannot parse it: {argv[1]}")
            continue
        for i, word in enumerate(argv):
            name = Path(word).name
            if name == "make":
                checked += 1
                named = [a for a in argv[i + 1 :] if not a.startswith("-") and "=" not in a]
                if not named or named[0] not in targets:
                    problems.append(f"{command.where()}: no Makefile target {named[:1]} ({', '.join(sorted(targets))})")
                break
            if name.startswith("loralab-"):
                checked += 1
                if name not in scripts:
                    problems.append(f"{command.where()}: {name} is not a console script of pyproject.toml")
                elif name != "loralab-train":
                    defined = defined_flags(scripts[name])
                    for flag in (a.split("=", 1)[0] for a in argv[i + 1 :] if a.startswith("-")):
                        if flag not in defined:
                            problems.append(f"{command.where()}: {name} has no flag {flag} ({scripts[name]})")
                break
    assert checked >= 10, checked
    assert not problems, "\n".join(problems)


def test_rerun_overrides_exist(configs):
    """`loralab-rerun RUN_DIR key=value`: the keys exist in the config a run saves."""
    problems = []
    for command in [c for page in PAGES for c in shell_commands(page)]:
        if Path(command.argv[0]).name != "loralab-rerun":
            continue
        for arg in command.argv[1:]:
            if "=" in arg and not arg.startswith("-") and (why := configs.key_exists(arg.split("=", 1)[0])):
                problems.append(f"{command.where()}: {why}")
    assert not problems, "\n".join(problems)


# ---- reference tables --------------------------------------------------------------------------
# Options in conf/ that docs/configs.md's table may leave out for now, with the reason.
OPTIONS_NOT_DOCUMENTED = {
    "model/tiny_t5": "the seq2seq task's model, being added with its own documentation by another change",
}
# Inline names in docs/variants.md's "own keys" column that are values, not keys, with the reason.
VARIANT_TABLE_VALUES = {
    "module": "a value of granularity",
    "layer": "a value of granularity",
    "pissa_niter_K": "peft's init_lora_weights value that svd_niter selects",
}


def table(page: Path, header_cell: str) -> list[tuple[int, dict[str, str]]]:
    """(line, {column: cell}) of each row of the first table whose header has `header_cell`."""
    lines = page.read_text().splitlines()
    for start, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and header_cell in cells:
            rows = []
            for number, row in enumerate(lines[start + 2 :], start + 3):
                if not row.startswith("|"):
                    break
                rows.append(
                    (number, dict(zip(cells, (c.strip() for c in row.strip().strip("|").split("|")), strict=False)))
                )
            return rows
    raise AssertionError(f"{rel(page)}: no table with a column {header_cell!r}")


def names(cell: str) -> list[str]:
    return re.findall(r"`([\w/.-]+)`", cell)


def same_value(text: str, value) -> bool:
    text = text.strip()
    if text in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[text] == value
    try:
        return value is not None and not isinstance(value, bool) and float(text) == float(value)
    except (TypeError, ValueError):
        return text == str(value)


def test_config_group_table_lists_every_option(configs):
    """docs/configs.md's table: each group's options, exactly, and the default it marks."""
    page = ROOT / "docs" / "configs.md"
    choices = configs.tree()["hydra"]["runtime"]["choices"]
    problems, seen = [], set()
    for line, row in table(page, "group"):
        groups, parts = names(row["group"]), row["options"].split(";")
        if len(groups) != len(parts):
            problems.append(f"{rel(page)}:{line}: {len(groups)} groups but {len(parts)} ';'-separated option lists")
            continue
        for group, part in zip(groups, parts, strict=True):
            seen.add(group)
            if group not in configs.groups:
                problems.append(f"{rel(page)}:{line}: {group} is not a config group")
                continue
            documented = set(names(part))
            actual = {
                o for o in configs.groups[group] if f"{group}/{o}" not in OPTIONS_NOT_DOCUMENTED or o in documented
            }
            if documented != actual:
                problems.append(
                    f"{rel(page)}:{line}: {group}: the table lists {sorted(documented)}, conf/ has {sorted(actual)}"
                )
            default = re.search(r"`([\w-]+)` \(default|(none) \(default", part)
            if default and (default.group(1) or None) != choices.get(group):
                problems.append(
                    f"{rel(page)}:{line}: {group}: the default is {choices.get(group)}, not {default.group(0)}"
                )
        if groups == ["variant"]:  # "every variant has `r`, `alpha`, ..."
            common = names(row["what it is"].split(";")[0])
            for option in configs.groups["variant"]:
                missing = [
                    k
                    for k in common
                    if k != "all-linear" and not has_key(configs.tree((f"variant={option}",)), f"variant.{k}")
                ]
                if missing:
                    problems.append(f"{rel(page)}:{line}: variant={option} has no {missing}")
    user_groups = {g for g in configs.groups if not g.startswith(("hydra", "paths", "experiment"))}
    if user_groups - seen:
        problems.append(f"{rel(page)}: the table has no row for {sorted(user_groups - seen)}")
    assert not problems, "\n".join(problems)


def test_variant_table_keys_and_defaults(configs):
    """docs/variants.md's reference table: a row per variant, and each own key exists with the
    default the table states."""
    page = ROOT / "docs" / "variants.md"
    rows = table(page, "own keys (default)")
    problems = []
    documented = [names(row["variant"])[0] for _, row in rows]
    if sorted(documented) != configs.groups["variant"]:
        problems.append(
            f"{rel(page)}: the table's variants {sorted(documented)} are not conf/variant's {configs.groups['variant']}"
        )
    for (line, row), variant in zip(rows, documented, strict=True):
        values = configs.tree((f"variant={variant}",))["variant"]
        cell = row["own keys (default)"]
        for key in names(cell):
            if "=" in key or key in VARIANT_TABLE_VALUES:
                continue
            if key not in values:
                problems.append(f"{rel(page)}:{line}: variant={variant} has no key {key} ({', '.join(values)})")
                continue
            stated = re.search(rf"`{key}` \(([^;)]*)", cell)
            if stated and not stated.group(1).startswith("`"):
                text = stated.group(1).split(" = ")[0]
                if not same_value(text, values[key]):
                    problems.append(
                        f"{rel(page)}:{line}: variant={variant}: {key} defaults to {values[key]!r}, not {text}"
                    )
    assert not problems, "\n".join(problems)


def test_trainer_preset_table_lists_every_preset(configs):
    page = ROOT / "docs" / "devices.md"
    rows = table(page, "preset")
    documented = {name for _, row in rows for name in names(row["preset"])}
    assert documented == set(configs.groups["trainer"]), (
        f"{rel(page)}:{rows[0][0]}: the presets table lists {sorted(documented)}, conf/trainer has "
        f"{configs.groups['trainer']}"
    )
    default = [name for _, row in rows for name in names(row["preset"]) if "(default)" in row["preset"]]
    assert default == [configs.tree()["hydra"]["runtime"]["choices"]["trainer"]], default
