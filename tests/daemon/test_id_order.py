"""sessiond's answers that rest on session ids following creation order.

Since issue 15 the engine's UUIDv7 stamps come in per-thread blocks of 64
(core/util/uuid.c): ids increase per OS thread, and across threads only from
one millisecond to the next. gRPC's callback server runs handlers on a pool
of threads, so one client's sequential CreateSession calls (each waits for
the one before) may draw from two threads' blocks within one millisecond and
get ids in the wrong order. ListSessions returns id order (test_rpc.py
asserts that it is creation order) and evict-oldest evicts the smallest id.
"""
from __future__ import annotations

from helpers import create, unique_user

ROUNDS = 200


def test_list_is_creation_order_for_sequential_creates(shared):
    pb = shared.stubs.pb
    user = unique_user("order")
    ids = [create(shared, user=user).session.session_id for _ in range(ROUNDS)]
    every = shared.stub.ListSessions(pb.ListSessionsRequest(user_id=user), timeout=5)
    listed = [s.session_id for s in every.sessions]
    swapped = [(i, ids[i], ids[i + 1]) for i in range(len(ids) - 1) if ids[i] > ids[i + 1]]
    assert not swapped, "%d of %d sequential creates got an id below the one before, first: %s" % (
        len(swapped), ROUNDS, swapped[0])
    assert listed == ids


def test_evict_oldest_evicts_first_created(daemons):
    d = daemons.start("--max-sessions-per-user", "2", "--limit-policy", "evict-oldest", name="evict-order")
    pb = d.stubs.pb
    user = unique_user("evict")
    sessions = [create(d, user=user).session.session_id for _ in range(2)]
    for k in range(ROUNDS):
        sessions.append(create(d, user=user).session.session_id)
        # The cap is 2: the first of the three created is the one to go.
        kept = {s.session_id for s in d.stub.ListSessions(pb.ListSessionsRequest(user_id=user), timeout=5).sessions}
        assert kept == set(sessions[-2:]), "round %d: evicted %s instead of %s" % (
            k, sorted(set(sessions[-3:]) - kept), sessions[-3])
    assert d.stop() == 0
