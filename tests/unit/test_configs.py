"""Every config in conf/ composes, validates and instantiates cheaply."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from loralab.config.paths import CONF_DIR
from loralab.validation import validate

CONF = Path(CONF_DIR)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


STRATEGIES = {
    "gpu": None,
    "ddp": "DDPStrategy",
    "fsdp": "FSDPStrategy",
    "deepspeed_zero2": "DeepSpeedStrategy",
    "deepspeed_zero3": "DeepSpeedStrategy",
}


def check_gpu_preset(cfg, option: str) -> None:
    """A GPU preset: refused in one line on a machine without CUDA, before anything loads; its
    strategy object instantiates (Lightning's own classes, with the preset's settings)."""
    import torch

    from loralab.errors import ConfigError

    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision in ("auto", "32-true")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="needs a CUDA GPU and this machine has none"):
            validate(cfg)
    expected = STRATEGIES[option]
    if expected is None:
        assert cfg.trainer.get("strategy") is None
        return
    if expected == "DeepSpeedStrategy":
        pytest.importorskip("deepspeed")
    strategy = instantiate(cfg.trainer.strategy)
    assert type(strategy).__name__ == expected
    if option == "fsdp":
        assert strategy._state_dict_type == "full" and strategy.kwargs["use_orig_params"] is True
    if option.startswith("deepspeed"):
        assert strategy.config["zero_optimization"]["stage"] == int(option[-1])


def test_fsdp_wrap_policy_wraps_decoder_layers(tiny_adapter):
    """The FSDP preset's policy makes one unit per decoder layer and none for anything else."""
    from loralab.distributed import decoder_layer_policy

    model = tiny_adapter()[0].model.get_base_model()
    policy = decoder_layer_policy()
    wrapped = [n for n, m in model.named_modules() if n and policy(module=m, recurse=False, nonwrapped_numel=0)]
    assert wrapped == ["model.layers.0", "model.layers.1"]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_precision_presets(make_cfg, precision):
    """precision=<preset> sets trainer.precision; fp16 on CPU is refused before anything loads."""
    import torch

    from loralab.errors import ConfigError

    cfg = make_cfg(f"precision={precision}")
    assert cfg.trainer.precision == precision
    if precision == "16-mixed":
        with pytest.raises(ConfigError, match="precision=16-mixed needs a GPU"):
            validate(cfg)
        if torch.cuda.is_available():
            validate(make_cfg("trainer=gpu", f"precision={precision}"))
    else:
        validate(cfg)
        trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
        assert trainer.precision == precision


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "no-bf16"])
def test_precision_auto_chooses_bf16_only_where_the_cpu_computes_it(make_cfg, monkeypatch, native):
    """precision=auto resolves in place, before the config is hashed or checked: bf16-mixed on a CPU
    with native bf16, 32-true elsewhere, the choice and its reason recorded; the hash is that of
    the precision chosen, as if it had been asked for."""
    from loralab import distributed
    from loralab.distributed import resolve_precision
    from loralab.reporting.run_meta import config_hash

    monkeypatch.setattr(distributed, "cpu_has_bf16", lambda: native)
    cfg = make_cfg("precision=auto")
    assert cfg.trainer.precision == "auto"
    resolve_precision(cfg)
    used = "bf16-mixed" if native else "32-true"
    assert cfg.trainer.precision == used
    assert cfg.precision_choice.asked == "auto" and cfg.precision_choice.used == used
    assert ("natively" in cfg.precision_choice.why) == native
    assert config_hash(cfg) == config_hash(make_cfg(f"precision={used}"))
    validate(cfg)
    explicit = make_cfg("precision=bf16-mixed")
    resolve_precision(explicit)  # asked for: left as it is, nothing recorded
    assert explicit.trainer.precision == "bf16-mixed" and "precision_choice" not in explicit


def test_the_presets_default_to_auto_unless_the_environment_says(make_cfg, monkeypatch):
    monkeypatch.delenv("LORALAB_PRECISION")
    assert make_cfg().trainer.precision == "auto" and make_cfg("trainer=gpu").trainer.precision == "auto"
    monkeypatch.setenv("LORALAB_PRECISION", "32-true")
    assert make_cfg().trainer.precision == "32-true"


@pytest.mark.parametrize(
    "group",
    [
        "model",
        "data",
        "variant",
        "trainer",
        "logger",
        "callbacks",
        "optimizer",
        "scheduler",
        "debug",
    ],
)
def test_every_option_composes(make_cfg, group, tmp_path):
    required = {
        "optimizer/lorafa": ["variant=lora_fa"],  # peft's LoRA-FA optimizer fits LoRA-FA only
        "model/hub": ["model.name_or_path=org/some-model"],
        "data/local": [f"data.train_file={tmp_path / 'd.jsonl'}"],
        "data/hub": ["data.hub_id=org/some-data"],
    }
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    assert options(group), f"no options in conf/{group}"
    for option in options(group):
        cfg = make_cfg(f"{group}={option}", *required.get(f"{group}/{option}", []), base=[])
        if group == "trainer" and option not in ("cpu", "ddp_cpu"):
            check_gpu_preset(cfg, option)
            continue
        typed = validate(cfg)
        assert typed.data.name == cfg.data.name and typed.variant.name == cfg.variant.name
        if group == "trainer":
            trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
            assert trainer.max_steps == cfg.trainer.max_steps
            if option == "ddp_cpu":
                assert type(trainer.strategy).__name__ == "DDPStrategy" and trainer.num_devices == 2
                assert trainer.strategy._process_group_backend == "gloo"
        if group == "logger" and option == "csv":
            assert type(instantiate(cfg.logger.csv)).__name__ == "CSVLogger"
        if group == "scheduler":
            import torch

            opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
            sched = instantiate(cfg.scheduler)(opt, num_training_steps=10)
            assert opt.param_groups[0]["lr"] < cfg.optimizer.lr  # warm-up starts low
            assert sched.get_last_lr()[0] == opt.param_groups[0]["lr"]
        if group == "callbacks":
            callbacks = [instantiate(c) for c in cfg.callbacks.values()]
            assert {type(c).__name__ for c in callbacks} >= {
                "Freeze",
                "AdapterCheckpoint",
                "MergeCheck",
                "RunSummary",
            }
        if group == "model" and option != "hub":
            source = instantiate(cfg.model)  # cheap: nothing is loaded or converted yet
            assert source.describe()["name"] == option
            if option == "tiny":
                assert source.load_tokenizer().pad_token is not None


def test_run_dir_follows_experiment_name(make_cfg):
    cfg = make_cfg("data=word_sort", "variant.r=4")
    assert cfg.experiment_name == "word_sort_lora"
    assert cfg.variant.r == 4 and cfg.data.builtin_task == "word_sort"


@pytest.mark.parametrize(
    "choice, target, fields",
    [
        ("hydra/launcher=parallel", "JoblibLauncher", {"n_jobs": 2}),
        ("hydra/launcher=submitit_local", "LocalLauncher", {}),
        ("hydra/launcher=slurm", "SlurmLauncher", {"gpus_per_node": 1, "max_num_timeout": 3, "timeout_min": 240}),
        ("hydra/sweeper=lora_search", "OptunaSweeper", {"direction": "minimize", "n_trials": 12}),
    ],
)
def test_launcher_and_sweeper_presets_compose(choice, target, fields):
    """The plugin presets resolve to the plugins' own classes (the SLURM one cannot run here)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[choice], return_hydra_config=True)
    node = cfg.hydra.launcher if "launcher" in choice else cfg.hydra.sweeper
    assert node._target_.endswith(target)
    assert {k: node[k] for k in fields} == fields
    if "sweeper" in choice:
        assert set(node.params) == {"variant.r", "variant.alpha", "optimizer.lr"}


@pytest.mark.parametrize(
    "experiment, params",
    [
        ("rank_alpha_sweep", {"variant.r": "2,8,32", "variant.alpha": "8,32"}),
        ("seed_study", {"variant": "lora,rslora", "seed": "1,2,3"}),
    ],
)
def test_sweep_experiments_carry_their_grid(experiment, params):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == params
    assert cfg.data.name == "word_sort" and cfg.experiment_name == experiment


def test_help_lists_the_options_users_choose_not_the_schemas(capsys):
    from loralab.cli import print_help
    from loralab.config.paths import CONF_DIR

    print_help(["--help", "variant=vera"], CONF_DIR)
    out = capsys.readouterr().out
    assert "_schema_" not in out
    assert "variant: delta_lora, dora, lora, lora_drop, lora_fa, loraplus, pissa, rslora, vera" in out
    assert "model/quantization: fp4, int8, nf4" in out
    assert "name: vera" in out and "--verbose" in out  # the config as composed, and loralab's flags
