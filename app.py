"""Start the web app: image chat and text chat in the browser, on the default model.

    python app.py [--host 127.0.0.1] [--port 7860] [--share] [--auth user:pass] [--model NAME|DIR]

`python cli.py` is the same chat in the terminal.
"""
from __future__ import annotations

import argparse
import os
import sys

for key, value in {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}.items():
    os.environ.setdefault(key, value)  # no telemetry, no hub: set before gradio is imported

from cli import add_model_args, add_sampling_args, open_model  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    web = parser.add_argument_group("web")
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    web.add_argument("--port", type=int, default=7860)
    web.add_argument("--share", action="store_true", help="also ask Gradio for a public share link")
    web.add_argument("--auth", metavar="USER:PASSWORD", help="require this login")
    web.add_argument("--queue-size", type=int, default=32, help="requests that may wait for the model")
    web.add_argument("--max-upload-mb", type=int, default=20)
    add_model_args(parser)
    add_sampling_args(parser)
    args = parser.parse_args(argv)
    if args.auth and ":" not in args.auth:
        parser.error("--auth takes USER:PASSWORD")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    opened = open_model(args)
    if opened is None:
        return 2
    defaults, model = opened
    from web.share import share_service_reachable
    from web.ui import LAUNCH_OPTIONS, build_ui

    share = args.share
    if share:
        share, why = share_service_reachable()
        if not share:
            print(f"No share link: {why}. The app keeps serving locally.", file=sys.stderr)
    demo = build_ui(model, defaults)
    demo.queue(max_size=args.queue_size)
    demo.launch(server_name=args.host, server_port=args.port, share=share,
                auth=tuple(args.auth.split(":", 1)) if args.auth else None,
                max_file_size=f"{args.max_upload_mb}mb", **LAUNCH_OPTIONS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
