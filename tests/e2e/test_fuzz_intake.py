"""Fuzzing the intake through the real broker: one ``smeg run`` takes thousands of generated
payloads, and each one must end where the contract says.

The contract (the intake's, written out again in ``tests/fuzz_payloads.py``, not taken from the
parser): nothing a client publishes may take the consumer down; an invalid payload goes to
``{prefix}.rejected`` byte-identical with a reason of at most 512 UTF-8 bytes in ``x-smeg-error``
(and the client's headers when they can be written again); a valid one is delivered.

Each Hypothesis example is a batch of about 36 payloads against the same live process, so a
failing batch shrinks towards the payload that breaks smeg (the harness restarts smeg when it
died; shrinking stops after ``SMEG_FUZZ_SHRINK_SECONDS``, default 90). ``SMEG_FUZZ_PAYLOADS``
sets how many payloads at least (default 2,000); ``SMEG_FUZZ_SMEG_ROOT`` runs the smeg of another
checkout (e.g. an export of an older commit).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.internal.conjecture import engine

from tests.e2e.conftest import AMQP_URL
from tests.fuzz_payloads import (
    FRAME_MAX,
    ROOT,
    Field,
    IntakeFuzzer,
    Json,
    Obj,
    Payload,
    Properties,
    Raw,
    Verdict,
    batches,
    describe,
    figures,
    fill_bytes,
    judge,
    render,
    run_clock,
)

PAYLOADS = int(os.environ.get("SMEG_FUZZ_PAYLOADS", "2000"))
SHRINK_SECONDS = float(os.environ.get("SMEG_FUZZ_SHRINK_SECONDS", "90"))
SMEG_ROOT = Path(os.environ.get("SMEG_FUZZ_SMEG_ROOT", ROOT))


def request(**fields: Json) -> bytes:
    """A valid request with ``fields`` changed or added."""
    base: dict[str, Json] = {"message_id": "m-1", "channel": "sms", "to": "+447700900123", "body": "hi"}
    base.update(fields)
    return render(Obj(tuple(base.items())))


# --- the oracle itself (no broker): the contract's boundaries, one by one ---------------------


@pytest.mark.parametrize(
    ("raw", "verdict"),
    [
        (request(), Verdict.VALID),
        (request(body="😀" * 1600), Verdict.VALID),  # the body counts characters (6400 bytes)
        (request(body="b" * 1601), Verdict.INVALID),
        (request(body="€" * 1601), Verdict.INVALID),
        (request(body="line\r\n\ttab"), Verdict.VALID),
        (request(body="bell\x07"), Verdict.INVALID),
        (request(body="del\x7f"), Verdict.INVALID),
        (request(channel="im", to="€" * 85 + "a"), Verdict.VALID),  # 256 bytes
        (request(channel="im", to="€" * 86), Verdict.INVALID),  # 86 characters, 258 bytes
        (request(channel="im", to="a\tb"), Verdict.INVALID),
        (request(to="+123456"), Verdict.INVALID),
        (request(to="+123456789012345"), Verdict.VALID),
        (request(to="+1234567890123456"), Verdict.INVALID),
        (request(correlation_id="€" * 42 + "ab"), Verdict.VALID),  # 128 bytes
        (request(correlation_id="€" * 43), Verdict.INVALID),
        (request(correlation_id="a\x00b"), Verdict.INVALID),
        (request(message_id="x" * 128), Verdict.VALID),
        (request(message_id="x" * 129), Verdict.INVALID),
        (request(provider="€" * 21 + "x"), Verdict.VALID),  # configured, 64 bytes
        (request(provider="€" * 22), Verdict.INVALID),  # configured, 22 characters, 66 bytes
        (request(provider="nope"), Verdict.INVALID),
        (request(metadata=Obj((("k", "v\n"),))), Verdict.VALID),
        (request(metadata=Obj((("k\n", "v"),))), Verdict.INVALID),
        (request(metadata=Obj((("€" * 21 + "k", "v"),))), Verdict.VALID),  # a 64-byte key
        (request(metadata=Obj((("€" * 22, "v"),))), Verdict.INVALID),
        (request(metadata=Obj((("k", fill_bytes("a", 4096 - 9)),))), Verdict.VALID),  # 4096 as JSON
        (request(metadata=Obj((("k", fill_bytes("a", 4097)),))), Verdict.INVALID),
        (request(body=Raw('"\\ud83d\\ude00"')), Verdict.VALID),  # an escaped pair is one emoji
        (request(body=Raw('"\\ud800"')), Verdict.INVALID),
        (request(body=Raw("9" * 5000)), Verdict.INVALID),
        (request(extra="x"), Verdict.INVALID),
        (b"[" * 100_000, Verdict.INVALID),
        (request().ljust(64 * 1024), Verdict.VALID),  # at the size bound, in JSON whitespace
        (request().ljust(64 * 1024 + 1), Verdict.INVALID),
        (b'{"a":' * 900 + b"1" + b"}" * 900, Verdict.INVALID),
        (b"\xef\xbb\xbf" + request(), Verdict.UNSURE),
        (b'{"body": "hi", "body": 5, "channel": "sms", "to": "+447700900123"}', Verdict.UNSURE),
        (b'{"body": 4, "body": 5, "channel": "sms", "to": "+447700900123"}', Verdict.INVALID),
        (b"\xff", Verdict.INVALID),
        (b"", Verdict.INVALID),
    ],
)
def test_oracle_reads_the_contract(raw: bytes, verdict: Verdict) -> None:
    assert judge(raw).verdict is verdict, judge(raw)


def test_oracle_checks_the_transport_correlation_id_only_when_the_body_has_none() -> None:
    assert judge(request(), "c" * 129).verdict is Verdict.INVALID
    assert judge(request(), b"\xff\xfe").verdict is Verdict.INVALID
    assert judge(request(correlation_id="own"), "c" * 129).verdict is Verdict.VALID


def test_header_tables_are_written_as_pika_reads_them() -> None:
    table = ((b"big", Field(b"d", 1e19)), (b"n", Field(b"F", ((b"\xff", Field(b"x", b"\x00")),))))
    properties = Properties(headers=table, correlation_id="c")
    assert properties.decoded_headers() == {"big": 10**19, "n": {b"\xff": b"\x00"}}
    assert properties.copied_headers() == {"n": {b"\xff": b"\x00"}}  # 1e19 cannot be written again
    filled = Properties(fill_slack=0)
    assert 12 + len(b"".join(filled.wire().encode())) == FRAME_MAX - 8


# --- through the broker ----------------------------------------------------------------------


def test_fuzzed_payloads_are_each_rejected_or_delivered_and_smeg_stays_up(
    tmp_path: Path, e2e_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A shrink step that kills smeg costs a restart: bound the shrinking (Hypothesis's own bound
    # is 300 s; the setting is internal, so a Hypothesis without it shrinks as long as it likes).
    monkeypatch.setattr(engine, "MAX_SHRINKING_SECONDS", SHRINK_SECONDS, raising=False)
    with IntakeFuzzer(tmp_path, AMQP_URL, prefix=e2e_prefix, stall=10, smeg_root=SMEG_ROOT) as fuzzer:
        clock = run_clock()

        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[phase for phase in Phase if phase is not Phase.explain],
        )
        @given(batch=batches(fuzzer.ids))
        def each_batch_settles(batch: list[Payload]) -> None:
            problems = fuzzer.run_batch(batch)
            assert not problems, describe(problems)

        for _ in range(20):  # Hypothesis runs of 25 batches until enough payloads went through
            each_batch_settles()
            if fuzzer.totals.published >= PAYLOADS:
                break
        problems = fuzzer.finish()  # nothing late on .rejected, still running, no traceback, exit 0
        print("\n".join(figures(fuzzer.totals, clock(), fuzzer.exit_code)))  # shown with -s
        assert not problems, describe(problems)
        totals = fuzzer.totals
        assert totals.published >= PAYLOADS, totals
        assert totals.rejected == totals.invalid, totals
        assert fuzzer.delivered_ids, totals
        assert fuzzer.smeg.history_types(fuzzer.delivered_ids[-1]) == ["Received", "Attempted", "Delivered"]
