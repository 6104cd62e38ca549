"""Scorers: what a task needs from a language model, for the whole model and the split one.

A ``Scorer`` answers two questions over token ids:

- ``loglikelihood(context_ids, continuation_ids) -> float``: the sum of log-probabilities
  (nats) of the continuation after the context, teacher-forced;
- ``generate(prompt_ids, max_new_tokens) -> list[int]``: greedy new tokens.

``score(context_ids, continuation_ids)`` is the primitive under ``loglikelihood``: it also
returns the greedy prediction at every continuation position, from which the split and
unsplit runs' next-token agreement is counted.

``HFScorer`` runs any ``transformers`` causal LM unsplit. ``SplitScorer`` runs a
``slicer.actors.models.SplitModel`` under a plan (split ℓ, codec, AR mode, offload step) with the
codec in the loop, exactly as the edge and the server exchange bytes in
``slicer.actors.models.generate``: the context is the prefill payload and each continuation token
is one decoding step with its own payload (the codec's top-k works per payload, so this
matters for lossy codecs).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class TokenScores:
    """Teacher-forced scores of a continuation."""

    logprobs: list[float]
    """log p(continuation[i] | context, continuation[:i]) in nats, one per continuation token."""
    greedy: list[int]
    """The model's argmax at each of those positions."""
    dist: torch.Tensor | None = None
    """``(T, V)`` log-probabilities of every token at each position, when asked for
    (``score(..., full=True)``); for KL divergences between runs."""


class Scorer(Protocol):
    name: str

    def score(self, context_ids: Sequence[int], continuation_ids: Sequence[int], full: bool = False) -> TokenScores: ...

    def loglikelihood(self, context_ids: Sequence[int], continuation_ids: Sequence[int]) -> float: ...

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 0.0,
                 seed: int = 0) -> list[int]: ...


def pick(logits: torch.Tensor, temperature: float, gen: torch.Generator | None) -> int:
    """Greedy at temperature 0, else a draw from softmax(logits / T) with ``gen``: the
    same seed gives the split and unsplit runs the same random stream, so their samples
    differ only where the models do."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, -1)  # (V,)
    return int(torch.multinomial(probs, 1, generator=gen))


def _gen(temperature: float, seed: int) -> torch.Generator | None:
    return torch.Generator().manual_seed(seed) if temperature > 0 else None


def _check(context_ids: Sequence[int], continuation_ids: Sequence[int]) -> None:
    if not context_ids:
        raise ValueError("context_ids is empty: give at least one token (e.g. BOS) to condition on")
    if not continuation_ids:
        raise ValueError("continuation_ids is empty: nothing to score")


def _fit(context: list[int], continuation: list[int], max_len: int) -> tuple[list[int], list[int]]:
    """Drop context tokens from the left so context + continuation fits ``max_len``."""
    if len(continuation) >= max_len:
        raise ValueError(f"continuation of {len(continuation)} tokens does not fit the model's {max_len} positions")
    keep = max_len - len(continuation)
    return context[-keep:], continuation


@dataclass
class HFScorer:
    """The unsplit reference: a ``transformers`` causal LM run whole."""

    model: torch.nn.Module
    """``AutoModelForCausalLM`` (or anything returning ``.logits`` for ``input_ids``)."""
    eos_id: int | None = None
    """Generation stops after this token."""
    name: str = "unsplit"
    """Label in reports."""
    max_len: int = 0
    """Positions the model accepts (0: its config's ``max_position_embeddings``)."""

    def __post_init__(self) -> None:
        self.model.eval()
        if not self.max_len:
            self.max_len = int(getattr(self.model.config, "max_position_embeddings", 2048))

    @torch.no_grad()
    def score(self, context_ids, continuation_ids, full: bool = False) -> TokenScores:
        _check(context_ids, continuation_ids)
        ctx, cont = _fit(list(context_ids), list(continuation_ids), self.max_len)
        ids = torch.tensor([ctx + cont])  # (1, C + T)
        logits = self.model(input_ids=ids).logits[0, len(ctx) - 1 : -1].float()  # (T, V)
        logp = torch.log_softmax(logits, -1)
        tgt = torch.tensor(cont)
        return TokenScores(logp[torch.arange(len(cont)), tgt].tolist(), logits.argmax(-1).tolist(), logp if full else None)

    def loglikelihood(self, context_ids, continuation_ids) -> float:
        return float(sum(self.score(context_ids, continuation_ids).logprobs))

    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens: int, temperature: float = 0.0, seed: int = 0) -> list[int]:
        ids = list(prompt_ids)[-(self.max_len - max_new_tokens):]
        gen = _gen(temperature, seed)
        out = self.model(input_ids=torch.tensor([ids]), use_cache=True)
        new: list[int] = []
        for _ in range(max_new_tokens):
            tok = pick(out.logits[0, -1], temperature, gen)
            new.append(tok)
            if tok == self.eos_id or len(new) == max_new_tokens:
                break
            # transformers >= 5.2x names the KV cache ``cache``; older ones ``past_key_values``.
            if "cache" in out:
                out = self.model(input_ids=torch.tensor([[tok]]), cache=out["cache"], use_cache=True)
            else:
                out = self.model(input_ids=torch.tensor([[tok]]), past_key_values=out.past_key_values, use_cache=True)
        return new


@dataclass
class WireStats:
    """What crossed the edge -> server link during a split run."""

    payload_bytes: int = 0
    """Bytes of every payload, headers included."""
    elements: int = 0
    """Feature elements those payloads carried."""
    payloads: int = 0
    """Payload count (one per server step)."""
    server_s: float = 0.0
    """Wall time in the server half (decode + units [ℓ, n)), seconds."""
    edge_s: float = 0.0
    """Wall time in the edge half (units [0, ℓ) + encode, and local steps), seconds."""

    @property
    def bits_per_element(self) -> float:
        """NaN when no feature crossed the link (e.g. an offload step past the end of
        every sequence): such a run says nothing about the codec's rate."""
        return self.payload_bytes * 8 / self.elements if self.elements else float("nan")


@dataclass
class SplitScorer:
    """A ``SplitModel`` run under a plan, the codec in the loop (see the module docstring)."""

    model: object
    """``slicer.actors.models.SplitModel``."""
    split: int
    """ℓ: the edge runs units [0, ℓ)."""
    codec_cfg: object = None
    """``codec.CodecConfig`` (None: lossless)."""
    mode: str = "split"
    """``split`` or ``local-then-offload`` (SLICER's local-then-offload)."""
    offload_step: int | None = None
    """w of the offload mode."""
    eos_id: int | None = None
    """Generation stops after this token."""
    edge_model: object = None
    """The edge's copy of the model (e.g. ``slicer.actors.models.quant.quantize_front``); None:
    ``model``. The server always runs ``model``."""
    name: str = "split"
    """Label in reports."""
    stats: WireStats = field(default_factory=WireStats)
    """Accumulated over every call."""

    def __post_init__(self) -> None:
        from slicer.codec import CodecConfig

        self.codec_cfg = self.codec_cfg or CodecConfig(method="raw")
        if self.mode == "local-then-offload" and self.offload_step is None:
            self.offload_step = 1
        self.max_len = int(getattr(self.model.config, "max_position_embeddings", 2048))

    def _sessions(self):
        from slicer.actors.models.generate import EdgeSession, ServerSession

        edge = EdgeSession(self.edge_model or self.model, self.split, self.codec_cfg, mode=self.mode,
                           offload_step=self.offload_step if self.mode == "local-then-offload" else None)
        return edge, ServerSession(self.model, edge.split)

    def _server(self, server, step) -> torch.Tensor:
        t0 = time.perf_counter()
        logits = server.step_logits(step.payload)[0, -1].float()  # (V,)
        self.stats.server_s += time.perf_counter() - t0
        self.stats.payload_bytes += len(step.payload)
        self.stats.elements += step.elements
        self.stats.payloads += 1
        return logits

    def _edge(self, fn, *a):
        t0 = time.perf_counter()
        out = fn(*a)
        self.stats.edge_s += time.perf_counter() - t0
        return out

    @torch.no_grad()
    def score(self, context_ids, continuation_ids, full: bool = False) -> TokenScores:
        _check(context_ids, continuation_ids)
        ctx, cont = _fit(list(context_ids), list(continuation_ids), self.max_len)
        edge, server = self._sessions()
        step = self._edge(edge.begin, torch.tensor([ctx]))
        local_logits = None
        logprobs, greedy, rows = [], [], []
        for i, tok in enumerate(cont):
            if step.payload is not None:
                logits = self._server(server, step)
            else:
                # An offload local step: the edge ran the whole model; its logits are
                # the whole model's on the same tokens (computed once, for scoring only).
                if local_logits is None:
                    em = self.edge_model or self.model
                    ids = torch.tensor([ctx + cont[:-1]])
                    local_logits = em.run(0, em.num_units, ids)[0].float()  # (C + T - 1, V)
                logits = local_logits[len(ctx) - 1 + i]
            lp = torch.log_softmax(logits, -1)  # (V,)
            logprobs.append(float(lp[tok]))
            if full:
                rows.append(lp)
            greedy.append(int(logits.argmax()))
            if i + 1 < len(cont):
                step = self._edge(edge.next, tok)
        return TokenScores(logprobs, greedy, torch.stack(rows) if full else None)

    def loglikelihood(self, context_ids, continuation_ids) -> float:
        return float(sum(self.score(context_ids, continuation_ids).logprobs))

    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens: int, temperature: float = 0.0, seed: int = 0) -> list[int]:
        ids = list(prompt_ids)[-(self.max_len - max_new_tokens):]
        gen = _gen(temperature, seed)
        edge, server = self._sessions()
        step = self._edge(edge.begin, torch.tensor([ids]))
        new: list[int] = []
        for _ in range(max_new_tokens):
            if step.payload is not None:
                tok = pick(self._server(server, step), temperature, gen)
            elif temperature <= 0:
                tok = int(step.token)  # the edge's own greedy token (an offload local step)
            else:
                # A local step keeps only its argmax; sampling needs the edge's logits,
                # recomputed with its whole model over the tokens so far (w - 1 steps at most).
                em = self.edge_model or self.model
                logits = em.run(0, em.num_units, torch.tensor([ids + new]))[0, -1].float()  # (V,)
                tok = pick(logits, temperature, gen)
            new.append(tok)
            if tok == self.eos_id or len(new) == max_new_tokens:
                break
            step = self._edge(edge.next, tok)
        return new


def edge_copy(model, split: int, mode: str, front_bits: int | None):
    """The edge's model: None (same weights as the server) or a copy with weight-only
    int8/int4 units; [0, ℓ) in split mode, every unit in local-then-offload mode (its local
    steps run the whole model on the edge, as the policies' cost model assumes)."""
    if front_bits is None:
        return None
    from slicer.actors.models.quant import quantize_front

    return quantize_front(model, model.num_units if mode == "local-then-offload" else split, front_bits)


# ---------------------------------------------------------------- tokenizers
class Tokenizer(Protocol):
    bos_id: int | None
    eos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass
class HFTokenizer:
    """A ``transformers`` tokenizer behind the two calls the harness needs."""

    tok: object
    """``AutoTokenizer`` instance."""

    @property
    def bos_id(self) -> int | None:
        return getattr(self.tok, "bos_token_id", None)

    @property
    def eos_id(self) -> int | None:
        return getattr(self.tok, "eos_token_id", None)

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


def load_tokenizer(path: str) -> HFTokenizer:
    """``AutoTokenizer.from_pretrained(path)``, with an error that says what is missing."""
    from transformers import AutoTokenizer

    try:
        return HFTokenizer(AutoTokenizer.from_pretrained(path))
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(
            f"no tokenizer could be loaded from {path!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "text tasks need one: pass --tokenizer FOLDER (models shipped as token ids only, such as "
            "stories260k, cannot run text tasks)") from None
