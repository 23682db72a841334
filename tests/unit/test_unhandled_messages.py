"""Nothing told to a supervised child is lost when it crashes: what waited in its inbox, and what
is told while it restarts, reaches its successor (pykka alone drops both)."""

from __future__ import annotations

import threading
from typing import Any

import pykka

from smeg_actors.actors.messages import GetCounts, StopChildren
from smeg_actors.actors.supervisor import Children, ChildSpec, Supervised, SupervisorActor
from tests.waiting import wait_until


class Recorder(Supervised):
    """Records what it handles; the first ``"crash"`` blocks until released, then raises."""

    crashed = False

    def __init__(
        self, name: str, supervisor: pykka.ActorRef[Any] | None, *, seen: list[Any], gate: threading.Event
    ) -> None:
        super().__init__(name, supervisor)
        self.seen, self.gate = seen, gate

    def on_receive(self, message: Any) -> Any:
        if message == "crash" and not Recorder.crashed:
            Recorder.crashed = True
            self.gate.wait(5)
            raise RuntimeError("injected crash")
        if message == "ping?":
            return "pong"
        self.seen.append(message)
        return None

    def ping(self) -> str:
        return "pong"


def test_messages_queued_behind_a_crash_and_told_during_the_restart_reach_the_successor() -> None:
    Recorder.crashed = False
    seen: list[Any] = []
    gate = threading.Event()
    children = Children()
    spec = ChildSpec("child", lambda sup: Recorder.start("child", sup, seen=seen, gate=gate))
    supervisor = SupervisorActor.start(
        [spec], children, max_restarts=5, period=10.0, escalate=lambda _why: None
    )
    try:
        supervisor.ask(GetCounts(), timeout=5)
        children.tell("child", "crash")
        for i in range(100):  # queued behind the crash, in the inbox pykka would drop
            children.tell("child", i)
        gate.set()
        for i in range(100, 200):  # told while the child is dead or restarting
            children.tell("child", i)

        wait_until(lambda: len(seen) == 200, 5, 0.01, message=lambda: f"{len(seen)} of 200 handled")
        assert sorted(seen) == list(range(200))
        assert supervisor.ask(GetCounts(), timeout=5) == {"child": 1}
    finally:
        supervisor.ask(StopChildren(), timeout=5)
        supervisor.stop()


def test_an_ask_queued_behind_a_crash_fails_at_once_instead_of_hanging() -> None:
    Recorder.crashed = False
    gate = threading.Event()
    actor = Recorder.start("child", None, seen=[], gate=gate)
    actor.tell("crash")
    future = actor.ask("ping?", block=False)
    gate.set()
    try:
        future.get(timeout=5)
    except pykka.ActorDeadError:
        pass
    else:
        raise AssertionError("the ask should fail with ActorDeadError")


def test_a_proxy_call_queued_behind_a_crash_fails_instead_of_answering_none() -> None:
    Recorder.crashed = False
    gate = threading.Event()
    actor = Recorder.start("child", None, seen=[], gate=gate)
    actor.tell("crash")
    future = actor.proxy().ping()
    gate.set()
    try:
        answer = future.get(timeout=5)
    except pykka.ActorDeadError:
        return
    raise AssertionError(f"the proxy call should fail with ActorDeadError, got {answer!r}")


def test_a_message_for_a_child_not_started_yet_waits_for_it() -> None:
    children = Children()
    seen: list[Any] = []
    children.tell("later", "hello")
    assert children.parked("later") == 1

    ref = Recorder.start("later", None, seen=seen, gate=threading.Event())
    try:
        children.set("later", ref)
        wait_until(lambda: seen == ["hello"], 5, 0.01, message=lambda: f"the child handled {seen}")
        assert children.parked("later") == 0
    finally:
        ref.stop()


class Crasher(Supervised):
    """Crashes on every ``"crash"``."""

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("again")
        return None


def test_a_child_crashing_again_soon_after_its_restart_waits_longer_each_time() -> None:
    children, pauses = Children(), []
    spec = ChildSpec("child", lambda sup: Crasher.start("child", sup))
    supervisor = SupervisorActor.start(
        [spec], children, max_restarts=10, period=60.0, escalate=lambda _why: None, sleep=pauses.append
    )
    try:
        supervisor.ask(GetCounts(), timeout=5)
        for restarts in range(1, 5):
            children.tell("child", "crash")
            wait_until(
                lambda restarts=restarts: supervisor.ask(GetCounts(), timeout=5) == {"child": restarts},
                5,
                0.01,
                message=lambda restarts=restarts: f"{supervisor.ask('counts', timeout=5)}, not {restarts}",
            )

        assert pauses == [0.0, 0.05, 0.1, 0.2]
    finally:
        supervisor.ask(StopChildren(), timeout=5)
        supervisor.stop()
