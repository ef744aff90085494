"""What IAM-token credentials cost a cold start, and what the cache saves on a warm one.

Each round runs in a fresh Python process (imports and clients are one-time costs that a
warm process no longer pays), with fake AWS credentials in the environment: token signing is
local, so no network and no moto are involved. Prints the median of each step over the rounds
and its ratio to the cached ``get()`` measured in the same processes.

    python3 benchmarks/bench_credentials.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import asyncio, json, sys, time
t = {}
def timed(name, fn, repeat=1):
    start = time.perf_counter()
    for _ in range(repeat):
        result = fn()
    t[name] = (time.perf_counter() - start) / repeat * 1000
    return result

timed("import lambdapool.credentials", lambda: __import__("lambdapool.credentials"))
from lambdapool import _aws as aws
from lambdapool.credentials import IamAuthToken
timed("import boto3", lambda: __import__("boto3"))
timed("boto3 client('rds') creation", lambda: aws.client("rds", "eu-west-1"))
provider = IamAuthToken("proxy.example", 5432, "app", "eu-west-1")
timed("first token, get() (client kept)", provider.get)
timed("cached token, get()", provider.get, repeat=10000)
def uncached():
    provider.invalidate()
    return provider.get()
timed("uncached token, invalidate()+get()", uncached, repeat=200)

timed("import aiobotocore.session", lambda: __import__("aiobotocore.session"))
async def async_steps():
    aprov = IamAuthToken("proxy.example", 5432, "app", "eu-west-1")
    start = time.perf_counter(); await aprov.aget()
    t["first token, aget() (session + client)"] = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    for _ in range(10000):
        await aprov.aget()
    t["cached token, aget()"] = (time.perf_counter() - start) / 10000 * 1000
    start = time.perf_counter()
    for _ in range(50):
        aprov.invalidate(); await aprov.aget()
    t["uncached token, invalidate()+aget() (client per call)"] = (time.perf_counter() - start) / 50 * 1000
asyncio.run(async_steps())
print(json.dumps(t))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes to run (default 5)")
    args = parser.parse_args()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_EC2_METADATA_DISABLED": "true", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_CONFIG_FILE": "/nonexistent",
    }  # fmt: skip
    rounds = []
    for _ in range(args.rounds):
        out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
        rounds.append(json.loads(out.stdout))
    medians = {step: statistics.median(r[step] for r in rounds) for step in rounds[0]}
    baseline = medians["cached token, get()"]
    width = max(map(len, medians))
    print(f"credentials: median of {args.rounds} fresh processes; ratio = step / cached get()")
    print(f"{'step':<{width}}  {'ms':>10}  {'ratio':>10}")
    for step, ms in medians.items():
        print(f"{step:<{width}}  {ms:>10.4f}  {ms / baseline:>10.0f}")


if __name__ == "__main__":
    main()
