"""SupervisorActor: start order, one-for-one restarts, the liveness sweep, intensity and escalation."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import pykka
import pytest

from smeg_actors.actors.messages import ChildFailed, GetCounts, StopChildren, Tick
from smeg_actors.actors.supervisor import Children, ChildSpec, Supervised, SupervisorActor

WAIT = 5.0


class Lab:
    """What the test children did, shared with the test thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.starts: list[tuple[str, str]] = []  # (name, argument) per start() call
        self.failing_starts: dict[str, int] = {}  # name -> how many next on_start calls raise
        self.stopped: list[str] = []
        self.reported: queue.Queue[str] = queue.Queue()  # a child told the supervisor it died
        self.hold_report: dict[str, threading.Event] = {}  # delay a child's report until set

    def should_fail_start(self, name: str) -> bool:
        with self.lock:
            left = self.failing_starts.get(name, 0)
            if left:
                self.failing_starts[name] = left - 1
            return left > 0

    def wait_reported(self, name: str) -> None:
        try:
            reported = self.reported.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"{name} never reported its failure within {WAIT}s") from None
        assert reported == name


class Child(Supervised):
    """A tiny supervised actor: ``"boom"`` told crashes it; ``"arg"`` asked returns its argument."""

    def __init__(self, name: str, supervisor: pykka.ActorRef[Any] | None, *, arg: str, lab: Lab) -> None:
        super().__init__(name, supervisor)
        self.arg, self.lab = arg, lab

    def on_start(self) -> None:
        if self.lab.should_fail_start(self.name):
            raise RuntimeError("cannot start")

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, tuple) and message[0] == "boom":
            raise RuntimeError(message[1])
        if message == "boom":
            raise RuntimeError("boom")
        if message == "arg":
            return self.arg
        return None

    def on_stop(self) -> None:
        with self.lab.lock:
            self.lab.stopped.append(self.name)

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback_: TracebackType | None,
    ) -> None:
        hold = self.lab.hold_report.get(self.name)
        if hold is not None:
            hold.wait(WAIT)
        super().on_failure(exception_type, exception_value, traceback_)
        self.lab.reported.put(self.name)


class FakeMonotonic:
    """A monotonic clock that only moves when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Escalations:
    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.called = threading.Event()

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self.called.set()


def spec(name: str, lab: Lab) -> ChildSpec:
    def start(sup: pykka.ActorRef[Any]) -> pykka.ActorRef[Any]:
        arg = f"{name}-arg"
        with lab.lock:
            lab.starts.append((name, arg))
        return Child.start(name, sup, arg=arg, lab=lab)

    return ChildSpec(name, start)


class Tree:
    def __init__(
        self,
        names: list[str],
        *,
        max_restarts: int = 5,
        period: float = 10.0,
        clock: Callable[[], float] | None = None,
        on_restart: Callable[[str], None] = lambda _n: None,
        lab: Lab | None = None,
    ) -> None:
        self.lab = lab or Lab()
        self.children = Children()
        self.escalations = Escalations()
        self.clock = clock or FakeMonotonic()
        self.sup = SupervisorActor.start(
            [spec(n, self.lab) for n in names],
            self.children,
            max_restarts=max_restarts,
            period=period,
            escalate=self.escalations,
            on_restart=on_restart,
            clock=self.clock,
        )
        self.counts()  # answered once on_start has started every child

    def counts(self) -> dict[str, int]:
        result: dict[str, int] = self.sup.ask(GetCounts(), timeout=WAIT)
        return result

    def crash(self, name: str, error: str = "boom") -> None:
        """Crash the child through a told message; return once the supervisor has handled the report."""
        self.children.get(name).tell(("boom", error))
        self.lab.wait_reported(name)
        self.counts()  # queued behind the report, so answered after it

    def started(self, name: str) -> list[tuple[str, str]]:
        with self.lab.lock:
            return [s for s in self.lab.starts if s[0] == name]


def test_starts_children_in_the_order_of_their_specs() -> None:
    # When
    tree = Tree(["projector", "scheduler", "dispatcher", "worker-0"])
    # Then
    assert [name for name, _arg in tree.lab.starts] == ["projector", "scheduler", "dispatcher", "worker-0"]
    assert [name for name, _ref in tree.children.items()] == [
        "projector",
        "scheduler",
        "dispatcher",
        "worker-0",
    ]
    assert all(ref.is_alive() for _name, ref in tree.children.items())
    assert tree.counts() == {}


def test_child_crashing_on_a_told_message_is_restarted_with_the_same_arguments() -> None:
    # Given
    tree = Tree(["a", "b"])
    old = tree.children.get("a")
    # When
    tree.crash("a")
    # Then
    assert tree.counts() == {"a": 1}
    assert tree.started("a") == [("a", "a-arg"), ("a", "a-arg")]
    new = tree.children.get("a")
    assert new is not old
    assert not old.is_alive()
    assert new.is_alive()
    assert new.ask("arg", timeout=WAIT) == "a-arg"
    assert tree.started("b") == [("b", "b-arg")]  # one-for-one: the sibling is left alone


def test_child_dying_in_on_start_is_found_by_the_liveness_sweep_and_restarted() -> None:
    # Given a child whose first on_start raises (pykka does not call on_failure then)
    lab = Lab()
    lab.failing_starts["a"] = 1
    tree = Tree(["a", "b"], lab=lab)
    dead = tree.children.get("a")
    assert dead.actor_stopped.wait(WAIT)
    assert tree.counts() == {}  # nobody reported the death
    # When
    tree.sup.tell(Tick())
    # Then
    assert tree.counts() == {"a": 1}
    restarted = tree.children.get("a")
    assert restarted is not dead
    assert restarted.ask("arg", timeout=WAIT) == "a-arg"


def test_death_found_by_the_sweep_and_reported_later_is_restarted_once() -> None:
    # Given a child that crashed but whose report is held back
    lab = Lab()
    lab.hold_report["a"] = release = threading.Event()
    tree = Tree(["a"], lab=lab)
    crashed = tree.children.get("a")
    crashed.tell("boom")
    assert crashed.actor_stopped.wait(WAIT)
    tree.sup.tell(Tick())
    assert tree.counts() == {"a": 1}
    # When the late report arrives
    release.set()
    lab.wait_reported("a")
    # Then the already restarted child is not restarted again
    assert tree.counts() == {"a": 1}
    assert len(tree.started("a")) == 2
    assert tree.children.get("a").is_alive()


def test_more_than_max_restarts_within_period_escalates_once_and_stops_restarting() -> None:
    # Given a clock that does not move: every crash is within the period
    tree = Tree(["a", "b"], max_restarts=2, period=10.0)
    tree.crash("a")
    tree.crash("a")
    assert tree.counts() == {"a": 2}
    # When the third crash in the window happens
    tree.crash("a")
    # Then
    assert tree.escalations.called.wait(WAIT)
    assert tree.counts() == {"a": 2}
    assert not tree.children.get("a").is_alive()
    # And later failures restart nothing and escalate no more
    tree.crash("b")
    tree.sup.tell(ChildFailed("a", "late report"))
    tree.sup.tell(Tick())
    assert tree.counts() == {"a": 2}
    assert len(tree.started("a")) == 3
    assert len(tree.started("b")) == 1
    [reason] = tree.escalations.reasons
    assert reason.startswith("a crashed 3 times in 10s")
    assert "RuntimeError: boom" in reason
    assert "\n" not in reason


def test_escalation_reason_stays_one_line_when_the_error_spans_several_lines() -> None:
    """Driver errors (SQLAlchemy, psycopg) carry several lines; the reason is printed on stderr."""
    # Given
    tree = Tree(["a"], max_restarts=0)
    # When
    tree.crash("a", "(sqlite3.OperationalError) database is locked\n(Background on this error at: x)")
    # Then
    assert tree.escalations.called.wait(WAIT)
    [reason] = tree.escalations.reasons
    assert reason.startswith("a crashed 1 times in 10s")
    assert "\n" not in reason


def test_restarts_spread_out_beyond_the_period_do_not_escalate() -> None:
    # Given
    clock = FakeMonotonic()
    tree = Tree(["a"], max_restarts=2, period=10.0, clock=clock)
    # When five crashes happen 6 s apart (never more than two within 10 s)
    for _ in range(5):
        tree.crash("a")
        clock.advance(6.0)
    # Then
    assert tree.counts() == {"a": 5}
    assert tree.escalations.reasons == []
    assert tree.children.get("a").is_alive()


def test_same_crashes_packed_within_the_period_do_escalate() -> None:
    """The control for the test above: only the spacing differs."""
    # Given
    clock = FakeMonotonic()
    tree = Tree(["a"], max_restarts=2, period=10.0, clock=clock)
    # When
    for _ in range(3):
        tree.crash("a")
        clock.advance(4.0)
    # Then
    assert tree.escalations.called.wait(WAIT)
    assert tree.counts() == {"a": 2}


def test_on_restart_callback_gets_the_restarted_childs_name() -> None:
    # Given
    restarted: queue.Queue[str] = queue.Queue()
    tree = Tree(["worker-0", "worker-1"], on_restart=restarted.put)
    # When
    tree.crash("worker-1")
    # Then
    assert restarted.get(timeout=WAIT) == "worker-1"
    assert restarted.empty()
    assert tree.counts() == {"worker-1": 1}


def test_child_whose_restart_raises_escalates_instead_of_killing_the_supervisor() -> None:
    """A restart that cannot start the child must not leave the tree unsupervised and silent."""
    # Given a child whose start function raises from its second call on
    children = Children()
    escalations = Escalations()
    lab = Lab()
    calls: list[int] = []

    def start(sup: pykka.ActorRef[Any]) -> pykka.ActorRef[Any]:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("cannot create the actor")
        return Child.start("a", sup, arg="a-arg", lab=lab)

    sup = SupervisorActor.start(
        [ChildSpec("a", start)],
        children,
        max_restarts=5,
        period=10.0,
        escalate=escalations,
        clock=FakeMonotonic(),
    )
    sup.ask(GetCounts(), timeout=WAIT)
    # When
    children.get("a").tell("boom")
    lab.wait_reported("a")
    try:
        sup.ask(GetCounts(), timeout=WAIT)  # queued behind the report
        supervisor_survived = True
    except pykka.ActorDeadError:
        supervisor_survived = False
    # Then
    assert len(escalations.reasons) == 1, (
        f"restart failure not escalated (supervisor survived: {supervisor_survived})"
    )
    assert escalations.reasons[0].startswith("a ")


def test_stop_children_stops_every_child_in_reverse_order_and_ignores_later_failures() -> None:
    # Given
    tree = Tree(["a", "b", "c"])
    refs = [ref for _name, ref in tree.children.items()]
    # When
    tree.sup.ask(StopChildren(), timeout=WAIT)
    # Then
    assert not any(ref.is_alive() for ref in refs)
    assert tree.lab.stopped == ["c", "b", "a"]
    # And later failures and sweeps restart nothing and escalate nothing
    tree.sup.tell(ChildFailed("b", "died while stopping"))
    tree.sup.tell(Tick())
    assert tree.counts() == {}
    assert len(tree.lab.starts) == 3
    assert tree.escalations.reasons == []


@pytest.mark.parametrize("message", ["unknown", 42])
def test_unknown_message_is_dropped_and_the_supervisor_keeps_running(message: Any) -> None:
    # Given
    tree = Tree(["a"])
    # When
    tree.sup.tell(message)
    # Then
    assert tree.counts() == {}
    assert tree.sup.is_alive()
