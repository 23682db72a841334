"""AckWindow: batches that finish out of order are acked with one multiple ack, never tag by tag."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from adapters.ack_window import AckWindow


def window(*tags: int) -> AckWindow:
    w = AckWindow()
    for tag in tags:
        w.delivered(tag)
    return w


def test_a_batch_finishing_in_order_is_acked_at_once_up_to_its_highest_tag() -> None:
    w = window(1, 2, 3, 4, 5, 6)
    assert w.finished([1, 2, 3]) == 3
    assert w.finished([4, 5, 6]) == 6


def test_a_batch_finishing_before_a_lower_one_waits_and_one_ack_covers_both() -> None:
    w = window(1, 2, 3, 4, 5, 6)
    assert w.finished([4, 5, 6]) is None
    assert w.finished([1, 2, 3]) == 6


def test_a_lower_batch_handed_back_frees_the_finished_ones_above_it() -> None:
    w = window(1, 2, 3, 4, 5, 6)
    assert w.finished([4, 5, 6]) is None
    assert w.released([1, 2, 3]) == 6


def test_finished_tags_behind_a_pending_one_are_left_over_for_the_close() -> None:
    w = window(1, 2, 3, 4)
    assert w.finished([3, 4]) is None
    assert w.leftover() == [3, 4]
    assert w.finished([1]) == 1  # 2 still pending; 3 and 4 were acked at the close


@given(st.permutations(list(range(1, 13))), st.sets(st.integers(1, 12)))
def test_every_multiple_ack_settles_only_finished_tags_and_all_end_up_settled(
    order: list[int], handed_back: set[int]
) -> None:
    # Given 12 deliveries settled one by one in any order, some handed back to the broker
    w = window(*range(1, 13))
    acked_upto = 0
    finished: set[int] = set()
    for tag in order:
        if tag in handed_back:
            settled = w.released([tag])
        else:
            finished.add(tag)
            settled = w.finished([tag])
        if settled is not None:
            # Then a multiple ack never covers a tag that is neither finished nor handed back
            covered = set(range(acked_upto + 1, settled + 1))
            assert covered <= finished | handed_back
            settled_so_far = {t for t in order[: order.index(tag) + 1]}
            assert covered <= settled_so_far
            acked_upto = max(acked_upto, settled)
    # And in the end every finished tag is acked
    assert finished <= set(range(1, acked_upto + 1)) | set(w.leftover())
