import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

from language.loader import load_chat_model  # noqa: E402
from models.tiny import export_tiny_llama  # noqa: E402

TINY_SEQ = 128


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random llama exported to ONNX, with its weights for reference models."""
    out = tmp_path_factory.mktemp("tiny-llama")
    tensors = export_tiny_llama(out, seq_len=TINY_SEQ)
    return out, tensors


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    return load_chat_model(tiny_dir[0])


@pytest.fixture(scope="session")
def default_model_dir():
    """The real default model (SmolLM2-135M-Instruct), exported once per cache."""
    from models.catalog import prepare_model

    return prepare_model()


@pytest.fixture(scope="session")
def default_model(default_model_dir):
    return load_chat_model(default_model_dir)
