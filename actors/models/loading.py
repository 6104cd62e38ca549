"""Loading models and configs: hub names, local folders, configs, shipped configs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from slicer.actors.models.families import (
    FAMILIES,
    UnsupportedModelError,
    family_kind,
    unsupported_message,
)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: Hub names and short names -> shipped config file (``configs/<file>.json``). The
#: files are the public ``config.json`` of each model, copied by hand (see
#: ``configs/SOURCES.md``), so profiles of these models work offline with no weights.
ALIASES: dict[str, str] = {
    "meta-llama/Meta-Llama-3-8B": "llama-3-8b",
    "meta-llama/Meta-Llama-3-8B-Instruct": "llama-3-8b",
    "meta-llama/Llama-3.1-8B": "llama-3-8b",
    "llama-3-8b": "llama-3-8b",
    "llama3-8b": "llama-3-8b",
    "meta-llama/Meta-Llama-3-70B": "llama-3-70b",
    "meta-llama/Meta-Llama-3-70B-Instruct": "llama-3-70b",
    "llama-3-70b": "llama-3-70b",
    "llama3-70b": "llama-3-70b",
    "meta-llama/Llama-2-7b-hf": "llama-2-7b",
    "meta-llama/Llama-2-7b-chat-hf": "llama-2-7b",
    "llama-2-7b": "llama-2-7b",
    "llama2-7b": "llama-2-7b",
    "mistralai/Codestral-22B-v0.1": "codestral-22b",
    "codestral-22b": "codestral-22b",
    # The seed's "Codestral-34B" is not a published model: Codestral is 22B; the 34B code
    # model is CodeLlama-34B (both shipped, both planned by the research-question repro).
    "codellama/CodeLlama-34b-hf": "codellama-34b",
    "codellama/CodeLlama-34b-Instruct-hf": "codellama-34b",
    "codellama/CodeLlama-34b-Python-hf": "codellama-34b",
    "codellama-34b": "codellama-34b",
    "Qwen/Qwen2.5-Coder-7B": "qwen2.5-coder-7b",
    "Qwen/Qwen2.5-Coder-7B-Instruct": "qwen2.5-coder-7b",
    "qwen2.5-coder-7b": "qwen2.5-coder-7b",
    "meta-llama/Llama-3.2-3B": "llama-3.2-3b",
    "meta-llama/Llama-3.2-3B-Instruct": "llama-3.2-3b",
    "llama-3.2-3b": "llama-3.2-3b",
    "openai-community/gpt2": "gpt2",
    "gpt2": "gpt2",
    "EleutherAI/pythia-160m": "pythia-160m",
    "pythia-160m": "pythia-160m",
    "microsoft/resnet-50": "resnet-50",
    "resnet-50": "resnet-50",
    "google/vit-base-patch16-224": "vit-base-patch16-224",
    "vit-base-patch16-224": "vit-base-patch16-224",
}


#: Shipped short name -> the hub repo whose weights ``load_model`` fetches for it.
HUB_NAMES: dict[str, str] = {
    "llama-3-8b": "meta-llama/Meta-Llama-3-8B",
    "llama-3-70b": "meta-llama/Meta-Llama-3-70B",
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "codestral-22b": "mistralai/Codestral-22B-v0.1",
    "codellama-34b": "codellama/CodeLlama-34b-hf",
    "qwen2.5-coder-7b": "Qwen/Qwen2.5-Coder-7B",
    "llama-3.2-3b": "meta-llama/Llama-3.2-3B",
    "gpt2": "openai-community/gpt2",
    "pythia-160m": "EleutherAI/pythia-160m",
    "resnet-50": "microsoft/resnet-50",
    "vit-base-patch16-224": "google/vit-base-patch16-224",
}


def shipped_configs() -> list[str]:
    """Short names of the configs shipped with slicer."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def _config_from_dict(d: dict[str, Any]):
    from transformers import AutoConfig

    d = dict(d)
    mt = d.pop("model_type", None)
    if mt is None:
        raise ValueError("config dict needs a 'model_type' (e.g. 'llama'); supported: " + ", ".join(FAMILIES))
    return AutoConfig.for_model(mt, **d)


def resolve_config(name_or_config):
    """A ``transformers`` config from: a config object (returned as is), a dict (with
    ``model_type``), a shipped name or hub alias (``"meta-llama/Meta-Llama-3-70B"``,
    ``"llama-3-70b"``), a path to a ``config.json`` or a model folder, or any hub name
    (``AutoConfig.from_pretrained``, needs internet or the HF cache)."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(name_or_config, PretrainedConfig):
        return name_or_config
    if isinstance(name_or_config, dict):
        return _config_from_dict(name_or_config)
    if not isinstance(name_or_config, (str, Path)):
        raise TypeError(f"expected a model name, path, config or dict, got {type(name_or_config).__name__}")
    key = str(name_or_config)
    if Path(key).is_dir():
        return AutoConfig.from_pretrained(key)
    short = ALIASES.get(key) or ALIASES.get(key.lower())
    if short is None and (CONFIG_DIR / f"{key}.json").exists():
        short = key
    if short is not None:
        cfg = _config_from_dict(json.loads((CONFIG_DIR / f"{short}.json").read_text()))
        cfg._name_or_path = key
        return cfg
    p = Path(key)
    if p.is_file() and p.suffix == ".json":
        cfg = _config_from_dict(json.loads(p.read_text()))
        cfg._name_or_path = str(p.parent)
        return cfg
    return AutoConfig.from_pretrained(key)


def _auto_class(model_type: str):
    from transformers import AutoModelForCausalLM, AutoModelForImageClassification

    return AutoModelForCausalLM if family_kind(model_type) == "causal_lm" else AutoModelForImageClassification


def _local_folder(key: str) -> Path:
    """A local folder with the model's config and safetensors: the path itself, or the
    hub snapshot of a name (only ``*.json`` and ``*.safetensors`` are fetched)."""
    if Path(key).is_dir():
        return Path(key)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(key, allow_patterns=["*.json", "*.safetensors"]))


def load_model(name_or_path_or_config, *, dtype: torch.dtype | None = torch.float32,
               device: str | torch.device = "cpu", seed: int = 0, units: tuple[int, int] | None = None):
    """Load a model as a ``SplitModel``.

    - a local folder or hub name with weights: the checkpoint's weights;
    - a config object, a dict with ``model_type``, or a shipped config name: the
      architecture with random weights (``torch.manual_seed(seed)``), for tests.

    ``units=(a, b)``: materialise only the weights of units ``[a, b)`` (segment-only
    weights, ``slicer.actors.models.weights``): the model is built on the meta device and
    only those units' tensors are read from the safetensors shards; ``(0, 0)`` loads
    none (shapes and profile only). More units load later with
    ``SplitModel.ensure_units``. ``units=None`` loads every unit. ``dtype=None``: the
    checkpoint's own dtype (float32 for configs).

    Raises ``UnsupportedModelError`` (listing the supported architectures) for others."""
    from transformers import PretrainedConfig

    from slicer.actors.models.split import SplitModel
    from slicer.actors.models.weights import Checkpoint, SegmentLoader

    src = name_or_path_or_config
    from_config = isinstance(src, (PretrainedConfig, dict))
    cfg = resolve_config(src)  # first: an unsupported model fails before any weights are read
    if cfg.model_type not in FAMILIES:
        raise UnsupportedModelError(unsupported_message(cfg.model_type))
    if dtype is None:
        dtype = _checkpoint_dtype(cfg)
    if from_config:
        name = getattr(cfg, "_name_or_path", "") or f"{cfg.model_type}-random"
    else:
        key = str(src)
        if not Path(key).exists():  # a short name fetches its hub repo's weights
            key = HUB_NAMES.get(ALIASES.get(key) or ALIASES.get(key.lower()) or "", key)
        name = str(src)
    auto = _auto_class(cfg.model_type)

    def rebuild():
        # built on CPU whatever the target: CUDA's generator would give other random
        # weights for the same seed than the CPU halves of the same model
        torch.manual_seed(seed)
        with torch.device("cpu"):
            return auto.from_config(cfg, dtype=dtype)

    if units is None:
        if from_config:
            hf = rebuild().to(device)
        else:
            hf = auto.from_pretrained(key, dtype=dtype).to(device)
        return SplitModel(hf, name=name)
    with torch.device("meta"):
        hf = auto.from_config(cfg, dtype=dtype)
    loader = SegmentLoader(hf, dtype=dtype, device=torch.device(device),
                           checkpoint=None if from_config else Checkpoint(_local_folder(key)), rebuild=rebuild)
    m = SplitModel(hf, name=name, loader=loader)
    a, b = units
    if b > a:
        m.ensure_units(a, b)
    return m


def _checkpoint_dtype(cfg) -> torch.dtype:
    dt = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
    if isinstance(dt, str):
        dt = getattr(torch, dt, None)
    return dt if isinstance(dt, torch.dtype) else torch.float32
