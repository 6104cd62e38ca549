"""AR modes of split inference as an edge half and a server half exchanging bytes.

``EdgeSession`` runs on the device, ``ServerSession`` on the server; they share nothing
but payload bytes (edge -> server) and token ids (server -> edge), so a runtime can put
them in different processes or Ray actors. ``generate`` drives both in one process.

Modes (seed 001 §2.1, ``../shared/DESIGN.md`` "The path of one request"):

- ``split``: the edge runs units ``[0, ell)`` on the prompt, then on each new token,
  and encodes ``x_ell`` every step; the server runs ``[ell, n)`` with its own cache.
- ``local-then-offload`` (SLICER's local-then-offload ``(w, ell)``, Eq. 5-6): the edge decodes the
  first ``w - 1`` tokens alone with its whole model, keeping its layer-``ell`` features;
  at step ``w`` it runs ``[0, ell)`` on the newest token and sends the encoded features
  of *all* tokens so far in one payload; the server builds its ``[ell, n)`` cache from
  them and the request goes on as ``split``. ``w = 1`` is ``split``.
- ``edge-only``: the edge runs everything; the server does nothing.
- ``cloud-only``: the edge sends the raw token ids (int32); the server runs ``[0, n)``.

Decoding is greedy (argmax of the last position's logits).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import torch

from slicer import codec
from slicer.codec import CodecConfig
from slicer.policies.schema import Mode

MODES = tuple(m.value for m in Mode)

_IDS_MAGIC = b"SLTK"
_IDS_VERSION = 1


def encode_ids(ids: torch.Tensor) -> bytes:
    """Token ids ``(1, T)`` as bytes: magic ``SLTK``, version byte, uint32 count, then
    int32 little-endian ids (4 bytes per token, the profile's ``input_bytes_per_token``)."""
    flat = ids.reshape(-1).to(torch.int32)
    return _IDS_MAGIC + bytes([_IDS_VERSION]) + struct.pack("<I", flat.numel()) + flat.numpy().astype("<i4").tobytes()


def decode_ids(payload: bytes) -> torch.Tensor:
    """Inverse of ``encode_ids``; ``ValueError`` on a malformed payload."""
    if len(payload) < 9 or payload[:4] != _IDS_MAGIC or payload[4] != _IDS_VERSION:
        raise ValueError("not a token-id payload (bad magic/version)")
    (n,) = struct.unpack("<I", payload[5:9])
    if len(payload) != 9 + 4 * n:
        raise ValueError(f"token-id payload says {n} ids but holds {len(payload) - 9} bytes of ids")
    import numpy as np

    return torch.from_numpy(np.frombuffer(payload[9:], dtype="<i4").astype("int64")).reshape(1, n)


def decode_tokens(payload: bytes, vocab_size: int) -> torch.Tensor:
    """Token ids ``(1, T)`` from an ``encode_ids`` payload; ``CodecError`` for a
    malformed payload, no ids, or an id outside ``[0, vocab_size)``."""
    try:
        x = decode_ids(bytes(payload))  # (1, T)
    except ValueError as e:
        raise codec.CodecError(str(e)) from e
    if x.shape[1] < 1:
        raise codec.CodecError("token payload holds no id")
    if bool((x < 0).any()) or bool((x >= vocab_size).any()):
        raise codec.CodecError(f"token payload holds an id outside [0, {vocab_size})")
    return x


@dataclass
class EdgeStep:
    """What the edge produced for one decoding step."""

    payload: bytes | None
    """Bytes for the server (None: the edge produced the token itself)."""
    token: int | None = None
    """The edge's own next token when it ran the whole model (edge-only, offload's
    local steps)."""
    elements: int = 0
    """Elements of the feature the payload carries (0 for token ids)."""
    tokens_in_payload: int = 0
    """Token positions covered by the payload (prompt length at prefill, all tokens
    so far at an offload handoff, 1 per decode step)."""
    handoff: bool = False
    """True for the offload handoff (the server builds its cache from this payload)."""
    logits: torch.Tensor | None = None
    """The edge's own logits ``(V,)`` behind ``token`` (local steps only)."""


class EdgeSession:
    """The device half of one request.

    ``model`` is the edge's copy (possibly with a quantized front, see
    ``slicer.actors.models.quant``); the edge only ever runs its units ``[0, ell)`` (and
    ``[ell, n)`` in edge-only mode and in offload's local steps)."""

    def __init__(self, model, split: int, codec_cfg: CodecConfig | None = None, *, mode: Mode | str = Mode.SPLIT,
                 offload_step: int | None = None):
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is invalid: allowed {', '.join(MODES)}")
        mode = Mode(mode)
        n = model.num_units
        if mode in ("split", "local-then-offload") and not (1 <= split <= n - 1):
            raise ValueError(f"split={split} is invalid for mode {mode!r}: need 1 <= split <= {n - 1}")
        if mode == "local-then-offload" and (offload_step is None or offload_step < 1):
            raise ValueError(f"offload_step={offload_step!r} is invalid: mode 'local-then-offload' needs an int >= 1")
        self.model = model
        self.mode = mode
        self.split = {"edge-only": n, "cloud-only": 0}.get(mode, split)
        self.offload_step = offload_step if mode == "local-then-offload" else None
        self.codec_cfg = codec_cfg or CodecConfig(method="raw")
        self.front = model.new_cache(0, self.split) if self.split > 0 else None
        # offload: the back half runs locally until the handoff
        local = mode == "edge-only" or (mode == "local-then-offload" and offload_step > 1)
        self.back = model.new_cache(self.split, n) if (local and self.split < n) else None
        self.history: list[torch.Tensor] = []  # offload: x_ell of every token so far
        self.steps = 0
        self.offloaded = mode == "split"

    def _encode(self, h: torch.Tensor) -> bytes:
        return codec.encode(h, self.codec_cfg)

    def _local(self, ids: torch.Tensor) -> EdgeStep:
        n = self.model.num_units
        h = self.model.run(0, self.split, ids, self.front)  # (1, T, H) or logits when split == n
        if self.split < n:
            if self.mode == "local-then-offload":
                self.history.append(h)
            h = self.model.run(self.split, n, h, self.back)  # (1, T, V)
        return EdgeStep(payload=None, token=int(h[0, -1].argmax()), logits=h[0, -1])

    def _step(self, ids: torch.Tensor) -> EdgeStep:
        self.steps += 1
        if self.mode == "cloud-only":
            return EdgeStep(encode_ids(ids), tokens_in_payload=ids.shape[1])
        if self.mode == "edge-only":
            return self._local(ids)
        if self.mode == "local-then-offload" and not self.offloaded:
            if self.steps < self.offload_step:
                return self._local(ids)
            # step w: partial pass, then hand over the features of all tokens so far
            h = self.model.run(0, self.split, ids, self.front)  # (1, T, H)
            feats = torch.cat(self.history + [h], 1)  # (1, P + w - 1, H)
            self.history, self.back, self.offloaded = [], None, True
            return EdgeStep(self._encode(feats), elements=feats.numel(), tokens_in_payload=feats.shape[1], handoff=True)
        h = self.model.run(0, self.split, ids, self.front)  # (1, T, H)
        return EdgeStep(self._encode(h), elements=h.numel(), tokens_in_payload=h.shape[1])

    def begin(self, prompt_ids: torch.Tensor) -> EdgeStep:
        """Step 1: the prompt ``(1, P)`` (prefill)."""
        if prompt_ids.dim() != 2 or prompt_ids.shape[0] != 1:
            raise ValueError(f"prompt_ids must be (1, P), got {tuple(prompt_ids.shape)}")
        if self.steps:
            raise RuntimeError("begin() was already called for this session")
        return self._step(prompt_ids)

    def next(self, token: int) -> EdgeStep:
        """The next step, after ``token`` came back (from the server or the edge)."""
        return self._step(torch.tensor([[int(token)]]))

    @property
    def cache_bytes(self) -> int:
        return sum(c.nbytes for c in (self.front, self.back) if c is not None)


class PayloadError(ValueError):
    """A payload a server half refuses (``ServerSession.decode_payload``): not bytes, too
    large, at the wrong position, malformed, a shape other than ``(1, T, hidden)``, ids
    outside the vocabulary, NaN/Inf, or more tokens than the session has room for. Only
    the step that brought it fails."""


class ServerSession:
    """The server half of one request: units ``[split, n)`` with this session's cache.
    ``split == 0`` is cloud-only (payloads are token ids).

    The one server code path: ``slicer.actors.server.Server`` (what ``slicer run``
    serves), ``generate`` (``slicer eval``) and ``slicer.actors.models.fidelity``
    (``slicer bench fidelity``) all check and decode a payload with ``decode_payload``
    and compute with ``forward`` (one session: ``SplitModel.run``; several of one split:
    ``SplitModel.run_batch``)."""

    def __init__(self, model, split: int, capacity: int | None = None, *, max_payload_bytes: int | None = None):
        """``capacity``: the session's admitted context in tokens (its cache buffers are
        sized for it once, and no payload may bring more; None: the model's position
        table bounds it, buffers grown by doubling). ``max_payload_bytes``: largest
        payload accepted (None: any)."""
        n = model.num_units
        if not 0 <= split <= n - 1:
            raise ValueError(f"split={split} is invalid for a server session: need 0 <= split <= {n - 1}")
        self.model = model
        self.split = split
        self.cache = model.new_cache(split, n, capacity)
        self.max_payload_bytes = max_payload_bytes
        a = getattr(model, "adapter", None)
        self.hidden_size = int(getattr(a, "hidden_size", 0) or 0) or int(model.profile.hidden_size or 0)
        self.vocab_size = int(getattr(model.config, "vocab_size", 0) or 0)
        mp = getattr(a, "max_positions", None)
        limits = [v for v in (capacity, mp if isinstance(mp, int) else None) if v is not None]
        # the smaller of its admitted context and the model's position table: a step past
        # the table would fail its whole batch group in the model, not here
        self._limit = min(limits) if limits else None

    @property
    def room(self) -> int:
        """Tokens this session may still add (the smaller of its capacity and the model's
        position table, less what its cache holds). With neither known, as many as the
        codec's default element cap holds: a few bytes never declare more work."""
        if self._limit is None:
            return max(1, codec.wire.DEFAULT_MAX_ELEMENTS // max(1, self.hidden_size))
        return self._limit - self.cache.length

    def decode_payload(self, payload: bytes, position: int | None = None) -> torch.Tensor:
        """Check and decode one step's payload: ids ``(1, T)`` (split 0) or hidden states
        ``(1, T, H)`` on the model's device. Raises ``PayloadError`` for any defect, and
        checks the declared shape before decoding, so a payload of a few bytes that
        declares 2**28 elements never reaches an allocation. ``position``: where the
        edge says the payload starts (must be the cache's length; None: not checked)."""
        try:
            return self._decode(payload, position)
        except codec.CodecError as e:
            raise PayloadError(str(e)) from e

    def _decode(self, payload, position) -> torch.Tensor:
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise PayloadError(f"payload is {type(payload).__name__}, expected bytes")
        if self.max_payload_bytes is not None and len(payload) > self.max_payload_bytes:  # before any copy
            raise PayloadError(f"payload of {len(payload)} bytes exceeds max_payload_bytes={self.max_payload_bytes}")
        payload = bytes(payload)
        if position is not None and position != self.cache.length:
            raise PayloadError(f"step at position {position} but the session holds {self.cache.length} tokens")
        room = self.room
        if self.split == 0:
            x = decode_tokens(payload, self.vocab_size)  # (1, T) ids; CodecError for an id outside the vocabulary
        else:
            hdr = codec.wire.unpack(payload)
            h = self.hidden_size or (hdr.shape[-1] if hdr.shape else 0)
            shape = hdr.shape[1:] if len(hdr.shape) == 3 and hdr.shape[0] == 1 else hdr.shape
            if len(shape) != 2 or shape[1] != h or shape[0] < 1 or shape[0] > room:
                raise PayloadError(f"payload declares shape {hdr.shape}: expected (1, T, {h}) with 1 <= T <= {room}, "
                                   f"the tokens left of what it was admitted for (and of the model's position table)")
            # the checked shape; on CUDA the Triton decoder writes straight onto the device
            x = codec.decode(payload, device=self.model.device, shape=hdr.shape)
            if x.dim() == 2:
                x = x[None]  # (T, H) -> (1, T, H)
            if x.dim() != 3 or x.shape[0] != 1 or x.shape[2] != h or x.shape[1] < 1:
                raise PayloadError(f"feature of shape {tuple(x.shape)}: expected (1, T, {h})")
            if not bool(torch.isfinite(x).all()):
                raise PayloadError("feature holds NaN or Inf")
        if x.shape[1] > room:
            raise PayloadError(f"step brings the session to {self.cache.length + x.shape[1]} tokens, "
                               f"more than the {self.cache.length + room} it was admitted for (or the model's position table)")
        return x

    @staticmethod
    def forward(sessions: list[ServerSession], xs: list[torch.Tensor], *, last_only: bool = False) -> list[torch.Tensor]:
        """Compute one step of several sessions of one model and split on decoded inputs
        (``decode_payload``), extending their caches: one session runs ``SplitModel.run``,
        several ``SplitModel.run_batch``. Returns each session's logits ``(1, T_i, V)``
        (``last_only``: ``(1, 1, V)``, the head on the last position only)."""
        if not sessions:
            return []
        m, a = sessions[0].model, sessions[0].split
        if any(s.model is not m or s.split != a for s in sessions):
            raise ValueError("a batched server step needs sessions of one model and one split")
        if len(xs) != len(sessions):
            raise ValueError(f"{len(sessions)} sessions but {len(xs)} inputs")
        if len(sessions) == 1:
            return [m.run(a, m.num_units, xs[0], sessions[0].cache, last_only=last_only)]
        return m.run_batch(a, m.num_units, list(xs), [s.cache for s in sessions], last_only=last_only)

    def step_logits(self, payload: bytes, *, last_only: bool = False) -> torch.Tensor:
        """Run one step; return the logits ``(1, T, V)`` of every position of the payload
        (``last_only``: ``(1, 1, V)``, as the server computes them)."""
        return ServerSession.forward([self], [self.decode_payload(payload)], last_only=last_only)[0]

    def step(self, payload: bytes) -> int:
        """Run one step; return the greedy next token."""
        return int(self.step_logits(payload, last_only=True)[0, -1].argmax())

    @staticmethod
    def step_batch(sessions: list[ServerSession], payloads: list[bytes]) -> list[int]:
        """One batched step over many sessions (same model and split), as the server
        computes it. Same tokens as calling ``step`` on each."""
        xs = [s.decode_payload(p) for s, p in zip(sessions, payloads)]
        outs = ServerSession.forward(sessions, xs, last_only=True)
        return [int(o[0, -1].argmax()) for o in outs]


def worst_batch(contexts, max_batch: int, batching: bool = True) -> list[int]:
    """The sessions' contexts of the worst batched step admission reserves for: the
    ``max_batch`` largest (one when batching is off), each a whole-context prefill."""
    return sorted((int(c) for c in contexts), reverse=True)[: max_batch if batching else 1]


def step_peak_bytes(model, new_tokens, contexts=None) -> int:
    """An upper bound on the memory a batched server step allocates for a moment beyond
    its sessions' KV caches (``ServerSession.forward`` with ``last_only``): the packed
    rows' activations inside one decoder block (hidden states, q/k/v, rotary tables, the
    MLP's intermediate tensors), the attention scores and mask of the largest session
    (sessions attend one after another), and the head's last-position logits.

    ``new_tokens[i]``: tokens session i brings in the step; ``contexts[i]``: its context
    after the step (default ``new_tokens[i]``, a prefill). Admission
    (``slicer.actors.server.Server.open_session``) reserves it for the worst batch its
    sessions can form; ``tests/actors/test_kv_cache.py`` checks it against the peak the
    torch profiler measures."""
    elem = torch.empty((), dtype=model.dtype).element_size()
    return step_peak_bytes_of_config(model.config, elem, new_tokens, contexts)


def step_peak_bytes_of_config(c, elem: int, new_tokens, contexts=None) -> int:
    """``step_peak_bytes`` from a Hugging Face config and the server's bytes per element
    (workload validation, before any model is loaded)."""
    rows = sum(int(t) for t in new_tokens)
    if not rows:
        return 0
    contexts = list(new_tokens) if contexts is None else list(contexts)
    H = int(c.hidden_size)
    heads = int(c.num_attention_heads)
    kvh = int(getattr(c, "num_key_value_heads", None) or heads)
    hd = int(getattr(c, "head_dim", None) or H // heads)
    inter = int(getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * H)
    vocab = int(getattr(c, "vocab_size", 0) or 0)
    # per packed row: ~6 hidden-sized tensors alive at once (input, residual, norm, attention
    # output and projection, MLP output), q/k/v twice (projection and rotated copy),
    # the rotary tables, 3 intermediate-sized (gate, up, activation); ids for split 0
    per_row = elem * (6 * H + 2 * (heads + 2 * kvh) * hd + 2 * hd + 3 * inter) + 16
    # one session's attention: scores and their softmax (heads x T x S), its mask
    # (float for eager, bool for SDPA: 4 bytes bounds both), the positions it builds
    attn = max(int(t) * int(s) * (2 * heads * max(elem, 4) + 4) for t, s in zip(new_tokens, contexts))
    head = len(new_tokens) * (2 * vocab + H) * max(elem, 4)
    return rows * per_row + attn + head


@dataclass
class GenerationResult:
    """Tokens of one request and what crossed the wire."""

    tokens: list[int]
    """Generated token ids (``max_new_tokens`` of them)."""
    payload_bytes: list[int] = field(default_factory=list)
    """Bytes of every edge -> server payload, in order."""
    payload_elements: list[int] = field(default_factory=list)
    """Feature elements of every payload (0 for token ids)."""
    server_steps: int = 0
    """Steps the server ran."""
    logits: list[torch.Tensor] = field(default_factory=list)
    """Logits ``(V,)`` that produced each token (when ``return_logits``)."""

    @property
    def bits_per_element(self) -> float:
        el = sum(self.payload_elements)
        return sum(b for b, e in zip(self.payload_bytes, self.payload_elements) if e) * 8 / el if el else 0.0


@torch.no_grad()
def generate(
    model,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    mode: Mode | str = Mode.SPLIT,
    split: int | None = None,
    offload_step: int | None = None,
    codec_cfg: CodecConfig | None = None,
    *,
    edge_model=None,
    return_logits: bool = False,
) -> GenerationResult:
    """Greedy generation of ``max_new_tokens`` with the edge and server halves in one
    process. ``edge_model`` (default ``model``) is the edge's copy, e.g. with a
    quantized front; the server always runs ``model``."""
    edge_model = edge_model or model
    n = model.num_units
    if split is None:
        split = {"edge-only": n, "cloud-only": 0}.get(mode, 1)
    edge = EdgeSession(edge_model, split, codec_cfg, mode=mode, offload_step=offload_step)
    server = ServerSession(model, edge.split) if edge.split < n else None
    res = GenerationResult(tokens=[])
    step = edge.begin(prompt_ids)
    for i in range(max_new_tokens):
        if step.payload is not None:
            res.payload_bytes.append(len(step.payload))
            res.payload_elements.append(step.elements)
            logits = server.step_logits(step.payload)[0, -1]  # (V,)
            tok = int(logits.argmax())
            res.server_steps += 1
            if return_logits:
                res.logits.append(logits)
        else:
            tok = step.token
            if return_logits:
                res.logits.append(step.logits)
        res.tokens.append(tok)
        if i + 1 < max_new_tokens:
            step = edge.next(tok)
    return res


@torch.no_grad()
def reference_generate(model, prompt_ids: torch.Tensor, max_new_tokens: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens and logits of the unsplit model (one segment ``[0, n)``, one cache):
    the reference every split run is compared with."""
    cache = model.new_cache(0, model.num_units)
    logits = model.run(0, model.num_units, prompt_ids, cache)[0, -1]
    toks, lgs = [], []
    for i in range(max_new_tokens):
        tok = int(logits.argmax())
        toks.append(tok)
        lgs.append(logits)
        if i + 1 < max_new_tokens:
            logits = model.run(0, model.num_units, torch.tensor([[tok]]), cache)[0, -1]
    return toks, lgs


# --- single-shot (vision, or one forward pass of an LLM) --------------------------------
def edge_single_shot(model, x: torch.Tensor, split: int, codec_cfg: CodecConfig | None = None) -> bytes:
    """The edge half of a single-shot request: units ``[0, split)`` on ``x`` (pixel values
    for vision), encoded. ``split == 0`` (cloud-only) sends the input itself, losslessly."""
    if split == 0:
        return codec.encode(x, CodecConfig(method="raw"))
    return codec.encode(model.run(0, split, x), codec_cfg or CodecConfig(method="raw"))


def server_single_shot(model, payload: bytes, split: int) -> torch.Tensor:
    """The server half: decode and run ``[split, n)``; returns the logits."""
    return model.run(split, model.num_units, codec.decode(payload, device=model.device))


@torch.no_grad()
def single_shot(model, x: torch.Tensor, split: int, codec_cfg: CodecConfig | None = None) -> tuple[torch.Tensor, int]:
    """Both halves in one process: ``(logits, payload bytes)``; ``split == num_units``
    is edge-only (nothing sent)."""
    if split == model.num_units:
        return model.run(0, split, x), 0
    payload = edge_single_shot(model, x, split, codec_cfg)
    return server_single_shot(model, payload, split), len(payload)
