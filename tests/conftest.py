import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

from models.loader import load_chat_model  # noqa: E402
from tests.fixtures.tiny_llama import export_tiny_llama  # noqa: E402

TINY_SEQ = 128


@pytest.fixture(scope="session")
def toolchain():
    """tpu-mlir's install (compiler and chip simulator); skips the test, saying why, without it."""
    from runtime.tpu_mlir import ToolchainMissing, find_toolchain

    try:
        return find_toolchain()
    except ToolchainMissing as exc:
        pytest.skip(f"tpu-mlir is not installed here: {exc}")


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
def text_model_dir():
    """SmolLM2-135M-Instruct as published (text only), exported once per cache."""
    from models.catalog import TEXT_MODEL, prepare_model

    return prepare_model(TEXT_MODEL)


@pytest.fixture(scope="session")
def text_model(text_model_dir):
    return load_chat_model(text_model_dir)


def tiny_vision(lm_hidden: int, seed: int = 0):
    """A tiny random vision tower (needs PyTorch) and its weights; its output is far from flat."""
    import torch

    from training.vision_tower import VisionConfig, VisionTower

    torch.manual_seed(seed)
    config = VisionConfig(image_size=32, patch_size=8, vit_width=32, vit_layers=2, vit_heads=2, num_queries=4,
                          qformer_width=32, qformer_layers=2, qformer_heads=2, lm_hidden=lm_hidden,
                          stem_channels=(8,))  # a convolution stem, as the shipped tower has
    tower = VisionTower(config).eval()
    with torch.no_grad():
        for p in tower.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        tower.proj.weight.mul_(20)  # prefix rows as large as word embeddings (std 1)
        tower.stem[0].weight.mul_(4)  # pixel differences through the stem as strong as through a patch conv
    return tower, {k: v.numpy() for k, v in tower.state_dict().items()}


@pytest.fixture(scope="session")
def tiny_seeing_dir(tmp_path_factory):
    """A tiny random llama with a tiny random vision net in one model directory.

    Returns (directory, llama weights, torch vision tower) so tests can rebuild the reference.
    """
    from tests.fixtures.tiny_llama import TINY_LLAMA

    tower, vision_tensors = tiny_vision(TINY_LLAMA.hidden_size)
    out = tmp_path_factory.mktemp("tiny-seeing")
    tensors = export_tiny_llama(out, seq_len=TINY_SEQ,
                                vision={"tensors": vision_tensors, "config": tower.config.to_dict()})
    return out, tensors, tower


@pytest.fixture(scope="session")
def tiny_seeing(tiny_seeing_dir):
    """(model on ONNX Runtime, llama weights, torch vision tower) of tiny_seeing_dir."""
    out, tensors, tower = tiny_seeing_dir
    return load_chat_model(out), tensors, tower


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app(tiny_seeing):
    """The web app and its HTTP API on the tiny seeing model, served on a free local port."""
    from app import serve
    from language.sampling import SamplingSettings

    port = free_port()
    demo = serve(tiny_seeing[0], SamplingSettings(), port=port, queue_size=16, block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


class LiveApp(NamedTuple):
    url: str
    pid: int

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


@contextmanager
def running_app(model_dir, log_path, *flags: str, env: dict | None = None) -> Iterator[LiveApp]:
    """`python app.py` on a model directory in its own process, its output in log_path; yields
    its URL and process id once the page answers."""
    port = free_port()
    root = Path(__file__).resolve().parents[1]
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "app.py", "--model", str(model_dir), "--port", str(port), *flags],
                                  cwd=root, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 90
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as page:
                        assert page.status == 200
                        break
                except OSError:
                    if time.time() > deadline or server.poll() is not None:
                        pytest.fail(f"the app did not answer locally: {Path(log_path).read_text()[-2000:]}")
                    time.sleep(0.5)
            yield LiveApp(f"http://127.0.0.1:{port}/", server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
