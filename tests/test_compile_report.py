"""The compile's report: device memory and projected speed, and its extrapolation from a probe
(the first layers only) to the whole model, checked against compiling the whole tiny model.

Skips where tpu-mlir is not installed (compile/setup_tpu_mlir.sh)."""
import json

import pytest

from compile.bmodel import compile_model
from compile.report import BOARDS, CALIBRATION, main, memory, render, speed
from models.loader import load_chat_model
from tests.fixtures.tiny_visualglm import write_tiny_visualglm
from models.store import read_config
from models.visualglm_checkpoint import convert
from runtime.backend import ModelFileError

pytestmark = pytest.mark.simulator

WIDTHS = [32, 64]


@pytest.fixture(scope="module")
def compiled(toolchain, tmp_path_factory):
    """(whole tiny VisualGLM, its one-layer probe), each converted and compiled the same way."""
    root = tmp_path_factory.mktemp("report")
    write_tiny_visualglm(root / "checkpoint")
    out = {}
    for name, layers in (("whole", None), ("probe", 1)):
        convert(root / "checkpoint", root / name, 64, layers=layers)
        out[name] = compile_model(root / name, root / f"{name}-bmodel", quantize="F16", prefill_widths=WIDTHS,
                                  work_dir=root / f"{name}-work", progress=lambda *_: None).parent
    return out["whole"], out["probe"]


def test_a_probe_extrapolates_to_what_the_whole_model_needs(compiled):
    whole, probe = (read_config(d) for d in compiled)
    assert probe["partial"] == {"layers": 1, "of": 2} and "partial" not in whole
    # One copy per layer: the whole model's weights are the probe's plus one more layer's blob, to the byte.
    assert memory(probe, compiled[1]) == memory(whole, compiled[0])
    fast_whole, fast_probe = speed(whole, 30, 0.0), speed(probe, 30, 0.0)
    assert fast_probe.decode_ms == pytest.approx(fast_whole.decode_ms, rel=0.05)
    for width in WIDTHS:
        assert fast_probe.prefill_ms[width] == pytest.approx(fast_whole.prefill_ms[width], rel=0.05)


def test_the_report_says_what_a_device_owner_needs(compiled):
    text = render(compiled[1])
    assert "A probe: 1 of 2 layers compiled" in text
    assert "embedding on the host" in text and "host memory: the embedding table" in text
    for board in (b for b in BOARDS if b.chip == "bm1684x"):
        assert board.name in text
    assert f"x {CALIBRATION.decode}" in text and "prefill by width: 32:" in text
    assert "Targets" in text  # the glm family's goals on bm1684x, met or missed by how much


def test_a_probe_cannot_be_run_and_the_cli_reads_both(compiled, capsys):
    with pytest.raises(ModelFileError, match="1 of the model's 2 layers"):
        load_chat_model(next(compiled[1].glob("*.bmodel")), backend="sail-simulator")
    assert main([str(compiled[0]), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["memory"]["weights"] > 0 and figures["speed"]["decode_ms"] > 0
    assert main([str(compiled[0].parent / "nowhere")]) == 2


def test_another_chip_reuses_the_transformed_nets(compiled):
    probe = compiled[1]
    again = compile_model(probe.parent / "probe", probe.parent / "probe-bm1688", quantize="W8BF16", chip="bm1688",
                          prefill_widths=WIDTHS, work_dir=probe.parent / "probe-work", progress=lambda *_: None)
    config = read_config(again.parent)
    assert config["chip"] == "bm1688" and all(s["transform_s"] == 0 for s in config["compile_stats"].values())
    assert all(s["deploy_s"] > 0 and s["estimate_ms"] > 0 for s in config["compile_stats"].values())
    assert "no bm1688 board" not in render(again.parent)  # SE9-16 is in the board list
