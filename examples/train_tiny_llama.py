"""Train slicer's own tiny Llama on the Python standard library's source, offline.

Every machine with Python has the corpus (the ``*.py`` files under
``sysconfig.get_paths()["stdlib"]``), so the quickstart, the tests and the fidelity
benchmarks run on real trained activations with no download. The result is a
``transformers`` folder (``LlamaForCausalLM`` + a byte-level BPE tokenizer) plus a
held-out text file for perplexity / fidelity measurements and a model card.

Reproduce the committed model (about 20 minutes on one CPU thread)::

    python examples/train_tiny_llama.py --out examples/models/slicer-tiny

Determinism: file order is sorted, the held-out split is a hash of each file's relative
path, every RNG is seeded and torch runs on one thread. The corpus itself depends on the
Python version (the card records which one trained the committed model).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import sys
import sysconfig
import time
from pathlib import Path

# One thread for the tokenizer trainer too (Rust/rayon): the machine's cores are shared.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

EOS = "<|endoftext|>"
# Directories whose files are not representative Python (tests, generated tables,
# installed third-party packages, a 700 KB docstring dump) and would skew the corpus.
EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "encodings",
     "pydoc_data", "__pycache__", "lib2to3_tests"}
)


@dataclasses.dataclass
class TrainConfig:
    """Everything that determines the trained model; defaults produce the committed one."""

    out: Path = Path("examples/models/slicer-tiny")
    """Output folder (created); receives config, weights, tokenizer, heldout.txt, README."""
    stdlib: Path = Path(sysconfig.get_paths()["stdlib"])
    """Root of the corpus: every ``*.py`` below it, minus ``EXCLUDED_DIRS``."""
    heldout_per_mille: int = 50
    """Files whose path hash mod 1000 is below this go to the held-out split (~5%)."""
    heldout_txt_bytes: int = 64_000
    """Cap on ``heldout.txt`` (whole held-out files, in order, until the cap)."""
    vocab_size: int = 1024
    """BPE vocabulary incl. the 256 byte symbols and the one special token."""
    hidden_size: int = 128
    """Model width."""
    num_layers: int = 6
    """Decoder layers (6 gives 5 interior split points)."""
    num_heads: int = 4
    """Query heads (head_dim = hidden_size / num_heads = 32)."""
    num_kv_heads: int = 2
    """Key/value heads: 2 < 4 query heads, so the model uses GQA."""
    intermediate_size: int = 344
    """SwiGLU width (~8/3 * hidden, rounded to a multiple of 8)."""
    context_tokens: int = 256
    """Training sequence length, also ``max_position_embeddings``."""
    batch_size: int = 16
    """Sequences per optimiser step."""
    steps: int = 1500
    """Optimiser steps: 0.61 s/step measured on one thread (30-step probe), so ~15 min."""
    warmup_steps: int = 60
    """Linear warmup before the cosine decay."""
    lr: float = 3e-3
    """Peak learning rate (small models tolerate a high one)."""
    min_lr_ratio: float = 0.1
    """Cosine decays to ``lr * min_lr_ratio``."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay on matrices (not norms)."""
    eval_every: int = 200
    """Steps between held-out evaluations printed to stdout."""
    eval_windows: int = 64
    """Held-out windows of ``context_tokens`` per evaluation (fixed, non-overlapping)."""
    seed: int = 1234
    """Seeds python, torch and the batch sampler."""
    threads: int = 1
    """torch intra-op threads; 1 so training shares a small machine politely."""


def corpus_files(stdlib: Path) -> list[Path]:
    """Sorted relative paths of the stdlib's ``*.py`` files outside ``EXCLUDED_DIRS``."""
    if not stdlib.is_dir():
        raise ValueError(f"stdlib={stdlib} is not a directory; pass --stdlib PATH")
    files = []
    for path in stdlib.rglob("*.py"):
        rel = path.relative_to(stdlib)
        if any(part in EXCLUDED_DIRS for part in rel.parts[:-1]):
            continue
        if rel.name.startswith("_sysconfigdata"):  # machine-specific build settings
            continue
        files.append(rel)
    return sorted(files, key=lambda p: p.as_posix())


def is_heldout(rel: Path, per_mille: int) -> bool:
    """Deterministic split by file: sha256 of the posix path, not Python's salted hash."""
    digest = hashlib.sha256(rel.as_posix().encode()).digest()
    return int.from_bytes(digest[:4], "big") % 1000 < per_mille


def read_texts(cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """(train texts, held-out texts), one string per file, undecodable bytes replaced."""
    train, heldout = [], []
    for rel in corpus_files(cfg.stdlib):
        text = (cfg.stdlib / rel).read_bytes().decode("utf-8", errors="replace")
        (heldout if is_heldout(rel, cfg.heldout_per_mille) else train).append(text)
    if not train or not heldout:
        raise ValueError(f"empty split: {len(train)} train / {len(heldout)} held-out files")
    return train, heldout


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (GPT-2 style pre-tokenizer), so any text round-trips exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size={vocab_size}: need > 257 (256 bytes + {EOS})")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS,
        clean_up_tokenization_spaces=False, model_max_length=1 << 20,
    )


def encode_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    """One long int64 stream: each file's tokens followed by EOS (the document separator)."""
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    ids: list[int] = []
    for enc in tokenizer._tokenizer.encode_batch(texts, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long)  # (N,)


def build_model(cfg: TrainConfig, tokenizer):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.context_tokens, rms_norm_eps=1e-5,
        tie_word_embeddings=True, bos_token_id=eos_id, eos_token_id=eos_id,
        pad_token_id=eos_id, initializer_range=0.02,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id, do_sample=False,
    )
    return model


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine from ``lr`` down to ``lr * min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


@torch.no_grad()
def mean_loss(model, stream: torch.Tensor, context: int, windows: int) -> float:
    """Mean next-token cross-entropy (nats) over the first ``windows`` disjoint windows."""
    model.eval()
    n = min(windows, (len(stream) - 1) // context)
    if n == 0:
        raise ValueError(f"stream of {len(stream)} tokens is shorter than context={context}")
    x = stream[: n * context].view(n, context)  # (n, T)
    y = stream[1 : n * context + 1].view(n, context)  # (n, T)
    total = 0.0
    for i in range(0, n, 16):
        logits = model(input_ids=x[i : i + 16]).logits  # (b, T, V)
        total += torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), y[i : i + 16].flatten(), reduction="sum").item()
    model.train()
    return total / (n * context)


def unigram_loss(train: torch.Tensor, heldout: torch.Tensor, vocab: int) -> float:
    """Held-out cross-entropy (nats/token) of add-one-smoothed train unigram frequencies."""
    counts = torch.bincount(train, minlength=vocab).double() + 1.0  # (V,)
    logp = (counts / counts.sum()).log()
    return float(-logp[heldout].mean())


def bits_per_byte(nats_per_token: float, tokens: int, nbytes: int) -> float:
    return nats_per_token * tokens / nbytes / math.log(2)


def train(cfg: TrainConfig) -> dict:
    t_start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    train_texts, heldout_texts = read_texts(cfg)
    print(f"corpus: {len(train_texts)} train / {len(heldout_texts)} held-out files", flush=True)
    tokenizer = train_tokenizer(train_texts, cfg.vocab_size)
    train_ids = encode_stream(tokenizer, train_texts)  # (N_train,)
    heldout_ids = encode_stream(tokenizer, heldout_texts)  # (N_heldout,)
    train_bytes = sum(len(t.encode()) for t in train_texts)
    heldout_bytes = sum(len(t.encode()) for t in heldout_texts)
    print(f"tokens: {len(train_ids)} train ({train_bytes / len(train_ids):.2f} B/token), "
          f"{len(heldout_ids)} held-out; prep {time.perf_counter() - t_start:.0f} s", flush=True)

    model = build_model(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg.seed)
    T = cfg.context_tokens
    model.train()
    t_train = time.perf_counter()
    log = []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        starts = torch.randint(0, len(train_ids) - T - 1, (cfg.batch_size,), generator=gen)
        idx = starts[:, None] + torch.arange(T + 1)  # (B, T+1)
        batch = train_ids[idx]  # (B, T+1)
        logits = model(input_ids=batch[:, :-1]).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 20 == 0 or step == cfg.steps - 1:
            elapsed = time.perf_counter() - t_train
            print(f"step {step:5d} loss {loss.item():.4f} lr {lr_at(step, cfg):.2e} "
                  f"{elapsed / (step + 1):.2f} s/step", flush=True)
        if (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            held = mean_loss(model, heldout_ids, T, cfg.eval_windows)
            log.append({"step": step + 1, "heldout_loss": held})
            print(f"  eval step {step + 1}: held-out {held:.4f} nats/token", flush=True)
    train_s = time.perf_counter() - t_train

    train_loss = mean_loss(model, train_ids, T, cfg.eval_windows)
    held_loss = mean_loss(model, heldout_ids, T, 10_000)  # the whole held-out split
    uni = unigram_loss(train_ids, heldout_ids, len(tokenizer))
    h_tok, h_b = len(heldout_ids), heldout_bytes
    metrics = {
        "params": n_params,
        "train_tokens": len(train_ids), "heldout_tokens": h_tok,
        "train_files": len(train_texts), "heldout_files": len(heldout_texts),
        "steps": cfg.steps, "tokens_seen": cfg.steps * cfg.batch_size * T,
        "train_s": round(train_s, 1), "total_s": round(time.perf_counter() - t_start, 1),
        "train_loss": round(train_loss, 4), "heldout_loss": round(held_loss, 4),
        "heldout_bits_per_byte": round(bits_per_byte(held_loss, h_tok, h_b), 4),
        "unigram_loss": round(uni, 4),
        "unigram_bits_per_byte": round(bits_per_byte(uni, h_tok, h_b), 4),
        "uniform_loss": round(math.log(len(tokenizer)), 4),
        "eval_log": log,
        "python": platform.python_version(), "torch": torch.__version__,
    }
    save(cfg, model, tokenizer, heldout_texts, metrics)
    return metrics


def heldout_sample(texts: list[str], cap_bytes: int) -> str:
    """Whole held-out files joined by EOS lines, stopping before ``cap_bytes``."""
    parts, size = [], 0
    for text in texts:
        n = len(text.encode()) + len(EOS) + 1
        if size + n > cap_bytes:
            continue  # skip files that do not fit, keep looking for smaller ones
        parts.append(text)
        size += n
    return (EOS + "\n").join(parts)


# Prompts for the card's greedy samples. A bare "def " is out of distribution: byte-level
# BPE glues a space to the word after it, so a lone trailing "Ġ" token after "def" at the
# start of a file hardly occurs in training, and the committed model answers it with
# "def ReadingIOOWNOWN..." while "\ndef " gives a real function.
SAMPLE_PROMPTS = ("\ndef ", "class Foo:\n    def __init__(self", "def ")


def greedy_sample(model, tokenizer, prompt: str, new_tokens: int = 60) -> str:
    ids = tokenizer(prompt, return_tensors="pt").input_ids  # (1, P)
    out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)  # (1, P + new)
    return tokenizer.decode(out[0])


def save(cfg: TrainConfig, model, tokenizer, heldout_texts, metrics: dict) -> None:
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "heldout.txt").write_text(heldout_sample(heldout_texts, cfg.heldout_txt_bytes))
    (out / "training_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_card(cfg)


def write_card(cfg: TrainConfig) -> dict:
    """Greedy samples + README.md for a trained folder (also run alone by --card-only)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    metrics_path = cfg.out / "training_metrics.json"
    metrics = json.loads(metrics_path.read_text())
    model = AutoModelForCausalLM.from_pretrained(cfg.out).eval()
    tokenizer = AutoTokenizer.from_pretrained(cfg.out)
    metrics.pop("sample_def", None)  # the first card's single sample, superseded
    metrics["samples"] = {p: greedy_sample(model, tokenizer, p) for p in SAMPLE_PROMPTS}
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    (cfg.out / "README.md").write_text(model_card(cfg, metrics))
    print(json.dumps({k: v for k, v in metrics.items() if k != "eval_log"}, indent=2))
    return metrics


def model_card(cfg: TrainConfig, m: dict) -> str:
    defaults = TrainConfig()
    flags = [  # only what differs from the defaults, so the default run reads as one line
        f"--{f.name.replace('_', '-')} {getattr(cfg, f.name)}"
        for f in dataclasses.fields(cfg)
        if f.name != "out" and getattr(cfg, f.name) != getattr(defaults, f.name)
    ]
    samples = "\n".join(f"\nprompt {p!r}:\n```python\n{text}\n```"
                        for p, text in m["samples"].items())
    command = " ".join(["python examples/train_tiny_llama.py", "--out", str(cfg.out), *flags])
    return f"""# slicer-tiny

A tiny Llama-architecture causal LM trained by `examples/train_tiny_llama.py` on the
Python standard library's own source, so slicer's quickstart, tests and fidelity
benchmarks run on real trained activations with no download.

Load it with `AutoModelForCausalLM.from_pretrained("{cfg.out}")` and
`AutoTokenizer.from_pretrained("{cfg.out}")`.

## Architecture
`LlamaForCausalLM`: {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_heads} query
heads / {cfg.num_kv_heads} KV heads (GQA, head_dim {cfg.hidden_size // cfg.num_heads}),
SwiGLU intermediate {cfg.intermediate_size}, RoPE, RMSNorm, tied embeddings, context
{cfg.context_tokens}. {m['params']:,} parameters, fp32 safetensors.
Tokenizer: byte-level BPE (`tokenizers`), vocab {cfg.vocab_size}, one special token
`{EOS}` (bos = eos = pad), so every string round-trips exactly.

## Data
Every `*.py` under `sysconfig.get_paths()["stdlib"]` of Python {m['python']}, sorted by
path, excluding the directories {', '.join(sorted(EXCLUDED_DIRS))} and
`_sysconfigdata*`. Split by file: a file is held out when the sha256 of its relative
path mod 1000 is below {cfg.heldout_per_mille}. {m['train_files']} train files
({m['train_tokens']:,} tokens), {m['heldout_files']} held-out files ({m['heldout_tokens']:,} tokens).
Files are joined with `{EOS}`. `heldout.txt` is whole held-out files (≤ {cfg.heldout_txt_bytes:,}
bytes) joined by `{EOS}` lines, for perplexity and fidelity measurements.

## Training
AdamW (betas 0.9/0.95, weight decay {cfg.weight_decay} on matrices), peak lr {cfg.lr},
{cfg.warmup_steps} warmup steps then cosine to {cfg.min_lr_ratio}× peak, grad-clip 1.0,
{cfg.steps} steps × {cfg.batch_size} random windows of {cfg.context_tokens} tokens
({m['tokens_seen']:,} tokens seen), seed {cfg.seed}, {cfg.threads} torch thread(s).
Training took {m['train_s']:.0f} s ({m['train_s'] / cfg.steps:.2f} s/step; {m['total_s']:.0f} s in
all, incl. tokenizer and encoding), torch {m['torch']}, CPU. Wall time depends on how busy
the CPU is: alone on one thread a 30-step probe ran 0.61 s/step (the basis of the default
`--steps`); more s/step above means the run shared its cores.

Command: `{command}`

## Results (nats/token; bits/byte over the held-out split's UTF-8 bytes)
| model | held-out loss | held-out bits/byte |
|---|---|---|
| uniform over vocab | {m['uniform_loss']:.3f} | - |
| unigram (train frequencies) | {m['unigram_loss']:.3f} | {m['unigram_bits_per_byte']:.3f} |
| slicer-tiny | {m['heldout_loss']:.3f} | {m['heldout_bits_per_byte']:.3f} |

Train loss (first {cfg.eval_windows} windows of the train stream): {m['train_loss']:.3f}.

Greedy samples (60 new tokens, prompt included; see `SAMPLE_PROMPTS` in the script for why
a bare `def ` is a poor prompt):
{samples}

Intended for tests and benchmarks of split inference, not as a code model.
"""


def parse_args(argv=None) -> tuple[TrainConfig, bool]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--card-only", action="store_true",
                        help="rewrite README.md and samples of an already trained --out")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        default = getattr(defaults, f.name)
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(default),
                            default=default, help=f"(default: {default})")
    args = vars(parser.parse_args(argv))
    card_only = args.pop("card_only")
    return TrainConfig(**args), card_only


def main(argv=None) -> int:
    cfg, card_only = parse_args(argv)
    if card_only:
        write_card(cfg)
    else:
        train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
