"""Serving many clients: `npinfer serve` (continuous batching) against llama.cpp's `llama-server`.

    python benchmarks/bench_serve.py [--clients 1,2,4,8,16] [--tokens 32] [--rounds 2]
        [--llama-server /work/llamacpp/build/bin/llama-server] [--gguf PATH | --convert CONVERTER]

The checkpoint is `benchmarks/bench_speed.py`'s 2-layer Mistral-7B-shape bf16 one (its
CONFIGS["mistral"], written once under --dir), given Mistral-7B's sentencepiece tokenizer
(32000 pieces, from mistral-common) in a sibling directory so it can chat. With --gguf (or
--convert, the path of llama.cpp's convert_hf_to_gguf.py, to write one, bf16, from the same
files) llama-server serves the same weights beside it.

For each number of clients c, c streaming clients start together (a barrier), each asking
for --tokens greedy tokens (EOS banned on both servers, so every answer has its full length),
each with a prompt of its own. Per server and c: aggregate tokens/s (all tokens / wall time
from the first request to the last token), time to first token and inter-token latency
(p50/p99 over every client's gaps), and, at the end, each server's peak RSS (VmHWM). The
rounds interleave the servers and the client counts (round r: c = 1, 2, ... on npinfer then on
llama-server), and the median of the rounds is reported, so a moment of load on this shared
machine falls on both.

Also measured, in the same rounds:
* the CLI's decode, `npinfer logits --generate 33` minus `--generate 1`, / 32 (bench_speed's
  method), against the server's one-client inter-token latency (the single-stream overhead);
* batch invariance: each client's text with c clients is compared with the text it gets alone;
* fairness: a --long-tokens (200) greedy stream runs, and after its 5th token a 4-token
  request is sent; the time until that request is answered (a server that runs requests one
  after another answers it only after the long stream ends).

Prints a markdown table; writes benchmarks/results/serve.json and serve.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.bench_speed import ensure_checkpoint  # noqa: E402
from benchmarks.common import UNSET_OPENBLAS, cpu_flags, machine, run_measured, schedules_line, table  # noqa: E402

EOS = 2  # the checkpoint's eos_token_id


def chat_checkpoint(root: Path) -> Path:
    """bench_speed's Mistral checkpoint with Mistral-7B's tokenizer beside it (files linked, not copied)."""
    import mistral_common

    weights = ensure_checkpoint(root, "mistral")
    path = root / "mistral-chat"
    path.mkdir(exist_ok=True)
    for name in ("model.safetensors", "config.json"):
        if not (path / name).exists():
            os.symlink(weights / name, path / name)
    tokenizer = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"  # Mistral 7B v0.1: 32000
    if not (path / "tokenizer.model").exists():
        shutil.copy(tokenizer, path / "tokenizer.model")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process started here (and stopped here, by its pid)."""

    def __init__(self, name: str, command: list[str], port: int, ready_path: str):
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 600
        while True:
            if self.process.poll() is not None:
                sys.exit(f"{name} exited: {self.process.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                self.stop()
                sys.exit(f"{name} did not start")
            time.sleep(0.5)

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def prompt(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Client {i} asks: please write a long story about the number {i}."}]


def stream_one(server: Server, i: int, tokens: int, barrier: threading.Barrier, out: dict) -> None:
    """One streaming client: send times, the time of each content chunk, the text, the token count."""
    body = {"messages": prompt(i), "max_tokens": tokens, "temperature": 0, "stream": True,
            "logit_bias": {str(EOS): -100}, "stream_options": {"include_usage": True}}
    if server.name == "llama-server":
        body |= {"ignore_eos": True, "cache_prompt": False}
    times, text, usage = [], "", None
    with httpx.Client(timeout=600) as client:
        barrier.wait()
        sent = time.perf_counter()
        with client.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        times.append(time.perf_counter())
                        text += piece
    out[i] = {"sent": sent, "times": times, "text": text,
              "tokens": usage["completion_tokens"] if usage else len(times)}


def measure(server: Server, clients: int, tokens: int) -> dict:
    barrier, out = threading.Barrier(clients), {}
    threads = [threading.Thread(target=stream_one, args=(server, i, tokens, barrier, out)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    start = min(o["sent"] for o in out.values())
    end = max(o["times"][-1] for o in out.values() if o["times"])
    gaps = [b - a for o in out.values() for a, b in zip(o["times"], o["times"][1:])]
    return {"tokens_per_s": sum(o["tokens"] for o in out.values()) / (end - start),
            "ttft_s": statistics.median(o["times"][0] - o["sent"] for o in out.values()),
            "itl_p50_s": float(np.percentile(gaps, 50)), "itl_p99_s": float(np.percentile(gaps, 99)),
            "texts": [out[i]["text"] for i in range(clients)], "tokens": [out[i]["tokens"] for i in range(clients)]}


def short_during_long(server: Server, long_tokens: int) -> dict:
    """A 4-token request sent once a long_tokens stream has given 5 tokens: its answer time,
    and whether the long stream was still running when the answer came."""
    started, out = threading.Event(), {}

    def long_stream():
        body = {"messages": prompt(100), "max_tokens": long_tokens, "temperature": 0, "stream": True,
                "logit_bias": {str(EOS): -100}} | ({"ignore_eos": True} if server.name == "llama-server" else {})
        chunks = 0
        with httpx.Client(timeout=600) as client, client.stream("POST", server.url + "/v1/chat/completions",
                                                               json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks += 1
                    if chunks == 5:
                        started.set()
        out["long_end"] = time.perf_counter()

    thread = threading.Thread(target=long_stream)
    thread.start()
    started.wait(timeout=600)
    sent = time.perf_counter()
    r = httpx.post(server.url + "/v1/chat/completions", timeout=600,
                   json={"messages": prompt(101), "max_tokens": 4, "temperature": 0})
    answered = time.perf_counter()
    thread.join()
    return {"short_s": answered - sent, "long_still_running": answered < out["long_end"],
            "status": r.status_code, "tokens": r.json()["usage"]["completion_tokens"]}


def cli_decode_s_per_token(path: Path, root: Path) -> float:
    """bench_speed's CLI line: `npinfer logits --generate 33` minus `--generate 1`, / 32."""
    ids = root / "serve-prompt.npy"
    np.save(ids, np.random.default_rng(0).integers(3, 32000, 30))
    cli = [*UNSET_OPENBLAS, sys.executable, "-m", "npinfer.engine.cli", "logits", str(path), "--ids-file", str(ids), "--out",
           str(root / "serve-out.npz")]
    seconds = {}
    for n in (1, 33):
        seconds[n], _, proc = run_measured(cli + ["--generate", str(n)])
        if proc.returncode:
            sys.exit(proc.stderr)
    return (seconds[33] - seconds[1]) / 32


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", default="1,2,4,8,16")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--long-tokens", type=int, default=200, help="the long stream of the fairness check")
    p.add_argument("--dir", type=Path, default=Path("/tmp/npinfer-bench"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--llama-server", type=Path, default=None, help="llama.cpp's llama-server binary")
    p.add_argument("--gguf", type=Path, help="the same weights as GGUF, for llama-server")
    p.add_argument("--convert", type=Path, help="llama.cpp's convert_hf_to_gguf.py: write the GGUF (bf16) first")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    args.dir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = chat_checkpoint(args.dir)
    if args.convert and not args.gguf:
        args.gguf = args.dir / "mistral-chat-bf16.gguf"
        if not args.gguf.exists():
            env = os.environ | {"PYTHONPATH": str(args.convert.parent / "gguf-py")}
            subprocess.run([sys.executable, str(args.convert), str(path), "--outfile", str(args.gguf),
                            "--outtype", "bf16"], check=True, env=env, stdout=subprocess.DEVNULL)
    load_before = load_average()

    servers = [Server("npinfer", [*UNSET_OPENBLAS, sys.executable, "-m", "npinfer.engine.cli", "serve", str(path), "--port",
                                  str(port := free_port()), "--requests-per-minute", "0", "--tokens-per-minute", "0",
                                  "--max-batch", str(max(clients))], port, "/info")]
    if args.llama_server and args.gguf:
        per_slot = 256  # prompt + tokens fit easily
        servers.append(Server("llama-server", [*UNSET_OPENBLAS, str(args.llama_server), "-m", str(args.gguf), "--port",
                                               str(port := free_port()), "-np", str(max(clients)), "-c",
                                               str(per_slot * max(clients)), "-t", str(args.threads), "-cb",
                                               "--no-webui"], port, "/health"))
    results: dict = {"machine": machine(), "load_before": load_before, "tokens": args.tokens,
                     "long_tokens": args.long_tokens,
                     "runs": {s.name: {c: [] for c in clients} for s in servers}, "cli_s_per_token": []}
    try:
        for s in servers:
            measure(s, 2, 4)  # warm up: kernels compiled, weights paged in
        alone = {i: _alone(servers[0], i, args.tokens) for i in range(max(clients))}  # npinfer, one by one
        for r in range(args.rounds):
            results["cli_s_per_token"].append(cli_decode_s_per_token(path, args.dir))
            for c in clients:
                for s in servers:
                    run = measure(s, c, args.tokens)
                    if s.name == "npinfer":
                        run["same_as_alone"] = sum(t == alone[i] for i, t in enumerate(run["texts"]))
                    results["runs"][s.name][c].append(run)
                    print(f"round {r + 1}: {s.name} x{c}: {run['tokens_per_s']:.1f} tok/s", file=sys.stderr)
        results["fairness"] = {s.name: short_during_long(s, args.long_tokens) for s in servers}
        for s in servers:
            results[f"{s.name}_peak_rss_MiB"] = s.peak_rss_mib()
    finally:
        for s in servers:
            s.stop()
    results["load_after"] = load_average()
    report(results, clients, args.out)
    return 0


def _alone(server: Server, i: int, tokens: int) -> str:
    out = {}
    stream_one(server, i, tokens, threading.Barrier(1), out)
    return out[i]["text"]


def report(results: dict, clients: list[int], out: Path) -> None:
    def med(runs, key):
        return statistics.median(run[key] for run in runs)

    rows = []
    for name, by_c in results["runs"].items():
        one = med(by_c[clients[0]], "tokens_per_s")
        for c in clients:
            runs = by_c[c]
            same = f"{min(run['same_as_alone'] for run in runs)}/{c}" if "same_as_alone" in runs[0] else "-"
            rows.append([name, c, f"{med(runs, 'tokens_per_s'):.1f}", f"{med(runs, 'tokens_per_s') / one:.2f}x",
                         f"{med(runs, 'ttft_s'):.2f}", f"{med(runs, 'itl_p50_s') * 1e3:.0f}",
                         f"{med(runs, 'itl_p99_s') * 1e3:.0f}", same, f"{results[f'{name}_peak_rss_MiB']:,.0f}"])
    cli = statistics.median(results["cli_s_per_token"])
    server_one = med(results["runs"]["npinfer"][clients[0]], "itl_p50_s")
    print(f"\nmachine: {results['machine']}; load average before {results['load_before']}, "
          f"after {results['load_after']}\nCPU flags: {cpu_flags()}\n{schedules_line()}\n(both servers and the CLI run with "
          "OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset)\n")
    print(f"2-layer Mistral-7B-shape bf16, {results['tokens']} greedy tokens per client, streaming; "
          f"medians of {len(results['cli_s_per_token'])} interleaved rounds\n")
    print(table(["server", "clients", "tokens/s (all)", "vs 1 client", "TTFT s (p50)", "ITL p50 ms", "ITL p99 ms",
                 "same text as alone", "peak RSS MiB"], rows))
    print(f"\nsingle stream: server inter-token p50 {server_one * 1e3:.0f} ms; CLI decode (`logits --generate 33` - "
          f"`--generate 1`, / 32) {cli * 1e3:.0f} ms/token; server / CLI = {server_one / cli:.2f}")
    results["cli_vs_server_one_client"] = server_one / cli
    for name, f in results.get("fairness", {}).items():
        print(f"fairness, {name}: a 4-token request sent while a {results['long_tokens']}-token stream runs is "
              f"answered in {f['short_s']:.2f} s (HTTP {f['status']}, {f['tokens']} tokens; the long stream "
              f"{'still running' if f['long_still_running'] else 'already over'} then)")
    for by_c in results["runs"].values():
        for runs in by_c.values():
            for run in runs:
                run.pop("texts")
    (out / "serve.json").write_text(json.dumps(results, indent=2, default=float))
    plot(results, clients, out / "serve.png")
    print(f"\nwrote {out / 'serve.json'} and {out / 'serve.png'}")


def plot(results: dict, clients: list[int], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, by_c in results["runs"].items():
        left.plot(clients, [statistics.median(r["tokens_per_s"] for r in by_c[c]) for c in clients], "o-", label=name)
        right.plot(clients, [statistics.median(r["itl_p50_s"] for r in by_c[c]) * 1e3 for c in clients], "o-",
                   label=f"{name} p50")
        right.plot(clients, [statistics.median(r["itl_p99_s"] for r in by_c[c]) * 1e3 for c in clients], "x--",
                   label=f"{name} p99")
    left.set(xlabel="concurrent streaming clients", ylabel="tokens/s, all clients", xscale="log", xticks=clients)
    left.set_xticklabels(clients)
    right.set(xlabel="concurrent streaming clients", ylabel="inter-token latency, ms", xscale="log", xticks=clients)
    right.set_xticklabels(clients)
    left.legend()
    right.legend()
    fig.suptitle(f"Serving, 2-layer Mistral-7B-shape bf16, on {results['machine'].split(',')[0]}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
