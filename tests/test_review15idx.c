/*
 * test_review15idx.c: a reviewer's white-box attacks on the expiry batch's
 * index of pending IDLE events (a34563d: mem_event_prelude finds a
 * session's IDLE through an open-addressed index by session id instead of
 * scanning every IDLE of the batch).
 *
 * The contract checked: for any session, mem_event_prelude returns the
 * earliest-captured IDLE event of that session still pending in the
 * innermost delivering batch that has one, exactly as the scan did; never
 * an event of another session, never one left over from before the
 * batch's reset, also when every hash collides (one probe sequence for
 * all, starting at the index's last slot so that it wraps at once), after
 * the index grows and re-inserts, and when the index's allocation fails.
 *
 * Through the public API one session cannot hold two pending IDLEs in one
 * batch (a wake needs the shard lock, which the wheel holds for the whole
 * turn that fills the batch), so "the first of several" is only
 * observable here. This file therefore compiles core/mem/expiry.c into
 * itself: its static functions and its thread-local `delivering` are
 * reachable, and the archive's expiry.o is not linked (every external
 * symbol it defines is already defined here). Batches are filled the way
 * batch_push fills them (grow the events, reserve the index, then insert),
 * minus the capture, which needs a live session; the tests run on one
 * thread, no locks.
 */
#include "test_support.h"

#include "mem/expiry.c"
#include "mem/table.h"
#include "util/alloc.h"

/* Only its address is compared: the index never reads the store. */
static mem_store store_a, store_b;

/* Every key hashes to the index's last slot, whatever its size. */
static unsigned long last_slot_hash(const void *key, size_t len, unsigned long seed)
{
    (void)key, (void)len, (void)seed;
    return ~0UL;
}

/* A few hash values for many keys: clusters that run into each other. */
static unsigned long clustered_hash(const void *key, size_t len, unsigned long seed)
{
    (void)len, (void)seed;
    return ((const unsigned char *)key)[15] % 3 ? ~0UL : 5;
}

static afsm_uuid id_of(unsigned k)
{
    afsm_uuid id;
    memset(&id, 0, sizeof(id));
    memcpy(id.bytes + 4, &k, sizeof(k));
    id.bytes[15] = (uint8_t)k;
    return id;
}

static void batch_open(timer_batch *batch, const mem_store *ms)
{
    memset(batch, 0, sizeof(*batch));
    batch->ms = ms;
}

static void batch_close(timer_batch *batch)
{
    mem_free(batch->idle_events);
    mem_free(batch->idle_slots);
}

/* batch_push's IDLE half: false when an allocation failed (then nothing
 * was added). */
static bool push_idle_id(timer_batch *batch, const afsm_uuid *id)
{
    if (!grow((void **)&batch->idle_events, &batch->idle_capacity, batch->idle_count, sizeof(*batch->idle_events)) ||
        !idle_index_reserve(batch))
        return false;
    uint32_t event = (uint32_t)batch->idle_count++;
    mem_event *ev = &batch->idle_events[event];
    memset(ev, 0, sizeof(*ev));
    ev->ev.session_id = *id;
    ev->ev.old_state = event; /* which capture it was */
    ev->pending = true;
    idle_index_insert(batch, event);
    return true;
}

static bool push_idle(timer_batch *batch, unsigned k)
{
    afsm_uuid id = id_of(k);
    return push_idle_id(batch, &id);
}

/* The index's answer for session k, as the capture of a callback's event
 * of k would get it, with `batch` (and its outer chain) delivering. */
static mem_event *prelude_of(timer_batch *batch, const mem_store *ms, unsigned k)
{
    session s;
    memset(&s, 0, sizeof(s));
    s.id = id_of(k);
    delivering = batch;
    mem_event *found = mem_event_prelude(ms, &s);
    delivering = NULL;
    return found;
}

/* The scan a34563d replaced: the reference answer. */
static mem_event *scan_of(timer_batch *batch, const mem_store *ms, unsigned k)
{
    afsm_uuid id = id_of(k);
    for (; batch != NULL; batch = batch->outer) {
        if (batch->ms != ms)
            continue;
        for (size_t i = 0; i < batch->idle_count; i++)
            if (batch->idle_events[i].pending && memcmp(&batch->idle_events[i].ev.session_id, &id, sizeof(id)) == 0)
                return &batch->idle_events[i];
    }
    return NULL;
}

/* Slots in use: exactly the batch's events, none left from a turn before. */
static size_t slots_used(const timer_batch *batch)
{
    size_t used = 0;
    for (size_t i = 0; i < batch->idle_slot_count; i++)
        used += batch->idle_slots[i] != 0;
    return used;
}

static void check_all(timer_batch *batch, const mem_store *ms, unsigned keys, const char *when)
{
    for (unsigned k = 0; k < keys; k++) {
        mem_event *want = scan_of(batch, ms, k), *got = prelude_of(batch, ms, k);
        if (got != want)
            fail_msg("%s: session %u: the index gave capture %d, the scan %d", when, k,
                     got ? (int)got->ev.old_state : -1, want ? (int)want->ev.old_state : -1);
    }
}

/* Several IDLEs per session, every hash colliding at the last slot,
 * across two growths of the index: each session's earliest pending one,
 * and the next once that one is delivered, down to none. */
static void run_duplicates(table_hash_fn *hash)
{
    enum { KEYS = 150, COPIES = 4 }; /* 600 events: 256 -> 512 -> 1024 */
    table_hash_override = hash;
    timer_batch batch;
    batch_open(&batch, &store_a);
    for (unsigned copy = 0; copy < COPIES; copy++)
        for (unsigned k = 0; k < KEYS; k++)
            assert_true(push_idle(&batch, (k * 7 + copy) % KEYS));
    assert_int_equal(batch.idle_slot_count, 2048);
    check_all(&batch, &store_a, KEYS + 3, "all pending");
    /* Deliver them in a stride, so that pending and delivered interleave
     * along the one probe sequence. */
    for (unsigned round = 0; round < 4; round++) {
        for (size_t i = round; i < batch.idle_count; i += 4)
            batch.idle_events[i].pending = false;
        check_all(&batch, &store_a, KEYS, "some delivered");
    }
    for (unsigned k = 0; k < KEYS; k++)
        assert_null(prelude_of(&batch, &store_a, k));
    /* Another store's delivery never sees this batch's events. */
    batch.idle_events[0].pending = true;
    assert_null(prelude_of(&batch, &store_b, (0 * 7) % KEYS));
    batch_close(&batch);
    table_hash_override = NULL;
}

static void test_first_pending_of_duplicates(void **state)
{
    (void)state;
    run_duplicates(last_slot_hash);
    run_duplicates(clustered_hash);
    run_duplicates(NULL);
}

/* A reset batch answers from its new events only: the previous turn's
 * slots (here still pointing at pending events beyond the new count, the
 * worst case) are gone, also once the new turn grows the events. */
static void test_reset_forgets_the_previous_turn(void **state)
{
    (void)state;
    table_hash_override = last_slot_hash;
    timer_batch batch;
    batch_open(&batch, &store_a);
    for (unsigned k = 0; k < 600; k++)
        assert_true(push_idle(&batch, k));
    batch_reset(&batch);
    assert_int_equal(batch.idle_count, 0);
    assert_int_equal(slots_used(&batch), 0);
    for (unsigned k = 0; k < 600; k++)
        assert_null(prelude_of(&batch, &store_a, k));
    /* The new turn: other sessions, then one of the old ones again. */
    for (unsigned k = 1000; k < 1010; k++)
        assert_true(push_idle(&batch, k));
    assert_true(push_idle(&batch, 300));
    check_all(&batch, &store_a, 600, "after reset");
    mem_event *again = prelude_of(&batch, &store_a, 300);
    assert_non_null(again);
    assert_int_equal(again->ev.old_state, 10);
    for (unsigned k = 1000; k < 1010; k++)
        assert_int_equal(prelude_of(&batch, &store_a, k)->ev.old_state, k - 1000);
    /* Many turns: a batch that kept its slots would fill its index (and
     * probe forever); each turn fills it only half. */
    for (unsigned turn = 0; turn < 8; turn++) {
        batch_reset(&batch);
        for (unsigned k = 0; k < 1024; k++)
            assert_true(push_idle(&batch, turn * 5000 + k));
        assert_int_equal(batch.idle_slot_count, 2048);
        assert_int_equal(slots_used(&batch), 1024);
        check_all(&batch, &store_a, 40, "a later turn");
        assert_int_equal(prelude_of(&batch, &store_a, turn * 5000 + 1023)->ev.old_state, 1023);
    }
    batch_close(&batch);
    table_hash_override = NULL;
}

/* Nested advances: the innermost batch with a pending IDLE of the session
 * answers, an outer one once the inner's is delivered, another store's
 * batch never. */
static void test_outer_batches(void **state)
{
    (void)state;
    table_hash_override = last_slot_hash;
    timer_batch outer, other, inner;
    batch_open(&outer, &store_a);
    batch_open(&other, &store_b);
    batch_open(&inner, &store_a);
    for (unsigned k = 0; k < 300; k++)
        assert_true(push_idle(&outer, k));
    for (unsigned k = 0; k < 300; k += 2)
        assert_true(push_idle(&other, k));
    for (unsigned k = 0; k < 300; k += 3)
        assert_true(push_idle(&inner, k));
    inner.outer = &other;
    other.outer = &outer;
    check_all(&inner, &store_a, 300, "nested");
    check_all(&inner, &store_b, 300, "nested, the other store");
    assert_ptr_equal(prelude_of(&inner, &store_a, 3), &inner.idle_events[1]);
    inner.idle_events[1].pending = false;
    assert_ptr_equal(prelude_of(&inner, &store_a, 3), &outer.idle_events[3]);
    /* An inner batch with no IDLE (its index never allocated). */
    timer_batch empty;
    batch_open(&empty, &store_a);
    empty.outer = &outer;
    assert_ptr_equal(prelude_of(&empty, &store_a, 7), &outer.idle_events[7]);
    batch_close(&inner);
    batch_close(&other);
    batch_close(&outer);
    table_hash_override = NULL;
}

/* Each allocation of a push failing in turn (the events' growth, then the
 * index's): nothing is added, the index still finds every event it had,
 * and the next push that can allocate re-indexes them all. */
static void test_index_allocation_failures(void **state)
{
    (void)state;
    table_hash_override = last_slot_hash;
    for (long n = 0; n < 2; n++) {
        timer_batch batch;
        batch_open(&batch, &store_a);
        for (unsigned k = 0; k < 256; k++)
            assert_true(push_idle(&batch, k));
        alloc_fail_after(n);
        bool pushed = push_idle(&batch, 256); /* both arrays must grow */
        alloc_fail_reset();
        assert_false(pushed);
        assert_int_equal(batch.idle_count, 256);
        check_all(&batch, &store_a, 257, "after a failed growth");
        assert_true(push_idle(&batch, 256));
        assert_true(batch.idle_slot_count >= 2 * batch.idle_capacity);
        check_all(&batch, &store_a, 257, "grown after the failure");
        batch_close(&batch);
    }
    /* The very first index failing: no IDLE is recorded, nothing found. */
    timer_batch batch;
    batch_open(&batch, &store_a);
    alloc_fail_after(1);
    bool pushed = push_idle(&batch, 1);
    alloc_fail_reset();
    assert_false(pushed);
    assert_int_equal(batch.idle_count, 0);
    assert_null(prelude_of(&batch, &store_a, 1));
    batch_close(&batch);
    table_hash_override = NULL;
}

/* Session ids are caller-chosen too (afsm_session_restore, a snapshot
 * sessiond reloads), and table_mix is public and invertible: ids whose
 * unseeded hash ends the same are a loop away (as place_in_home_run
 * builds them). The engine seeds every table for that reason (store.c);
 * an unseeded index put such a batch's IDLEs on one probe sequence: each
 * push under the shard lock probed past all the earlier ones (4,000
 * crafted IDLEs: an advance of 6.4-7.2 ms of CPU against 0.4-1.9 for v7
 * ids, measured through afsm_session_restore), and each removal's lookup
 * walked them all again. With the store's seed (fixed here, random in an
 * engine) they spread as any ids do. */
static void test_crafted_ids_spread(void **state)
{
    (void)state;
    table_hash_override = NULL;
    mem_store seeded;
    memset(&seeded, 0, sizeof(seeded));
    seeded.seed = UINT64_C(0x243f6a8885a308d3);
    timer_batch batch;
    batch_open(&batch, &seeded);
    uint64_t hi = UINT64_C(0x0190f3a1b2c37d4e), k = 0;
    while (batch.idle_count < 512) {
        /* Same low 20 bits of table_hash_uuid(id, 0) for all. */
        uint64_t lo = table_unmix((k++ << 20) | 0x5a5a5) ^ table_mix(hi);
        afsm_uuid id;
        memcpy(id.bytes, &hi, sizeof(hi));
        memcpy(id.bytes + 8, &lo, sizeof(lo));
        assert_int_equal(table_hash_uuid(&id, 0) & 0xfffff, 0x5a5a5);
        assert_true(push_idle_id(&batch, &id));
    }
    /* How far each event sits from its home slot: at half load, random
     * homes keep that to a few slots; one shared home makes it the count. */
    size_t mask = batch.idle_slot_count - 1, worst = 0;
    for (size_t at = 0; at <= mask; at++) {
        uint32_t slot = batch.idle_slots[at];
        if (slot == 0)
            continue;
        size_t distance = (at - idle_slot_of(&batch, &batch.idle_events[slot - 1].ev.session_id)) & mask;
        if (distance > worst)
            worst = distance;
    }
    if (worst > 48)
        fail_msg("an IDLE event %zu slots from its home among %zu: crafted ids share a probe sequence", worst,
                 batch.idle_count);
    batch_close(&batch);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_pending_of_duplicates),
        cmocka_unit_test(test_reset_forgets_the_previous_turn),
        cmocka_unit_test(test_outer_batches),
        cmocka_unit_test(test_index_allocation_failures),
        cmocka_unit_test(test_crafted_ids_spread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
