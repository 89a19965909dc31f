import numpy as np

from runtime.onnx_backend import OnnxBackend


def test_tensors_round_trip_and_copy_by_element_offsets(tiny_dir):
    backend = OnnxBackend(tiny_dir[0])
    src = backend.alloc((2, 3), np.float32)
    assert not backend.read(src).any()
    backend.write(src, np.arange(6, dtype=np.float32).reshape(2, 3))
    dst = backend.alloc((4, 3), np.float32)
    backend.copy(dst, src, count=3, dst_offset=6, src_offset=3)
    np.testing.assert_array_equal(backend.read(dst)[2], [3, 4, 5])
    assert not backend.read(dst)[[0, 1, 3]].any()


def test_a_net_writes_into_the_bound_output_tensor(tiny_dir):
    backend, weights = OnnxBackend(tiny_dir[0]), tiny_dir[1]
    spec = backend.nets()["lm_head"]
    assert [t.name for t in spec.inputs] == ["hidden_states"] and spec.outputs[0].shape == (1, 49152)
    hidden, out = backend.alloc((1, 1, 64), np.float32), backend.alloc((1, 49152), np.float32)
    for seed in (5, 42):
        x = np.random.default_rng(seed).standard_normal(64).astype(np.float32)
        backend.write(hidden, x)
        backend.run("lm_head", [hidden], [out])
        normed = x / np.sqrt((x * x).mean() + 1e-5) * weights["model.norm.weight"]
        np.testing.assert_allclose(backend.read(out)[0], weights["lm_head.weight"] @ normed, rtol=1e-4, atol=1e-4)


def test_prefill_nets_take_any_length_and_the_cache_length_is_fixed(tiny_dir):
    nets = OnnxBackend(tiny_dir[0]).nets()
    assert nets["block_kv_0"].inputs[0].shape == (1, None, 64)
    assert nets["block_kv_0"].inputs[3].shape == (1, 128, 2, 16)  # as the file declares it
    # One session per layer: block_kv_<i> computes block_<i> over no history rows and block_cache_<i> for one row
    assert sorted(nets) == ["block_kv_0", "block_kv_1", "lm_head"]
    assert all((tiny_dir[0] / f"{name}.onnx").is_file() for name in ("block_0", "block_cache_0"))  # for the TPU


def test_decode_nets_read_only_the_filled_cache_rows_and_answer_as_over_the_whole_cache(tiny_seeing_dir):
    """The files declare the whole cache (the TPU's static shapes); on ONNX Runtime a step
    attends over the filled rows only, through views of the cache, with the same result."""
    from language.families import Turn
    from models.loader import load_chat_model

    def steps(model) -> np.ndarray:
        gen = model.generator
        ids = model.family.encode([Turn("Hi", "Hello there!")], "Count to five, please.").ids
        rows = [gen.prefill(ids[:8])] + [gen.decode(token) for token in ids[8:]]
        return np.stack(rows)

    short, whole = load_chat_model(tiny_seeing_dir[0]), load_chat_model(tiny_seeing_dir[0])
    assert short.generator.backend.reads_filled_history
    whole.generator.backend.reads_filled_history = False  # as a bmodel runs: every step over all rows
    np.testing.assert_allclose(steps(short), steps(whole), rtol=1e-4, atol=1e-4)
    history = short.generator.backend.nets()["block_kv_0"].inputs[3]
    assert history.shape[1] == short.generator.layout.cache_length  # what the file declares


def test_a_view_shares_the_memory_of_its_tensor(tiny_dir):
    backend = OnnxBackend(tiny_dir[0])
    cache = backend.alloc((1, 8, 2, 3), np.float32)
    first = backend.view(cache, (1, 3, 2, 3))
    backend.write(first, np.ones((1, 3, 2, 3), np.float32))
    assert backend.read(cache)[0, :3].all() and not backend.read(cache)[0, 3:].any()
