"""Shared helpers of the orchestrator tests."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch


def with_field(base: dict, path: str, value) -> dict:
    """A deep copy of a workload mapping with the dotted ``path`` (``devices.0.link.rate_mbps``)
    set to ``value``."""
    import copy

    d = copy.deepcopy(base)
    keys = path.split(".")
    cur = d
    for k in keys[:-1]:
        cur = cur[int(k)] if k.isdigit() else cur.setdefault(k, {})
    cur[keys[-1]] = value
    return d


def make_char_llama(tmp_path_factory, seed: int, name: str) -> Path:
    """A random tiny Llama with a character-level tokenizer, saved as a model folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2}
    for c in [chr(i) for i in range(32, 127)] + ["\n", "\t"]:
        vocab[c] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=0, eos_token_id=1)
    torch.manual_seed(seed)
    d = tmp_path_factory.mktemp(name)
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The tiny random Llama of the actor tests (vocab 97, 4 layers), saved as a model folder."""
    from slicer.actors.models import load_model
    from tests.actors.conftest import TINY_LLAMA

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("tiny")
    load_model(dict(TINY_LLAMA), seed=7).hf.save_pretrained(d)
    return d


def write_tiny_job(folder: Path, name: str, classes: tuple[str, str], max_new_tokens: int) -> Path:
    """A job folder for the cluster tests: the actor tests' tiny random Llama saved as
    ``tiny/`` and ``wl.yaml``, a lossless fixed split at 2 with one device of each class."""
    from slicer.actors.models import load_model
    from tests.actors.conftest import TINY_LLAMA

    load_model(dict(TINY_LLAMA), seed=5).hf.save_pretrained(folder / "tiny")
    a, b = classes
    (folder / "wl.yaml").write_text(
        f"name: {name}\nmodel: tiny\ninputs: {{prompts: [[1, 5, 9, 13, 2], [3, 4]]}}\ndevices:\n"
        f"  - {{class: {a}, count: 1}}\n  - {{class: {b}, count: 1}}\n"
        f"policy: {{name: fixed, split: 2, offload_step: 1}}\ncodec: lossless\nprecision: float32\n"
        f"requests: 1\nmax_new_tokens: {max_new_tokens}\n")
    return folder / "wl.yaml"


def processes_named(marker: str) -> list[int]:
    """Processes whose name (``/proc/PID/comm``) is ``marker`` (the sandbox attacks name
    themselves before forking, so survivors can be found)."""
    import os

    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == marker:
                found.append(int(pid))
        except OSError:
            pass
    return found
