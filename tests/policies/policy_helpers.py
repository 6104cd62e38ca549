"""Hand-built model and device profiles for policy tests (no weights, no Ray)."""
from __future__ import annotations

from slicer.policies import DeviceProfile, LayerProfile, ModelProfile


def toy_llm(n_blocks: int = 8, hidden: int = 256, vocab: int = 1000, block_params: int = 1_000_000,
            kv_per_token: int = 2048, dtype: str = "float32") -> ModelProfile:
    """embed + n_blocks decoder blocks + head, float32 by default (4 bytes per parameter)."""
    esize = {"float32": 4, "float16": 2, "bfloat16": 2}[dtype]
    layers = [LayerProfile("embed", vocab * hidden * esize, vocab * hidden, 0.0, 0.0, (hidden,), hidden, 0)]
    for i in range(n_blocks):
        layers.append(LayerProfile(f"block.{i}", block_params * esize, block_params, 2.0 * block_params,
                                   4.0 * hidden, (hidden,), hidden, kv_per_token))
    layers.append(LayerProfile("head", vocab * hidden * esize, vocab * hidden, 2.0 * vocab * hidden, 0.0,
                               (vocab,), vocab, 0))
    return ModelProfile(name="toy-llm", family="llama", kind="causal_lm", dtype=dtype, layers=tuple(layers),
                        input_bytes_per_token=4, vocab_size=vocab, hidden_size=hidden)


def toy_vision(channels=(16, 32, 64, 128), spatial=(56, 28, 14, 7), classes: int = 100) -> ModelProfile:
    """A ResNet-like single-shot model: stages that halve the feature map."""
    layers = [LayerProfile("stem", 10_000, 2_500, 1e8, 0.0, (channels[0], spatial[0], spatial[0]),
                           channels[0] * spatial[0] ** 2)]
    for i, (c, s) in enumerate(zip(channels, spatial)):
        layers.append(LayerProfile(f"stage.{i}", 400_000 * (i + 1), 100_000 * (i + 1), 3e8, 0.0, (c, s, s), c * s * s))
    layers.append(LayerProfile("head", 4 * channels[-1] * classes, channels[-1] * classes, 2.0 * channels[-1] * classes,
                               0.0, (classes,), classes))
    return ModelProfile(name="toy-vision", family="resnet", kind="vision", dtype="float32", layers=tuple(layers),
                        input_bytes_per_token=3 * 224 * 224)


def toy_device(name: str = "toy-edge", bandwidth: float = 10e9, flops: float = 100e9, memory: float = 4e9,
               overhead: float = 0.0) -> DeviceProfile:
    """Efficiencies 1 so hand calculations stay simple."""
    return DeviceProfile(name=name, memory_bytes=memory, memory_bandwidth_bps=bandwidth,
                         peak_flops={"float32": flops, "float16": 2 * flops, "int8": 4 * flops},
                         compute_efficiency=1.0, bandwidth_efficiency=1.0, launch_overhead_s=overhead, codec_passes=4)
