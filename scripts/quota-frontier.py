#!/usr/bin/env python3
"""The best any client can do against a token bucket when a call's latency passes before the
bucket counts it (the sandbox's default `charge`; docs/BENCHMARKS.md, issue 15).

The client cannot see a call's latency before it sends it, so the calls it spaces evenly reach
the bucket jittered. For a bucket of C calls refilled at r/s and a latency uniform in lo..hi,
this prints, for clients that know the rate exactly (better than any real one):

- open loop: calls sent at an even pace, a share f of r;
- closed loop: k calls in flight, the next sent the moment one is answered (never faster than r).

Each line: the share of the refill used (what the benchmark calls efficiency, against a
client whose calls reach the bucket the moment it allows) and the share of calls answered 429.
A 429 is retried like any other call (it costs a request, not a row).

    python3 scripts/quota-frontier.py                 # the benchmark's shapes
    python3 scripts/quota-frontier.py 1 30 50 150     # capacity, rate/s, latency lo, hi (ms)
"""
import heapq
import random
import sys


def bucket(arrivals, rate, capacity):
    """How many of `arrivals` (sorted, seconds) a token bucket lets through."""
    tokens, last, passed = float(capacity), arrivals[0], 0
    for t in arrivals:
        tokens = min(capacity, tokens + (t - last) * rate)
        last = t
        if tokens >= 1:
            tokens -= 1
            passed += 1
    return passed


def open_loop(share, rate, capacity, lo, hi, n=100_000, seed=1):
    rnd = random.Random(seed)
    pace = share * rate
    arrivals = sorted(i / pace + rnd.uniform(lo, hi) for i in range(n))
    passed = bucket(arrivals, rate, capacity)
    return passed / (rate * n / pace), 1 - passed / n


def closed_loop(k, rate, capacity, lo, hi, n=100_000, seed=1):
    """k in flight; a call is charged (and answered) when its latency has passed."""
    rnd = random.Random(seed)
    answers = [rnd.uniform(lo, hi) + i / rate for i in range(k)]
    heapq.heapify(answers)
    tokens, last, passed, sent_last = float(capacity), 0.0, 0, (k - 1) / rate
    for _ in range(n):
        t = heapq.heappop(answers)
        tokens = min(capacity, tokens + (t - last) * rate)
        last = t
        if tokens >= 1:
            tokens -= 1
            passed += 1
        send = max(t, sent_last + 1 / rate)
        sent_last = send
        heapq.heappush(answers, send + rnd.uniform(lo, hi))
    return passed / (rate * last), 1 - passed / n


def report(capacity, rate, lo_ms, hi_ms):
    lo, hi = lo_ms / 1000, hi_ms / 1000
    print(f"bucket of {capacity}, {rate:g}/s ({rate * 60:g}/min), latency {lo_ms:g}-{hi_ms:g} ms")
    for share in (0.2, 0.3, 0.4, 0.6, 0.8, 0.9, 0.95, 1.0):
        used, throttled = open_loop(share, rate, capacity, lo, hi)
        print(f"  open loop at {share:4.2f} of the rate: uses {used:.3f}, 429s {throttled:6.1%}")
    for k in (1, 2, 3, 4, 6, 8):
        used, throttled = closed_loop(k, rate, capacity, lo, hi)
        print(f"  closed loop, {k} in flight:       uses {used:.3f}, 429s {throttled:6.1%}")


if __name__ == "__main__":
    if len(sys.argv) == 5:
        c, r, lo, hi = sys.argv[1:]
        report(int(c), float(r), float(lo), float(hi))
    else:
        for c, r in ((1, 30), (5, 50), (50, 50)):
            report(c, r, 50, 150)
