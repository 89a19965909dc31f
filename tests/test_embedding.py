"""The token embedding as a host table or as nets, and prefill nets of several widths."""
import shutil

import numpy as np
import pytest

from compile.bmodel import device_table, write_embedding_nets
from language.embedding import TABLE_FILE, HostEmbedding, check_table, read_table
from language.generate import PREFILL_CHUNK, Generator, NetLayout, prefill_widths
from runtime import open_backend
from runtime.backend import BFLOAT16, ModelFileError, NetSpec, TensorSpec, from_bfloat16_bits, to_bfloat16_bits
from runtime.sail_backend import SailBackend

def _logits(generator: Generator, ids: list[int], steps: int) -> np.ndarray:
    rows = [generator.prefill(ids)]
    for _ in range(steps):
        rows.append(generator.decode(int(np.argmax(rows[-1]))))
    return np.stack(rows)


def test_the_host_table_gives_what_the_embedding_nets_give(tiny_dir, tmp_path):
    family = _family()
    with_nets = tmp_path / "nets"
    shutil.copytree(tiny_dir[0], with_nets)
    write_embedding_nets(read_table(with_nets), with_nets)
    (with_nets / TABLE_FILE).unlink()
    ids = family.encode([], "Hello there").ids
    host = Generator(open_backend("onnx", tiny_dir[0], threads=1), family, read_table(tiny_dir[0]))
    nets = Generator(open_backend("onnx", with_nets, threads=1), family)
    assert isinstance(host.embedding, HostEmbedding) and "embedding" not in host.nets
    np.testing.assert_array_equal(_logits(host, ids, 4), _logits(nets, ids, 4))
    assert read_table(tiny_dir[0]).shape == (49152, 64)  # every token's row, float32, memory-mapped


def test_a_table_that_does_not_fit_the_nets_is_refused(tiny_dir):
    table = read_table(tiny_dir[0])
    with pytest.raises(ModelFileError, match="different models"):
        check_table(table[:, :32], 64, np.dtype(np.float32))
    with pytest.raises(ModelFileError, match="same float type"):
        check_table(table, 64, BFLOAT16)


def test_a_bf16_table_keeps_the_bits_the_device_gets(tmp_path):
    rows = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    table = device_table(rows, "W4BF16")
    assert table.dtype == BFLOAT16
    np.testing.assert_array_equal(table.view(np.uint16), to_bfloat16_bits(rows))
    np.save(tmp_path / TABLE_FILE, table)
    assert read_table(tmp_path).dtype == BFLOAT16  # the sentinel type survives the file

    sent = []

    class Tensor:  # records what sail would upload
        def __init__(self, *args):
            pass

        def memory_set(self, value):
            pass

        def update_data(self, data):
            sent.append(np.array(data))

    backend = SailBackend.__new__(SailBackend)
    backend.write(type("T", (), {"shape": (1, 2, 8), "dtype": BFLOAT16, "tensor": Tensor()})(),
                  read_table(tmp_path)[[3, 1]][None])
    np.testing.assert_array_equal(from_bfloat16_bits(sent[0]).reshape(2, 8), from_bfloat16_bits(table.view(np.uint16))[[3, 1]])


def _spec(name: str, width: int | None) -> NetSpec:
    f32, i32 = np.dtype(np.float32), np.dtype(np.int32)
    return NetSpec(name, (TensorSpec("input_states", (1, width, 8), f32), TensorSpec("position_ids", (1, width), i32),
                          TensorSpec("attention_mask", (1, 1, width, width), f32)), ())


def test_prefill_widths_are_read_from_the_net_names():
    nets = {name: _spec(name, w) for name, w in
            (("block_0", 64), ("block_1", 64), ("block_0_16", 16), ("block_1_16", 16))}
    assert prefill_widths(nets, "block", 2, host_embedding=True) == (16, 64)
    with pytest.raises(ModelFileError, match=r"lacks the net\(s\) embedding"):
        prefill_widths(nets, "block", 2, host_embedding=False)  # on the device the embedding needs its narrow net too
    del nets["block_1_16"]
    with pytest.raises(ModelFileError, match="block_1_16"):
        prefill_widths(nets, "block", 2, host_embedding=True)
    assert prefill_widths({"block_0": _spec("block_0", None)}, "block", 1, True) == ()  # ONNX: any length


def test_a_prompt_takes_the_narrowest_prefill_that_fits_and_long_ones_come_in_chunks(tiny_dir):
    generator = Generator(open_backend("onnx", tiny_dir[0], threads=1), _family(), read_table(tiny_dir[0]))
    # ONNX Runtime: no block_<i> sessions, every prefill reads after the cached rows, in chunks of any length
    assert generator.layout.prefill_widths is None and generator.layout.history_widths == ()
    assert generator.prefill_chunk(0, 10) == ("block_kv", 10, 10) and generator.prompt_limit == 128
    assert generator.prefill_chunk(0, PREFILL_CHUNK + 5) == ("block_kv", PREFILL_CHUNK, PREFILL_CHUNK)
    static = {"prefill_widths": (16, 64), "history_widths": (16,)}
    generator.layout = NetLayout(**{**generator.layout.__dict__, **static})  # as a bmodel's nets
    assert [generator.prefill_chunk(0, n) for n in (1, 16, 17, 64)] == [("block", n, w) for n, w in
                                                                         ((1, 16), (16, 16), (17, 64), (64, 64))]
    assert generator.prefill_chunk(0, 100) == ("block", 64, 64)  # then the rest after those rows:
    assert generator.prefill_chunk(64, 36) == ("block_kv", 16, 16) and generator.prompt_limit == 128
    generator.layout = NetLayout(**{**generator.layout.__dict__, "history_widths": None})
    assert generator.prompt_limit == 64  # without block_kv nets a prompt must fit one prefill


def _family():
    from language.families.llama import LlamaFamily
    from language.tokenizers import load_tokenizer

    return LlamaFamily(load_tokenizer("smollm2-135m-instruct"))
