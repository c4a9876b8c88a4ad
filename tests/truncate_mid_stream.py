"""Truncate the checkpoint of a streaming server, many times: run as a script, in a process of its
own, because what it tests is that this process does not die (SIGBUS, exit status -7).

    python tests/truncate_mid_stream.py TRIES WORK_DIR [--no-lease]

Each try writes a small Mistral checkpoint (4 layers, d=256: a decode step long enough to be
hit inside), serves it as `npinfer serve` does (`listen`, uvicorn on that socket, in a thread),
streams a greedy answer with EOS banned, and after a random number of its events (1-6)
truncates the weights file to a third of its size from another thread (`os.truncate`, which
the server's read lease holds until the worker has given it back). The stream must then end
with an error event ``checkpoint_changed`` (503) and ``[DONE]``, and a new request must be
answered 503. One JSON line per try on stdout, then a summary line. ``--no-lease`` serves
without the leases (what the server did before): the process dies of SIGBUS (6 of 8 one-try
runs here).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from npinfer.engine.generation.chat_model import load_chat_model
from npinfer.engine.load import mapped_files
from npinfer.engine.load.tiny import family_config, write_checkpoint
from npinfer.engine.serve.server import listen, server_config
from npinfer.engine.serve.service import Limits, Service
from npinfer.tokenizer.files import TINY_TOKENIZER_PATH

CONFIG = family_config("mistral") | {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
                                     "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 32}


def one_try(path: Path, rng: random.Random) -> dict:
    chat = load_chat_model(str(path))
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    service = Service(chat, Limits())
    server = uvicorn.Server(server_config(service, "127.0.0.1", port, None, log_level="error"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    url, weights = f"http://127.0.0.1:{port}", path / "model.safetensors"
    after = rng.randint(1, 6)
    body = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 400, "stream": True,
            "temperature": 0, "logit_bias": {"2": -100}}
    events, truncator = [], None
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
            for line in r.iter_lines():
                if not line:
                    continue
                events.append(line.removeprefix("data: "))
                if len(events) == after:  # truncate while the worker decodes the next tokens
                    truncator = threading.Thread(target=os.truncate, args=(weights, weights.stat().st_size // 3))
                    truncator.start()
        truncator.join(timeout=60)
        last_error = next((json.loads(e) for e in reversed(events) if e.startswith('{"error"')), None)
        again = httpx.post(f"{url}/v1/chat/completions", json=body | {"stream": False}, timeout=60)
        return {"events": len(events), "truncated_after": after, "done": events[-1] == "[DONE]",
                "stream_error": last_error and last_error["error"]["code"], "then": again.status_code,
                "then_code": again.json()["error"]["code"] if again.status_code != 200 else None}
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        service.close()


def main() -> None:
    tries, work = int(sys.argv[1]), Path(sys.argv[2])
    if "--no-lease" in sys.argv:
        mapped_files.MappedFiles.lease = lambda self: []
    rng = random.Random(0)
    results = []
    for k in range(tries):
        path = write_checkpoint(work / f"try{k}", CONFIG, seed=k, tokenizer=TINY_TOKENIZER_PATH)
        results.append(one_try(path, rng))
        print(json.dumps(results[-1]), flush=True)
    held = sum(r["done"] and r["stream_error"] == "checkpoint_changed" and r["then"] == 503 for r in results)
    print(json.dumps({"tries": tries, "answered_503": held}), flush=True)


if __name__ == "__main__":
    main()
