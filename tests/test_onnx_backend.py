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
    backend = OnnxBackend(tiny_dir[0])
    spec = backend.nets()["embedding_cache"]
    assert [t.name for t in spec.inputs] == ["input_ids"] and spec.outputs[0].shape == (1, 1, 64)
    ids, out = backend.alloc((1, 1), np.int32), backend.alloc((1, 1, 64), np.float32)
    for token in (5, 42):
        backend.write(ids, np.array([[token]]))
        backend.run("embedding_cache", [ids], [out])
        np.testing.assert_array_equal(backend.read(out)[0, 0], tiny_dir[1]["model.embed_tokens.weight"][token])


def test_prefill_nets_take_any_length_and_the_cache_length_is_fixed(tiny_dir):
    nets = OnnxBackend(tiny_dir[0]).nets()
    assert nets["block_0"].inputs[0].shape == (1, None, 64)
    assert nets["block_cache_0"].inputs[3].shape == (1, 128, 2, 16)
