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
    assert nets["block_0"].inputs[0].shape == (1, None, 64)
    assert nets["block_cache_0"].inputs[3].shape == (1, 128, 2, 16)
