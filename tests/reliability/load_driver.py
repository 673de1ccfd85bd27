"""Load generator for the load test (run as a subprocess, not collected).

Usage: ``python tests/reliability/load_driver.py URL OUT.json --users N --seconds S
[--rounds R] [--inputs DIR] [--seed K]``

``N`` simulated users, each with its own ``gradio_client.Client`` (one server session per
user, kept over the rounds), alternate Generate and Inpaint (their own picture
and brush layer uploaded each time, random seeds, quality 0 or 1, one image) until the round's
deadline; a request still in flight ``GRACE`` seconds after it is cancelled (outcome "cut").
Writes one JSON record per request (round, user,
operation, outcome, seconds) and marks the end of every round by touching ``OUT.round<r>`` so
that the server side can sample its memory there. Running the clients in their own process
keeps their memory out of the server's RSS.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gradio_client import Client, handle_file
from gradio_client.utils import QueueError

#: Seconds a request still in flight at the deadline may take before it is cancelled. Long
#: enough that the requests in flight at the deadline finish even on 2 busy cores (one model
#: run at a time, at most one request per user): with 5 s, a loaded machine finished no
#: Inpaint in a 15 s run and failed the test.
GRACE = 60.0
#: Seconds a client's plain HTTP requests (config, uploads) may take on a busy machine.
CONNECT_TIMEOUT = 120.0


def user_round(client: Client, user: int, inputs: Path, deadline: float,
               seed: int) -> list[dict]:
    rng = random.Random(seed)
    picture, layer = inputs / f"picture-{user}.png", inputs / f"layer-{user}.png"
    done = []
    operations = ("generate", "inpaint") if user % 2 == 0 else ("inpaint", "generate")
    while time.monotonic() < deadline:
        operation = operations[len(done) % 2]  # alternate, half the users starting with each
        started = time.perf_counter()
        try:
            if operation == "generate":
                job = client.submit(-1, rng.randint(0, 1), 1.5, 0, 0.0, rng.randrange(2**31),
                                    1, False, api_name="/generate")
            else:
                editor = {"background": handle_file(picture), "layers": [handle_file(layer)],
                          "composite": None}
                job = client.submit(editor, -1, 0, rng.randint(0, 1), 1.5, 0, 0.0,
                                    rng.randrange(2**31), 1, False, "Painted area", 1, 4,
                                    rng.random() < 0.5, 8, api_name="/inpaint")
            output = job.result(timeout=max(deadline - time.monotonic(), 0.0) + GRACE)
            status = str(output[3])
            outcome = "ok" if status.startswith("Done") else f"bad status {status[:200]}"
        except TimeoutError:
            job.cancel()  # the run is over: leave the queue (bounded time)
            outcome = "cut"
        except QueueError:
            outcome = "busy"
        except Exception as err:  # noqa: BLE001 - every other failure is a server error
            outcome = f"error {type(err).__name__}: {str(err)[:200]}"
        done.append({"user": user, "operation": operation, "outcome": outcome,
                     "seconds": time.perf_counter() - started})
    return done


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    records = []
    # httpx's default 5 s timeout failed the connect of a client while the server's 2 shared
    # cores were busy (load 10): the load is what this measures, not a reason to give up
    clients = [Client(args.url, verbose=False, httpx_kwargs={"timeout": CONNECT_TIMEOUT})
               for _ in range(args.users)]
    try:
        with ThreadPoolExecutor(args.users) as pool:
            for round_index in range(args.rounds):
                deadline = time.monotonic() + args.seconds / args.rounds
                futures = [pool.submit(user_round, clients[user], user, args.inputs, deadline,
                                       args.seed + 1000 * round_index + user)
                           for user in range(args.users)]
                for future in futures:
                    for record in future.result():
                        records.append({"round": round_index, **record})
                Path(f"{args.out}.round{round_index}").touch()
    finally:
        for client in clients:
            client.close()
    args.out.write_text(json.dumps(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
