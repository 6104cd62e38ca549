"""Device catalog, user YAML validation, roofline numbers, measured profile cache."""
import pytest
from policy_helpers import toy_device, toy_llm

from slicer.policies import DeviceProfile, MeasuredTimings, get_device, load_device_catalog
from slicer.policies.devices import load_measured, measured_path, roofline_s, save_measured

SHIPPED = ["raspberry-pi-5", "jetson-orin-nano", "jetson-orin-agx", "phone-soc", "laptop-cpu", "a100", "h100"]


def test_catalog_has_the_device_classes():
    cat = load_device_catalog()
    assert set(SHIPPED) <= set(cat)
    # Spot-check vendor figures copied from the data sheets.
    assert cat["h100"].memory_bandwidth_bps == pytest.approx(3.35e12)
    assert cat["a100"].peak_flops["float16"] == pytest.approx(312e12)
    assert cat["jetson-orin-agx"].memory_bandwidth_bps == pytest.approx(204.8e9)
    # Every shipped number has a source comment in the YAML.
    from slicer.policies.devices import CATALOG_PATH

    for line in CATALOG_PATH.read_text().splitlines():
        s = line.strip()
        if s and not s.startswith("#") and any(k in s for k in ("memory_bytes", "bandwidth_bps", "float32:", "float16:", "int8:")):
            assert "#" in s, f"number without a source comment: {s}"


def test_user_yaml_adds_a_device(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("my-board:\n  memory_bytes: 2e9\n  memory_bandwidth_bps: 8.5e9\n  peak_flops: {float32: 5e10}\n")
    cat = load_device_catalog(p)
    assert cat["my-board"].memory_bytes == 2e9  # "2e9" (a YAML string) accepted as a number
    assert get_device("my-board", p).peak_flops["float32"] == 5e10
    assert get_device("h100", p).name == "h100"  # shipped ones stay available


@pytest.mark.parametrize("body,needle", [
    ("x:\n  memory_bandwidth_bps: 1e9\n  peak_flops: {float32: 1e9}\n", "missing required field 'memory_bytes'"),
    ("x:\n  memory_bytes: 1e9\n  memory_bandwidth_bps: 1e9\n  peak_flops: {float32: 1e9}\n  colour: red\n", "unknown field(s) ['colour']"),
    ("x:\n  memory_bytes: lots\n  memory_bandwidth_bps: 1e9\n  peak_flops: {float32: 1e9}\n", "memory_bytes='lots' is not a number"),
    ("x:\n  memory_bytes: 1e9\n  memory_bandwidth_bps: 1e9\n  peak_flops: {float32: 1e9}\n  compute_efficiency: 1.5\n", "compute_efficiency=1.5"),
    ("x:\n  memory_bytes: 1e9\n  memory_bandwidth_bps: 1e9\n  peak_flops: {fp64: 1e9}\n", "peak_flops"),
])
def test_bad_yaml_names_device_and_field(tmp_path, body, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(body)
    with pytest.raises(ValueError) as e:
        load_device_catalog(p)
    assert "'x'" in str(e.value) and needle in str(e.value)


def test_unknown_device_lists_the_known_ones():
    with pytest.raises(ValueError, match="jetson-orin-agx"):
        get_device("toaster")


def test_roofline_decode_is_bandwidth_bound_prefill_compute_bound():
    m = toy_llm(block_params=1_000_000, hidden=256, kv_per_token=2048)
    dev = toy_device(bandwidth=10e9, flops=100e9)
    blk = m.layers[1]
    # Decode, 1 token at context 0: weights 4e6 B / 10e9 B/s = 400 us; FLOPs 2e6 (+ attn)
    # / 1e11 = 20 us: bandwidth bound. Bytes also count KV (2048) and activations (2 x 256 x 4).
    t = roofline_s(dev, blk, m, "float32", context=0, tokens=1)
    assert t == pytest.approx((4e6 + 2048 + 2048) / 10e9)
    # int8 weights move 1.0625 bytes per parameter instead of 4.
    assert roofline_s(dev, blk, m, "int8", 0, 1) == pytest.approx((1.0625e6 + 2048 + 2048) / 10e9)
    # Prefill of 1000 tokens: 1000 x 2e6 FLOPs = 2e9 / 1e11 = 20 ms > 400 us of weights.
    flops = 1000 * (2e6 + (0 + 1001 / 2) * 4 * 256)
    assert roofline_s(dev, blk, m, "float32", 0, 1000) == pytest.approx(flops / 100e9)


def test_decode_time_grows_with_context():
    m = toy_llm()
    dev = get_device("jetson-orin-agx")
    assert dev.unit_time_s(m, 1, "float16", 4096) > dev.unit_time_s(m, 1, "float16", 16)


def test_measured_profile_round_trip_and_cache_name(tmp_path):
    m = toy_llm(n_blocks=2)
    timings = MeasuredTimings(contexts=(16, 64), unit_s=((1e-4, 2e-4, 2e-4, 5e-5), (1e-4, 3e-4, 3e-4, 5e-5)),
                              codec=(("lossless", 256, 1e-5), ("lossless", 2560, 3e-5)))
    dev = DeviceProfile(name="box", memory_bytes=8e9, memory_bandwidth_bps=1e10, peak_flops={"float32": 1e11},
                        kind="measured", measured=timings, measured_model=m.name, measured_dtype="float32")
    path = measured_path("org/My Model", "box", "float32", root=tmp_path)
    assert path.name == "org_My_Model-box-float32-v1.json"
    save_measured(path, m, dev)
    m2, dev2 = load_measured(path)
    assert m2 == m and dev2.measured == timings
    # Interpolation in the context: halfway between 16 and 64 -> halfway between the times.
    assert dev2.unit_time_s(m2, 1, "float32", 40) == pytest.approx(2.5e-4)
    # Codec time: the line through the measured points.
    assert dev2.measured.codec_time_s("lossless", 1408) == pytest.approx(2e-5)
    assert dev2.measured.codec_time_s("slicer", 1408) is None
