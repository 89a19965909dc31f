"""Chat with the model in the terminal: a Question/Answer loop with streamed answers."""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tokenizers load from token_config/, never a hub
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from PIL import Image  # noqa: E402

from language.chat import ChatModel, Done, Notice, TextDelta  # noqa: E402
from language.families import Turn  # noqa: E402
from language.generate import ContextOverflow  # noqa: E402
from language.sampling import SamplingSettings  # noqa: E402
from options import add_model_args, add_sampling_args, open_model  # noqa: E402
from serving.scheduler import Scheduler  # noqa: E402
from vision.preprocess import ImageError, load_image  # noqa: E402

EXIT_WORDS = {"exit", "quit", "退出"}
CLEAR_WORDS = {"clear", "清空"}


@dataclass
class Conversation:
    history: list[Turn] = field(default_factory=list)
    image: Image.Image | None = None
    image_name: str = ""


HELP = ("Commands: '/image PATH' looks at a picture (and starts a new conversation), '/noimage' drops it, "
        "'clear' starts a new conversation, 'exit' quits.")


def run_command(line: str, chat: Conversation, model: ChatModel, out: TextIO) -> bool:
    """Carry out `line` if it is a command; False when it is a question."""
    word, _, argument = line.partition(" ")
    if line.lower() in CLEAR_WORDS:
        chat.history.clear()
        print("(conversation cleared)", file=out)
    elif word == "/image":
        set_image(chat, model, argument.strip(), out)
    elif line == "/noimage":
        chat.history.clear()
        chat.image, chat.image_name = None, ""
        print("(image dropped; new conversation)", file=out)
    elif line in ("/help", "help"):
        print(HELP, file=out)
    else:
        return False
    return True


def set_image(chat: Conversation, model: ChatModel, path: str, out: TextIO) -> None:
    if model.vision is None:
        print(f"({model.name} cannot look at images)", file=out)
        return
    try:
        image = load_image(Path(path).expanduser())
    except ImageError as exc:
        kept = f"Still looking at {chat.image_name}." if chat.image is not None else "No picture is loaded."
        print(f"({exc} {kept})", file=out)
        return
    chat.history.clear()
    chat.image, chat.image_name = image, Path(path).name
    print(f"(looking at {chat.image_name}, {image.width}x{image.height}; new conversation)", file=out)


def stats_line(done: Done) -> str:
    return "  [" + ", ".join([f"{done.prompt_tokens} prompt tokens", *done.figures()]) + "]"


def answer(question: str, chat: Conversation, scheduler: Scheduler, settings: SamplingSettings, out: TextIO) -> None:
    print("Answer: ", end="", file=out, flush=True)
    try:
        with closing(scheduler.stream(chat.history, question, settings, chat.image)) as events:  # Ctrl-C frees it
            for event in events:
                if isinstance(event, TextDelta):
                    print(event.text, end="", file=out, flush=True)
                elif isinstance(event, Notice):
                    print(f"\n({event.message})\n", end="", file=out, flush=True)
                elif isinstance(event, Done):
                    chat.history.append(Turn(question, event.answer))
                    print("\n" + stats_line(event), file=out, flush=True)
    except ContextOverflow as exc:
        print(f"\n{exc}", file=out)
    except KeyboardInterrupt:
        print("\n(answer stopped)", file=out)


def chat_loop(model: ChatModel, settings: SamplingSettings, image_path: str | None = None,
              stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> None:
    chat, scheduler = Conversation(), Scheduler(model, slots=1)  # the one owner of the model, as in the web app
    sees = " It can look at pictures." if model.vision else ""
    print(f"{model.name} on {model.runs_on}: context {model.context_length} tokens.{sees} {HELP}", file=out)
    if image_path:
        set_image(chat, model, image_path, out)
    while True:
        print(f"\nQuestion{f' about {chat.image_name}' if chat.image else ''}: ", end="", file=out, flush=True)
        line = stdin.readline()
        if not line:  # end of input
            print(file=out)
            return
        line = line.strip()
        if line.lower() in EXIT_WORDS:
            return
        if line and not run_command(line, chat, model, out):
            answer(line, chat, scheduler, settings, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", metavar="PATH", help="start by looking at this picture")
    add_model_args(parser)
    add_sampling_args(parser)
    args = parser.parse_args(argv)
    opened = open_model(args)
    if opened is None:
        return 2
    settings, model = opened
    try:
        chat_loop(model, settings, args.image)
    except KeyboardInterrupt:
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
