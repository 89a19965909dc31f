"""Many users at once, through the HTTP API: time to first token and tokens/s per user.

    python bench/load.py [--model smollm2-vision] [--users 1 2 4 8] [--slots 4] [--rounds 2] [--max-tokens 48]

Starts the app (`python app.py`, its own process) twice on the same model: with one KV slot
(answers one at a time, as before the Scheduler had slots: the baseline) and with --slots;
the users are threads of this process, so they do not compete with the server for the GIL.
For each
number of users, every user streams one answer at once through the real `openai` client
(greedy; different questions, so nothing is shared), --rounds times. It prints, per server
and number of users:
  TTFT p50 / p95 s   request sent -> first content chunk, over every user and round
  user tok/s         one user's completion tokens after the first / time after the first (median)
  total tok/s        every completion token of a round / the round's wall time (median over rounds)
Then one conversation of 6 turns on the --slots server: the first token's time at turns 1, 3
and 6 (each follow-up prefills the whole conversation again; there is no prefix reuse yet).

Wall-clock figures on a shared machine: compare the two servers within one invocation only.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
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
FOLLOW_UPS = ["Tell me about the history of Rome.", "Who founded it?", "What came after the republic?",
              "Name one emperor.", "Why did the empire fall?", "What is left of it today?"]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def stream_one(client, model: str, messages: list[dict], max_tokens: int) -> dict:
    sent = time.perf_counter()
    first, tokens = None, 0
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, stream=True,
                                                temperature=0, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    first = first or end
    return {"ttft": first - sent, "tokens": tokens, "rate": (tokens - 1) / (end - first) if tokens > 1 and end > first
            else 0.0, "end": end}


def round_of(client, model: str, users: int, max_tokens: int) -> tuple[list[dict], float]:
    results: list[dict] = [{}] * users
    start = time.perf_counter()

    def user(n: int) -> None:
        question = f"Tell me a short story about {TOPICS[n % len(TOPICS)]}."
        results[n] = stream_one(client, model, [{"role": "user", "content": question}], max_tokens)

    threads = [threading.Thread(target=user, args=(n,)) for n in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(r["end"] for r in results) - start
    return results, sum(r["tokens"] for r in results) / wall


def follow_up_times(client, model: str, max_tokens: int) -> dict[int, float]:
    messages, times = [], {}
    for turn, question in enumerate(FOLLOW_UPS, start=1):
        messages.append({"role": "user", "content": question})
        sent = time.perf_counter()
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=1, temperature=0)
        times[turn] = time.perf_counter() - sent
        answer = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
        messages.append({"role": "assistant", "content": answer.choices[0].message.content or reply.choices[0].message.content})
    return times


def start_app(model: str, slots: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", model, "--port", str(port),
                               "--slots", str(slots), "--queue-size", "64"], cwd=ROOT,
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
    args = parser.parse_args()

    import openai

    print(f"{args.model}, {os.cpu_count()} cores; {args.max_tokens} new tokens at most, greedy; "
          f"medians over {args.rounds} round(s)")
    print(f"{'server':<10} {'users':>5} {'TTFT p50 s':>11} {'TTFT p95 s':>11} {'user tok/s':>11} {'total tok/s':>12}")
    for slots in (1, args.slots):
        server, url = start_app(args.model, slots)
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
                print(f"{f'{slots} slot(s)':<10} {users:>5} {percentile(ttfts, 0.5):>11.2f} "
                      f"{percentile(ttfts, 0.95):>11.2f} {statistics.median(rates):>11.1f} "
                      f"{statistics.median(totals):>12.1f}", flush=True)
            if slots == args.slots:
                times = follow_up_times(client, name, args.max_tokens)
                print("follow-ups, first token s (whole conversation prefilled again): "
                      + ", ".join(f"turn {t}: {times[t]:.2f}" for t in (1, 3, 6))
                      + f"; turn 6 / turn 1 = {times[6] / times[1]:.2f}")
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
