"""Many users at once, through the HTTP API: time to first token and tokens/s per user.

    python bench/load.py [--model smollm2-vision] [--users 1 2 4 8] [--slots 4] [--rounds 2] [--max-tokens 48]
                         [--page-pairs 3] [--page-answers 7]

Starts the app (`python app.py`, its own process) twice on the same model: the baseline with
one KV slot and every prompt read whole (`--slots 1 --no-prefix-reuse`: answers one at a
time, as before the Scheduler had slots), then with --slots and prefix reuse; the users are
threads of this process, so they do not compete with the server for the GIL. For each
number of users, every user streams one answer at once through the real `openai` client
(greedy; different questions, so only the system prompt is shared), --rounds times. It
prints, per server and number of users:
  TTFT p50 / p95 s   request sent -> first content chunk, over every user and round
  user tok/s         one user's completion tokens after the first / time after the first (median)
  total tok/s        every completion token of a round / the round's wall time (median over rounds)
Then conversations of 6 turns on each server, in text and about a picture given with the
first question: the first token's time (streamed) at turns 1, 3 and 6, medians over three
conversations (the baseline reads the whole conversation again at every turn; with prefix
reuse a follow-up reads only its new turn, as far as the model's prompt format keeps the
earlier turns unchanged). Last, the decoding rate that the web page's stats line shows for a
lone user's answers on the second server (median of --page-answers), in --page-pairs pairs,
each beside a bench/benchmark.py int8 decoding run (the text model: the same layers and sizes
as the seeing one) made just before it while that server sits idle: one pair's ratio swings
by several points on a shared machine, so each is printed and then their median.

Wall-clock figures on a shared machine: compare the two servers within one invocation only.
"""
from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOPICS = ["a lighthouse keeper", "a lost robot", "a dragon who bakes", "a river in winter", "a clockmaker",
          "a fox and a crow", "a city under the sea", "a painter who sees music"]
SUBJECTS = ["Rome", "Athens", "Egypt"]
FOLLOW_UPS = ["Who founded it?", "What came next?", "Name one ruler.", "Why did it decline?", "What is left of it today?"]
PICTURE_FOLLOW_UPS = ["Describe the picture.", "What colour is the shape?", "What shape is it?",
                      "How many shapes are there?", "Is it on the left or the right?", "Is there a triangle?"]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def stream_one(client, model: str, messages: list[dict], max_tokens: int) -> dict:
    sent = time.perf_counter()
    first, tokens, text = None, 0, []
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, stream=True,
                                                temperature=0, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text.append(chunk.choices[0].delta.content)
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    first = first or end
    return {"ttft": first - sent, "tokens": tokens, "rate": (tokens - 1) / (end - first) if tokens > 1 and end > first
            else 0.0, "end": end, "text": "".join(text)}


_asked = itertools.count()


def round_of(client, model: str, users: int, max_tokens: int) -> tuple[list[dict], float]:
    results: list[dict] = [{}] * users
    start = time.perf_counter()

    def user(n: int, number: int) -> None:  # a question never asked before: only the system prompt is shared
        question = f"Story {number}: tell me a short story about {TOPICS[n % len(TOPICS)]}."
        results[n] = stream_one(client, model, [{"role": "user", "content": question}], max_tokens)

    threads = [threading.Thread(target=user, args=(n, next(_asked))) for n in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(r["end"] for r in results) - start
    return results, sum(r["tokens"] for r in results) / wall


def red_circle_uri() -> str:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (224, 224), (245, 245, 240))
    ImageDraw.Draw(image).ellipse((60, 60, 164, 164), fill=(220, 30, 30))
    data = io.BytesIO()
    image.save(data, format="PNG")
    return "data:image/png;base64," + base64.b64encode(data.getvalue()).decode()


def follow_up_times(client, model: str, max_tokens: int, picture: str | None = None) -> dict[int, float]:
    """Each turn's first-token time (streamed), the median over three conversations that differ
    in their first question; `picture` (a data URI) goes with the first question."""
    times: dict[int, list[float]] = {}
    for subject in SUBJECTS:
        messages = []
        questions = PICTURE_FOLLOW_UPS if picture else [f"Tell me about the history of {subject}.", *FOLLOW_UPS]
        for turn, question in enumerate(questions, start=1):
            if picture and turn == 1:
                question = [{"type": "image_url", "image_url": {"url": picture}},
                            {"type": "text", "text": f"{question} ({subject})"}]
            messages.append({"role": "user", "content": question})
            answer = stream_one(client, model, messages, max_tokens)
            times.setdefault(turn, []).append(answer["ttft"])
            messages.append({"role": "assistant", "content": answer["text"]})
    return {turn: statistics.median(values) for turn, values in times.items()}


def page_rate(url: str, answers: int, max_tokens: int = 64) -> float:
    """The tokens/s of the page's stats line (median over `answers` text-tab answers, each from
    a session of its own)."""
    from gradio_client import Client

    rates = []
    for n in range(answers):
        client = Client(url.removesuffix("v1"), verbose=False)
        _, _, stats = client.predict(f"Tell me a story about {TOPICS[n % len(TOPICS)]}.", max_tokens, 0.0, 0.9, 40,
                                     1.0, api_name="/text_chat")
        rates.append(float(re.search(r"at ([\d.]+) tokens/s", stats).group(1)))
    return statistics.median(rates)


def benchmark_rate() -> float:
    """bench/benchmark.py's int8 decoding rate, measured now in its own processes."""
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "benchmark.json"
        subprocess.run([sys.executable, str(ROOT / "bench" / "benchmark.py"), "--only", "onnx-int8", "--json",
                        str(result)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        [row] = json.loads(result.read_text())["rows"]
    return row["decode_tok_s"]


def start_app(model: str, slots: int, prefix_reuse: bool) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", model, "--port", str(port),
                               "--slots", str(slots), "--queue-size", "64",
                               *([] if prefix_reuse else ["--no-prefix-reuse"])], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                return server, url
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"the app exited with code {server.returncode}")
            time.sleep(1)
    server.terminate()
    raise SystemExit("the app did not start within 5 minutes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-vision")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--page-pairs", type=int, default=3)
    parser.add_argument("--page-answers", type=int, default=7)
    args = parser.parse_args()
    if min(args.page_pairs, args.page_answers) < 1:
        parser.error("--page-pairs and --page-answers must be at least 1")

    import openai

    print(f"{args.model}, {os.cpu_count()} cores; {args.max_tokens} new tokens at most, greedy; "
          f"medians over {args.rounds} round(s)")
    print(f"{'server':<16} {'users':>5} {'TTFT p50 s':>11} {'TTFT p95 s':>11} {'user tok/s':>11} {'total tok/s':>12}")
    follow_ups, pairs = {}, []
    for slots, reuse in ((1, False), (args.slots, True)):
        server, url = start_app(args.model, slots, reuse)
        label = f"{slots} slot{'s' if slots > 1 else ''}" + (", reuse" if reuse else "")
        try:
            client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
            name = client.models.list().data[0].id
            round_of(client, name, 1, 4)  # warm-up
            for users in args.users:
                ttfts, rates, totals = [], [], []
                for _ in range(args.rounds):
                    results, total = round_of(client, name, users, args.max_tokens)
                    ttfts += [r["ttft"] for r in results]
                    rates += [r["rate"] for r in results]
                    totals.append(total)
                print(f"{label:<16} {users:>5} {percentile(ttfts, 0.5):>11.2f} "
                      f"{percentile(ttfts, 0.95):>11.2f} {statistics.median(rates):>11.1f} "
                      f"{statistics.median(totals):>12.1f}", flush=True)
            follow_ups[label] = follow_up_times(client, name, args.max_tokens)
            follow_ups[label + ", picture"] = follow_up_times(client, name, args.max_tokens, red_circle_uri())
            if reuse:
                for _ in range(args.page_pairs):
                    benchmark = benchmark_rate()
                    pairs.append((page_rate(url, args.page_answers), benchmark))
        finally:
            server.terminate()
            server.wait(timeout=60)
    for label, times in follow_ups.items():
        print(f"follow-ups on {label:<23} first token s: " + ", ".join(f"turn {t}: {times[t]:.2f}" for t in (1, 3, 6))
              + f"; turn 6 / turn 1 = {times[6] / times[1]:.2f}")
    for page, benchmark in pairs:
        print(f"the page's stats line, one user: {page:.1f} tokens/s; bench/benchmark.py int8 decode just before: "
              f"{benchmark:.1f} tokens/s; page / benchmark = {page / benchmark:.2f}")
    print(f"page / benchmark, median of {len(pairs)} pairs: "
          f"{statistics.median(page / benchmark for page, benchmark in pairs):.2f}")


if __name__ == "__main__":
    main()
