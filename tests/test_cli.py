import io
import subprocess
import sys
from pathlib import Path

from cli import chat_loop, main
from language.sampling import SamplingSettings

ROOT = Path(__file__).resolve().parents[1]


def test_the_chat_loop_answers_clears_and_exits(tiny_model):
    out = io.StringIO()
    chat_loop(tiny_model, SamplingSettings(max_new_tokens=5), None, io.StringIO("Hello\nclear\n\nSecond\nexit\nnot read\n"), out)
    text = out.getvalue()
    assert text.count("Answer: ") == 2
    assert "(conversation cleared)" in text
    assert text.count("tokens/s") == 2


def test_the_chat_loop_ends_at_end_of_input(tiny_model):
    out = io.StringIO()
    chat_loop(tiny_model, SamplingSettings(max_new_tokens=3), None, io.StringIO("Hello\n"), out)
    assert out.getvalue().count("Answer: ") == 1


def test_an_over_long_question_is_reported_and_the_chat_goes_on(tiny_model):
    out = io.StringIO()
    chat_loop(tiny_model, SamplingSettings(max_new_tokens=3), None, io.StringIO("word " * 300 + "\nHi\n"), out)
    assert "too long" in out.getvalue() and out.getvalue().count("tokens/s") == 1


def test_bad_arguments_exit_with_a_message(capsys):
    assert main(["--model", "no-such-model"]) == 2
    assert "neither a model directory" in capsys.readouterr().err
    assert main(["--model", "no-such-model", "--top-p", "3"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_tpu_flags_explain_what_is_missing(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sophon", None)  # as on a machine without Sophgo's SDK
    assert main(["--bmodel", str(tmp_path / "model.bmodel")]) == 2
    err = capsys.readouterr().err
    assert "sophon-sail" in err and "dfss" in err and "sail-simulator" in err
    assert main(["--backend", "sail-simulator"]) == 2
    assert "--bmodel PATH" in capsys.readouterr().err
    assert main(["--backend", "onnx", "--bmodel", str(tmp_path / "model.bmodel")]) == 2
    assert "needs a TPU backend" in capsys.readouterr().err


def test_cli_py_runs_a_chat_end_to_end(tiny_dir):
    result = subprocess.run([sys.executable, "cli.py", "--model", str(tiny_dir[0]), "--max-new-tokens", "4"],
                            input="Hello\nexit\n", capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Answer: " in result.stdout and "4 tokens" in result.stdout


def test_image_commands_look_change_and_drop_the_picture(tiny_seeing, tmp_path):
    from PIL import Image

    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    Image.new("RGB", (50, 50), (255, 0, 0)).save(red)
    Image.new("RGB", (50, 50), (0, 0, 255)).save(blue)
    (tmp_path / "notes.txt").write_text("not a picture")
    script = f"What is it?\nAnd now?\n/image {blue}\nWhat is it?\n/image {tmp_path / 'notes.txt'}\n/noimage\nHi\n"
    out = io.StringIO()
    chat_loop(tiny_seeing[0], SamplingSettings(max_new_tokens=3), str(red), io.StringIO(script), out)
    text = out.getvalue()
    assert "looking at red.png" in text and "looking at blue.png" in text
    assert text.count("vision ") == 2 and "cache" not in text  # the follow-up's rows came from the cache, unsaid
    assert "not an image" in text and "Still looking at blue.png" in text
    assert "image dropped" in text and "Question about blue.png" in text
    assert text.count("Answer: ") == 4


def test_a_text_only_model_says_it_cannot_look(tiny_model, tmp_path):
    out = io.StringIO()
    chat_loop(tiny_model, SamplingSettings(max_new_tokens=3), None, io.StringIO("/image x.png\n"), out)
    assert "cannot look at images" in out.getvalue()


def test_a_missing_or_bomb_picture_is_a_message_and_the_chat_goes_on(tiny_seeing, tmp_path):
    from PIL import Image

    bomb = tmp_path / "bomb.png"  # 50000 x 50000 pixels in a few MB: Pillow refuses to decode it
    Image.new("1", (50000, 50000)).save(bomb)
    out = io.StringIO()
    chat_loop(tiny_seeing[0], SamplingSettings(max_new_tokens=3), str(tmp_path / "nonexistent.png"),
              io.StringIO(f"/image {bomb}\nHi\n"), out)
    text = out.getvalue()
    assert "No such image file" in text and "No picture is loaded." in text
    assert "far more pixels" in text and "Traceback" not in text
    assert text.count("Answer:") == 1 and "tokens/s" in text  # the conversation went on, without a picture
