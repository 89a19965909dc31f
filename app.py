"""Start the web app: image chat and text chat in the browser, and the HTTP API, on the default model.

    python app.py [--host 127.0.0.1] [--port 7860] [--share] [--auth user:pass] [--api-key KEY] [--model NAME|DIR]

One process, one port: the page at /, the OpenAI-compatible API at /v1, VisualGLM's API at
POST /, all answered by one Scheduler that owns the model. `python cli.py` is the same chat
in the terminal.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys

for key, value in {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}.items():
    os.environ.setdefault(key, value)  # no telemetry, no hub: set before gradio is imported
# Gradio sums up its event log (up to 10,000 events, with pandas: 8 ms at that size) after every
# event, for its monitoring page; once every 100 events is enough.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")

from options import add_model_args, add_sampling_args, open_model  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    web = parser.add_argument_group("web")
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    web.add_argument("--port", type=int, default=7860)
    web.add_argument("--share", action="store_true", help="also ask Gradio for a public share link")
    web.add_argument("--auth", metavar="USER:PASSWORD", help="require this login")
    web.add_argument("--queue-size", type=int, default=32, help="requests that may wait for a free slot")
    web.add_argument("--slots", type=int, default=None,
                     help="answers generated at once, each with its own KV cache (default: up to 4 on a CPU, "
                          "as free memory allows; 1 on a TPU)")
    web.add_argument("--no-prefix-reuse", dest="prefix_reuse", action="store_false",
                     help="read every prompt whole, even a follow-up whose conversation a KV slot still holds "
                          "(for measurements)")
    web.add_argument("--max-upload-mb", type=int, default=20)
    api = parser.add_argument_group("HTTP API (/v1 and POST /)")
    api.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on the API")
    api.add_argument("--allow-image-urls", action="store_true",
                     help="let API requests give pictures as http(s) URLs, fetched by the server")
    add_model_args(parser)
    add_sampling_args(parser)
    args = parser.parse_args(argv)
    if args.auth and ":" not in args.auth:
        parser.error("--auth takes USER:PASSWORD")
    if args.slots is not None and args.slots < 1:
        parser.error("--slots takes a number of at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    opened = open_model(args)
    if opened is None:
        return 2
    defaults, model = opened
    from web.share import share_service_reachable

    share = args.share
    if share:
        share, why = share_service_reachable()
        if not share:
            print(f"No share link: {why}. The app keeps serving locally.", file=sys.stderr)
    serve(model, defaults, host=args.host, port=args.port, share=share, auth=args.auth, queue_size=args.queue_size,
          slots=args.slots, prefix_reuse=args.prefix_reuse, max_upload_mb=args.max_upload_mb, api_key=args.api_key,
          allow_image_urls=args.allow_image_urls)
    return 0


def serve(model, defaults, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
          auth: str | None = None, queue_size: int = 32, slots: int | None = None, prefix_reuse: bool = True,
          max_upload_mb: int = 20, api_key: str | None = None, allow_image_urls: bool = False, block: bool = True):
    """Page and API on one server, sharing one Scheduler. Returns the running Blocks."""
    from api.options import ApiOptions
    from api.routes import api_routes
    from serving.scheduler import Scheduler
    from web.ui import LAUNCH_OPTIONS, build_ui, queue_events

    scheduler = Scheduler(model, max_waiting=queue_size, slots=slots, reuse_prefixes=prefix_reuse)
    options = ApiOptions(defaults, api_key, closed=bool(auth) and api_key is None, allow_image_urls=allow_image_urls,
                         max_body_mb=max_upload_mb * 4 // 3 + 1)  # base64 is a third larger than the file
    demo = build_ui(scheduler, defaults)
    queue_events(demo, queue_size)
    # Everything made so far lives as long as the server. Frozen, it is no longer walked by the
    # full collections that serving sets off; each walked it for about 50 ms holding the GIL,
    # which stalled the model's steps (README, Benchmark).
    gc.collect()
    gc.freeze()
    demo.launch(server_name=host, server_port=port, share=share, auth=tuple(auth.split(":", 1)) if auth else None,
                max_file_size=f"{max_upload_mb}mb", prevent_thread_lock=not block, quiet=not block,
                app_kwargs={"routes": api_routes(scheduler, options)}, **LAUNCH_OPTIONS)
    return demo


if __name__ == "__main__":
    sys.exit(main())
