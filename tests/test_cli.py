import io
import subprocess
import sys
from pathlib import Path

from cli import chat_loop, main
from language.sampling import SamplingSettings

ROOT = Path(__file__).resolve().parents[1]


def test_the_chat_loop_answers_clears_and_exits(tiny_model):
    out = io.StringIO()
    chat_loop(tiny_model, SamplingSettings(max_new_tokens=5), io.StringIO("Hello\nclear\n\nSecond\nexit\nnot read\n"), out)
    text = out.getvalue()
    assert text.count("Answer: ") == 2
    assert "(conversation cleared)" in text
    assert text.count("tokens/s") == 2


def test_the_chat_loop_ends_at_end_of_input(tiny_model):
    out = io.StringIO()
    chat_loop(tiny_model, SamplingSettings(max_new_tokens=3), io.StringIO("Hello\n"), out)
    assert out.getvalue().count("Answer: ") == 1


def test_an_over_long_question_is_reported_and_the_chat_goes_on(tiny_model):
    out = io.StringIO()
    chat_loop(tiny_model, SamplingSettings(max_new_tokens=3), io.StringIO("word " * 300 + "\nHi\n"), out)
    assert "too long" in out.getvalue() and out.getvalue().count("tokens/s") == 1


def test_bad_arguments_exit_with_a_message(capsys):
    assert main(["--model", "no-such-model"]) == 2
    assert "neither a model directory" in capsys.readouterr().err
    assert main(["--model", "no-such-model", "--top-p", "3"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_app_py_runs_a_chat_end_to_end(tiny_dir):
    result = subprocess.run([sys.executable, "app.py", "--model", str(tiny_dir[0]), "--max-new-tokens", "4"],
                            input="Hello\nexit\n", capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Answer: " in result.stdout and "4 tokens" in result.stdout
