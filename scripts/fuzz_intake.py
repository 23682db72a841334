"""Fuzz smeg's intake through the real broker, longer than CI does, and print figures.

One ``smeg run`` (SQLite store in a temporary directory, instant simulated providers, a queue
prefix of its own) takes ``--payloads`` generated payloads in batches: arbitrary bytes, deep and
wide JSON, huge numbers, every field with every type and at its limits in bytes and characters,
control characters, lone surrogates, duplicate keys, odd AMQP properties and header tables,
interleaved with valid requests. An oracle written from the contract (``tests/fuzz_payloads.py``,
shared with ``tests/e2e/test_fuzz_intake.py``) says where each must end: an invalid one on
``{prefix}.rejected``, byte-identical, with an ``x-smeg-error`` of at most 512 bytes; a valid one
Delivered with the content sent. smeg must still run at the end, with no traceback, and exit 0
on SIGTERM. If smeg dies on a batch it is counted, started again, and the run goes on.

Run it from the project root, with the test extra installed (Hypothesis)::

    .venv/bin/pip install -e ".[test]"
    .venv/bin/python scripts/fuzz_intake.py                      # 10,000 payloads
    .venv/bin/python scripts/fuzz_intake.py --payloads 50000 --seed 7
    .venv/bin/python scripts/fuzz_intake.py --payloads 2000 --shrink   # stop at the first
                                                                       # mismatch and shrink it

Exit code: 0 when every payload ended where it should, 1 on any mismatch, 2 when the run could
not start (broker unreachable, Hypothesis missing, smeg did not start).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--payloads", type=int, default=10_000, help="payloads to publish (default 10000)")
    parser.add_argument("--amqp-url", default=AMQP_URL, help=f"RabbitMQ (default {AMQP_URL})")
    parser.add_argument("--batch", type=int, default=50, help="payloads per batch (default 50)")
    parser.add_argument("--seed", type=int, default=None, help="Hypothesis seed (default: random, printed)")
    parser.add_argument(
        "--stall", type=float, default=5.0, help="seconds without progress before a payload is late (5)"
    )
    parser.add_argument("--shrink", action="store_true", help="stop at the first mismatch and shrink it")
    parser.add_argument(
        "--smeg-root", type=Path, default=ROOT, help="the checkout whose smeg is run (default: this one)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings
    except ImportError:
        print("needs Hypothesis: .venv/bin/pip install -e '.[test]'", file=sys.stderr)
        return 2
    from tests.fuzz_payloads import IntakeFuzzer, Payload, batches, category, describe, figures

    chosen_seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"fuzzing smeg's intake: {args.payloads:,} payloads in batches of {args.batch}, seed {chosen_seed}")
    problems: list[str] = []
    started = time.monotonic()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="smeg-fuzz-") as tmp,
            IntakeFuzzer(Path(tmp), args.amqp_url, stall=args.stall, smeg_root=args.smeg_root) as fuzzer,
        ):
            fuzzing = time.monotonic()
            report_at = [fuzzing + 15.0]
            examples = math.ceil(args.payloads / (args.batch * 0.97)) + 2
            phases = [Phase.generate, Phase.shrink] if args.shrink else [Phase.generate]

            @seed(chosen_seed)
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                phases=phases,
                suppress_health_check=list(HealthCheck),
                verbosity=Verbosity.normal if args.shrink else Verbosity.quiet,
            )
            @given(batch=batches(fuzzer.ids, size=args.batch))
            def each_batch(batch: list[Payload]) -> None:
                if fuzzer.totals.published >= args.payloads:
                    return
                found = fuzzer.run_batch(batch)
                if args.shrink and found:
                    raise AssertionError(describe(found))
                problems.extend(found)
                if time.monotonic() > report_at[0]:
                    report_at[0] = time.monotonic() + 15.0
                    totals = fuzzer.totals
                    rate = totals.published / (time.monotonic() - fuzzing)
                    print(
                        f"  … {totals.published:,} published, {totals.mismatches:,} mismatches, {rate:,.0f}/s"
                    )

            try:
                while fuzzer.totals.published < args.payloads:
                    before = fuzzer.totals.published
                    each_batch()
                    if fuzzer.totals.published == before:
                        break
            except AssertionError as exc:
                problems.append(f"shrunk to:\n{exc}")
            fuzz_seconds = time.monotonic() - fuzzing
            problems += fuzzer.finish()
            totals, exit_code = fuzzer.totals, fuzzer.exit_code
    except (RuntimeError, OSError) as exc:
        print(f"could not run: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # pika's connection errors when the broker is unreachable
        if type(exc).__module__.startswith("pika"):
            print(f"could not run: broker at {args.amqp_url}: {exc!r}", file=sys.stderr)
            return 2
        raise
    print()
    for line in figures(totals, fuzz_seconds, exit_code):
        print(line)
    print(f"total wall time      {time.monotonic() - started:>9,.1f} s  (with smeg's start and stop)")
    if problems:
        print(f"\n{len(problems)} mismatches, by kind:")
        for kind, count in Counter(category(p) for p in problems).most_common():
            print(f"  {count:>5}  {kind}")
        print("\nthe first ones:\n")
        print(describe(problems, limit=20))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
