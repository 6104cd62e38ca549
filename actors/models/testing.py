"""Tiny configs of every supported family, for tests here and in other packages (hidden 32,
three layers, vocab 256: a model builds in milliseconds). ``load_model(TINY_LM["llama"])``."""

_LM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, vocab_size=256,
           max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)

TINY_LM = {
    "llama": dict(model_type="llama", num_key_value_heads=2, **_LM),
    # sliding_window 6 < the test sequences' length, so the window mask is exercised
    "mistral": dict(model_type="mistral", num_key_value_heads=2, sliding_window=6, **_LM),
    "qwen2": dict(model_type="qwen2", num_key_value_heads=2, **_LM),
    # layer 0 full attention, layers 1-2 a window of 4: per-layer masks
    "qwen2_sliding": dict(model_type="qwen2", num_key_value_heads=2, use_sliding_window=True, sliding_window=4,
                          max_window_layers=1, **_LM),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=3, n_head=4, vocab_size=256, n_positions=128,
                 bos_token_id=1, eos_token_id=2),
    "gpt_neox": dict(model_type="gpt_neox", rotary_pct=0.5, **_LM),
}

TINY_VISION = {
    "resnet": dict(model_type="resnet", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], layer_type="basic",
                   num_labels=5, image_size=32),
    "resnet-bottleneck": dict(model_type="resnet", embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1],
                              layer_type="bottleneck", num_labels=5, image_size=32),
    "vit": dict(model_type="vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                image_size=32, patch_size=8, num_labels=5),
}


def generate_batched(edges, servers, prompts, n_new: int) -> list[list[int]]:
    """Greedy tokens of several split sessions stepped together on the server side
    (``ServerSession.step_batch``): ``edges[i]`` begins on ``prompts[i]`` and feeds each
    token back; returns each session's ``n_new`` tokens (what the exact-token tests compare
    with the unsplit model's)."""
    from slicer.actors.models.generate import ServerSession

    payloads = [e.begin(p).payload for e, p in zip(edges, prompts)]
    out: list[list[int]] = [[] for _ in prompts]
    for i in range(n_new):
        toks = ServerSession.step_batch(servers, payloads)
        for o, t in zip(out, toks):
            o.append(t)
        if i + 1 < n_new:
            payloads = [e.next(t).payload for e, t in zip(edges, toks)]
    return out


def random_prompts(vocab: int, lengths, seed: int = 0) -> list:
    """One ``(1, n)`` prompt of random ids (from 3: clear of the special tokens) per length."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (1, n), generator=g) for n in lengths]
