/*
 * test_table_race.c: the engine's own hash tables (mem/table.h) under
 * their users' calls: lock-free readers (Get, get-by-connection, GetBatch,
 * List with and without a user) while a writer creates and deletes enough
 * to grow every table of a one-shard engine several times and to rebuild
 * them for tombstones; and every allocation of a create that grows, a
 * delete that rebuilds and a new user entry failing in turn.
 *
 * What the readers rely on: a session present for a whole call is found,
 * with its own id (never another key's record), and a listing visits each
 * such session exactly once; a bare table churning just under half load
 * is rebuilt at its size under its readers. Run under ASan (a freed map touched) and TSan
 * (the slots' release/acquire pairs); a reader that never ends is caught
 * by ctest's timeout and by the reader's own deadline.
 */
#include "test_support.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "mem/table.h"
#include "mem_inspect.h"
#include "util/alloc.h"
#include "util/epoch.h"

#define STABLE        40  /* sessions present for the whole race */
#define STABLE_USERS  8   /* their users */
#define CHURN         200 /* sessions a round creates, then deletes */
#define ROUNDS        25
#define READ_DEADLINE 60 /* seconds: any reader still running then is stuck */

typedef struct race {
    afsm_engine *engine;
    afsm_uuid stable[STABLE];
    afsm_uuid stable_conn[STABLE];
    char stable_user[STABLE][16];
    _Atomic long writer_done;
    _Atomic long reads;    /* reader calls completed */
    _Atomic long failures; /* reader assertions that failed (reported at the end) */
    char first_failure[256];
    pthread_mutex_t failure_lock;
} race;

static void fail_once(race *r, const char *fmt, ...)
{
    pthread_mutex_lock(&r->failure_lock);
    if (atomic_fetch_add(&r->failures, 1) == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->first_failure, sizeof(r->first_failure), fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&r->failure_lock);
}

/* capacity_hint 1: the smallest maps, so growth starts from the first keys. */
static afsm_engine *open_engine_of(virtual_clock *clock, unsigned shards)
{
    afsm_config cfg = {.shard_count = shards, .capacity_hint = 1};
    return open_virtual_engine(clock, &cfg);
}

static afsm_engine *open_small_engine(virtual_clock *clock)
{
    return open_engine_of(clock, 1);
}

static afsm_status create_for(afsm_engine *engine, const char *user, afsm_uuid *id, afsm_uuid *conn)
{
    afsm_create_options o = make_options(user, "192.168.1.100", conn);
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    afsm_status status = afsm_session_create(engine, &o, &info);
    if (status == AFSM_OK)
        *id = info.session_id;
    return status;
}

static bool uuid_nil_test(const afsm_uuid *u)
{
    static const afsm_uuid nil;
    return memcmp(u, &nil, sizeof(nil)) == 0;
}

static bool deadline_passed(uint64_t deadline)
{
    return real_ns() > deadline;
}

/* Point lookups: every stable session by id, by connection and in batches. */
static void *point_reader(void *arg)
{
    race *r = arg;
    uint64_t deadline = real_ns() + READ_DEADLINE * SEC;
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    afsm_session_info batch_out[STABLE];
    afsm_status statuses[STABLE];
    for (int i = 0; i < STABLE; i++)
        afsm_session_info_init(&batch_out[i], AFSM_SESSION_INFO_VERSION);
    while (!atomic_load(&r->writer_done) && !deadline_passed(deadline)) {
        for (int i = 0; i < STABLE; i++) {
            afsm_status s = afsm_session_get(r->engine, &r->stable[i], &info);
            if (s != AFSM_OK || memcmp(&info.session_id, &r->stable[i], sizeof(afsm_uuid)) != 0)
                fail_once(r, "Get of stable session %d: %s", i, afsm_status_name(s));
            s = afsm_session_get_by_connection(r->engine, &r->stable_conn[i], &info);
            if (s != AFSM_OK || memcmp(&info.session_id, &r->stable[i], sizeof(afsm_uuid)) != 0)
                fail_once(r, "get by connection of stable session %d: %s", i, afsm_status_name(s));
        }
        assert_int_equal(afsm_session_get_batch(r->engine, r->stable, STABLE, batch_out, statuses), AFSM_OK);
        for (int i = 0; i < STABLE; i++)
            if (statuses[i] != AFSM_OK || memcmp(&batch_out[i].session_id, &r->stable[i], sizeof(afsm_uuid)) != 0)
                fail_once(r, "GetBatch item %d: %s", i, afsm_status_name(statuses[i]));
        atomic_fetch_add(&r->reads, 1);
    }
    if (!atomic_load(&r->writer_done))
        fail_once(r, "point reader still running at its deadline");
    return NULL;
}

/* Listings: the whole engine page by page, and each stable user's. */
static void *list_reader(void *arg)
{
    race *r = arg;
    uint64_t deadline = real_ns() + READ_DEADLINE * SEC;
    enum { PAGE = 64 };
    afsm_session_info *page = calloc(PAGE, sizeof(*page));
    assert_non_null(page);
    for (int i = 0; i < PAGE; i++)
        afsm_session_info_init(&page[i], AFSM_SESSION_INFO_VERSION);
    while (!atomic_load(&r->writer_done) && !deadline_passed(deadline)) {
        int seen[STABLE] = {0};
        afsm_list_filter f;
        afsm_list_filter_init(&f, AFSM_LIST_FILTER_VERSION);
        f.limit = PAGE;
        for (;;) {
            size_t count = 0;
            uint64_t total = 0;
            afsm_uuid next;
            afsm_status s = afsm_session_list(r->engine, &f, page, PAGE, &count, &total, &next);
            if (s != AFSM_OK) {
                fail_once(r, "List: %s", afsm_status_name(s));
                break;
            }
            for (size_t j = 0; j < count; j++)
                for (int i = 0; i < STABLE; i++)
                    seen[i] += memcmp(&page[j].session_id, &r->stable[i], sizeof(afsm_uuid)) == 0;
            if (uuid_nil_test(&next))
                break;
            f.cursor = next;
        }
        for (int i = 0; i < STABLE; i++)
            if (seen[i] != 1)
                fail_once(r, "List visited stable session %d %d times", i, seen[i]);
        for (int u = 0; u < STABLE_USERS; u++) {
            afsm_list_filter_init(&f, AFSM_LIST_FILTER_VERSION);
            f.limit = PAGE;
            f.user_id = r->stable_user[u];
            f.user_id_len = strlen(f.user_id);
            size_t count = 0;
            uint64_t total = 0;
            afsm_status s = afsm_session_list(r->engine, &f, page, PAGE, &count, &total, NULL);
            if (s != AFSM_OK || count != STABLE / STABLE_USERS)
                fail_once(r, "List of user %s: %s, %zu sessions", f.user_id, afsm_status_name(s), count);
        }
        atomic_fetch_add(&r->reads, 1);
    }
    if (!atomic_load(&r->writer_done))
        fail_once(r, "list reader still running at its deadline");
    free(page);
    return NULL;
}

static void readers_race_growth_and_rebuilds(unsigned shards)
{
    virtual_clock clock;
    race *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    pthread_mutex_init(&r->failure_lock, NULL);
    r->engine = open_engine_of(&clock, shards);
    for (int i = 0; i < STABLE; i++) {
        snprintf(r->stable_user[i], sizeof(r->stable_user[i]), "stable-%d", i % STABLE_USERS);
        assert_int_equal(create_for(r->engine, r->stable_user[i], &r->stable[i], &r->stable_conn[i]), AFSM_OK);
    }
    pthread_t point, list;
    assert_int_equal(pthread_create(&point, NULL, point_reader, r), 0);
    assert_int_equal(pthread_create(&list, NULL, list_reader, r), 0);
    /* The writer: each round grows the tables past their size (new users
     * too), then deletes everything it made, which leaves tombstones for
     * table_maintain and for the next round's inserts. It waits for the
     * readers' first pass so that they do race it. */
    assert_true(spin_until(&r->reads, 2, 30));
    afsm_uuid churn[CHURN], conn;
    /* At least ROUNDS rounds, and until each reader has made 20 passes
     * during them (the readers may be slow to get the CPU). */
    long reads_before = atomic_load(&r->reads);
    uint64_t deadline = real_ns() + READ_DEADLINE / 2 * SEC;
    int round;
    for (round = 0; round < ROUNDS || (atomic_load(&r->reads) < reads_before + 40 && !deadline_passed(deadline));
         round++) {
        for (int i = 0; i < CHURN; i++) {
            char user[32];
            snprintf(user, sizeof(user), "churn-%d-%d", round, i % 50);
            assert_int_equal(create_for(r->engine, user, &churn[i], &conn), AFSM_OK);
        }
        for (int i = 0; i < CHURN; i++)
            assert_int_equal(afsm_session_delete(r->engine, &churn[(i * 7) % CHURN], NULL, 0), AFSM_OK);
    }
    atomic_store(&r->writer_done, 1);
    print_message("%d writer rounds, %ld reader passes during them\n", round, atomic_load(&r->reads) - reads_before);
    assert_int_equal(pthread_join(point, NULL), 0);
    assert_int_equal(pthread_join(list, NULL), 0);
    if (atomic_load(&r->failures) != 0)
        fail_msg("%ld reader failures; first: %s", atomic_load(&r->failures), r->first_failure);
    afsm_counts counts;
    assert_int_equal(afsm_engine_counts(r->engine, &counts), AFSM_OK);
    assert_int_equal(counts.total, STABLE);
    assert_int_equal(afsm_engine_close(r->engine), AFSM_OK);
    pthread_mutex_destroy(&r->failure_lock);
    free(r);
}

static void test_readers_race_growth_and_rebuilds(void **state)
{
    (void)state;
    readers_race_growth_and_rebuilds(1);
    /* Four shards: a session's connection key (and its user) mostly in
     * another shard's tables, grown and cleaned under that shard's lock and
     * deferral record. */
    readers_race_growth_and_rebuilds(4);
}

/* Everything a reader can observe of the engine, for "unchanged" checks. */
static void expect_sessions(afsm_engine *engine, const afsm_uuid *ids, const afsm_uuid *conns, int n)
{
    afsm_counts counts;
    assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
    assert_int_equal(counts.total, (uint64_t)n);
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    for (int i = 0; i < n; i++) {
        assert_int_equal(afsm_session_get(engine, &ids[i], &info), AFSM_OK);
        assert_memory_equal(&info.session_id, &ids[i], sizeof(afsm_uuid));
        assert_int_equal(afsm_session_get_by_connection(engine, &conns[i], &info), AFSM_OK);
        assert_memory_equal(&info.session_id, &ids[i], sizeof(afsm_uuid));
    }
}

static size_t user_sessions(afsm_engine *engine, const char *user)
{
    afsm_session_info page[4] = {AFSM_SESSION_INFO_INIT, AFSM_SESSION_INFO_INIT, AFSM_SESSION_INFO_INIT,
                                 AFSM_SESSION_INFO_INIT};
    afsm_list_filter f;
    afsm_list_filter_init(&f, AFSM_LIST_FILTER_VERSION);
    f.limit = 4;
    f.user_id = user;
    f.user_id_len = strlen(user);
    size_t count = 0;
    uint64_t total = 0;
    assert_int_equal(afsm_session_list(engine, &f, page, 4, &count, &total, NULL), AFSM_OK);
    return (size_t)total;
}

/* capacity_hint 1 on one shard: 16 slots per table, grown at the 9th key.
 * The 9th create (a new user too) must grow all three tables; failing each
 * of its allocations in turn (on a fresh engine each time, so that what an
 * earlier attempt grew does not shift the sequence) must leave the engine
 * as it was: this reaches the session insert's rollback when the
 * connection table cannot grow. */
static void test_create_that_grows_fails_cleanly_at_every_allocation(void **state)
{
    (void)state;
    enum { BEFORE = 8 };
    afsm_status status = AFSM_ENOMEM;
    long k;
    for (k = 0; k < 64 && status == AFSM_ENOMEM; k++) {
        virtual_clock clock;
        afsm_engine *engine = open_small_engine(&clock);
        afsm_uuid ids[BEFORE + 1], conns[BEFORE + 1];
        char user[32];
        for (int i = 0; i < BEFORE; i++) {
            snprintf(user, sizeof(user), "grow-%d", i);
            assert_int_equal(create_for(engine, user, &ids[i], &conns[i]), AFSM_OK);
        }
        alloc_fail_after_on_this_thread(k);
        status = create_for(engine, "grow-new", &ids[BEFORE], &conns[BEFORE]);
        alloc_fail_after_on_this_thread(-1);
        if (status == AFSM_ENOMEM) {
            expect_sessions(engine, ids, conns, BEFORE);
            afsm_session_info info = AFSM_SESSION_INFO_INIT;
            assert_int_equal(afsm_session_get_by_connection(engine, &conns[BEFORE], &info), AFSM_ENOTFOUND);
            assert_int_equal(user_sessions(engine, "grow-new"), 0);
            /* Usable afterwards: the same create now succeeds. */
            assert_int_equal(create_for(engine, "grow-new", &ids[BEFORE], &conns[BEFORE]), AFSM_OK);
        } else {
            assert_int_equal(status, AFSM_OK);
        }
        expect_sessions(engine, ids, conns, BEFORE + 1);
        assert_int_equal(user_sessions(engine, "grow-new"), 1);
        assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    }
    assert_int_equal(status, AFSM_OK);
    print_message("the growing create makes %ld allocations\n", k - 1);
    assert_true(k - 1 >= 5); /* the record, the user entry and three maps at least */
}

static void count_failed_allocation(void *ctx)
{
    ++*(long *)ctx;
}

/* The slots of the one shard's sessions map (no other thread runs). */
static uint64_t session_map_slots(afsm_engine *engine)
{
    return atomic_load(&((mem_store *)engine->st)->shards[0].sessions.map)->mask + 1;
}

/* Deletes that drain a map to a sixteenth of its slots (or leave 64
 * tombstones) rebuild the tables; with every allocation failing the
 * rebuild cannot happen, and the delete must still succeed and leave
 * correct tables, and the next delete (allocation back) rebuild.
 * Only allocations fail here that a delete makes, so the deletes without
 * memory must have seen some fail (a rebuild tried), and the map must be
 * replaced only once memory is back: else this tests nothing of it. */
static void test_delete_that_rebuilds_succeeds_without_memory(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_small_engine(&clock);
    enum { N = 160 };
    afsm_uuid ids[N], conns[N];
    char user[32];
    for (int i = 0; i < N; i++) {
        snprintf(user, sizeof(user), "del-%d", i);
        assert_int_equal(create_for(engine, user, &ids[i], &conns[i]), AFSM_OK);
    }
    int left = N;
    uint64_t grown = session_map_slots(engine);
    long failed = 0;
    /* 140 deletes without memory (the 160 keys grew the map to 512 slots:
     * from 32 keys left each delete tries to shrink it; removals leave
     * empty slots more often than tombstones, so these alone may never
     * reach 64), then 10 with it back. */
    const int stop_at[2] = {20, 10};
    for (int round = 0; round < 2; round++) {
        alloc_fail_observe(count_failed_allocation, &failed);
        alloc_fail_after_on_this_thread(round == 0 ? 0 : -1);
        while (left > stop_at[round]) {
            left--;
            assert_int_equal(afsm_session_delete(engine, &ids[left], NULL, 0), AFSM_OK);
            afsm_session_info info = AFSM_SESSION_INFO_INIT;
            assert_int_equal(afsm_session_get(engine, &ids[left], &info), AFSM_ENOTFOUND);
        }
        alloc_fail_after_on_this_thread(-1);
        alloc_fail_observe(NULL, NULL);
        expect_sessions(engine, ids, conns, left);
        if (round == 0) {
            if (failed == 0)
                fail_msg("%d deletes without memory tried no rebuild (no allocation failed)", N - left);
            assert_int_equal(session_map_slots(engine), grown);
        }
    }
    if (session_map_slots(engine) >= grown)
        fail_msg("the deletes with memory back left the map at %llu slots (grown to %llu for %d keys, %d left)",
                 (unsigned long long)session_map_slots(engine), (unsigned long long)grown, N, left);
    /* Usable afterwards: the removed ones come back (new sessions). */
    for (int i = left; i < N; i++) {
        snprintf(user, sizeof(user), "del-%d", i);
        assert_int_equal(create_for(engine, user, &ids[i], &conns[i]), AFSM_OK);
    }
    expect_sessions(engine, ids, conns, N);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* ---- the cost of tombstone clean-up (table_maintain) ---------------------- */

static uint64_t map_slots(table *t)
{
    return atomic_load(&t->map)->mask + 1;
}

/* Removes keys[from..to) as the engine's delete does: table_maintain after
 * each removal. Returns how many maps were replaced (deferred frees). */
static uint64_t remove_and_maintain(table *t, const afsm_uuid *keys, int from, int to)
{
    uint64_t before = epoch_pending();
    for (int i = from; i < to; i++) {
        assert_true(table_remove(t, &keys[i]));
        assert_true(table_maintain(t));
    }
    return epoch_pending() - before;
}

/* A spike grows a table to 8192 slots; once it has drained to 8 keys the
 * clean-up must have sized the map for few keys again. Otherwise every 64
 * removals rebuild (allocate, zero and scan) the spike's whole map for a
 * handful of keys, and its memory is never given back. */
static void test_maintain_after_a_spike_sizes_the_map_for_its_keys(void **state)
{
    (void)state;
    ck_epoch_record_t *record = epoch_writer_record();
    assert_non_null(record);
    enum { SPIKE = 4096, KEEP = 8 };
    afsm_uuid *keys = calloc(SPIKE, sizeof(*keys));
    assert_non_null(keys);
    table t;
    assert_true(table_init(&t, TABLE_KEY_UUID, 16, 7, record));
    for (int i = 0; i < SPIKE; i++) {
        afsm_uuid_v7(&keys[i]);
        assert_int_equal(table_insert(&t, &keys[i]), TABLE_OK);
    }
    assert_true(map_slots(&t) >= 2 * SPIKE);
    remove_and_maintain(&t, keys, KEEP, SPIKE);
    assert_int_equal(table_count(&t), KEEP);
    /* Clean-up waits for 64 tombstones: room for those and the keys at a
     * load of 1/4 is at most 512 slots. */
    if (map_slots(&t) > 512)
        fail_msg("%d keys left in a map of %llu slots after the spike", KEEP, (unsigned long long)map_slots(&t));
    for (int i = 0; i < KEEP; i++)
        assert_ptr_equal(table_get(&t, &keys[i]), &keys[i]);
    table_destroy(&t);
    free(keys);
    epoch_writer_retire(record);
}

/* A table presized for many keys (capacity_hint) holding few, under churn:
 * its probes are short whatever the tombstones (the load stays low), so
 * rebuilding its whole map every 64 removals buys nothing. Replacing a map
 * of S slots must wait for at least S/8 removals (amortised O(1) each). */
static void test_maintain_of_a_lightly_loaded_map_is_amortised(void **state)
{
    (void)state;
    ck_epoch_record_t *record = epoch_writer_record();
    assert_non_null(record);
    enum { SLOTS = 65536, LIVE = 10, CYCLES = 8000 };
    afsm_uuid *keys = calloc(LIVE + CYCLES, sizeof(*keys));
    assert_non_null(keys);
    table t;
    assert_true(table_init(&t, TABLE_KEY_UUID, SLOTS, 7, record));
    assert_int_equal(map_slots(&t), SLOTS);
    for (int i = 0; i < LIVE + CYCLES; i++)
        afsm_uuid_v7(&keys[i]);
    for (int i = 0; i < LIVE; i++)
        assert_int_equal(table_insert(&t, &keys[i]), TABLE_OK);
    /* Each cycle: one new key in, the oldest out. */
    uint64_t replaced = 0;
    for (int i = 0; i < CYCLES; i++) {
        assert_int_equal(table_insert(&t, &keys[LIVE + i]), TABLE_OK);
        replaced += remove_and_maintain(&t, keys, i, i + 1);
    }
    assert_int_equal(table_count(&t), LIVE);
    uint64_t allowed = CYCLES / (SLOTS / 8) + 1;
    if (replaced > allowed)
        fail_msg("%llu maps of %d slots rebuilt for %d removals among %d keys (at most %llu expected)",
                 (unsigned long long)replaced, SLOTS, CYCLES, LIVE, (unsigned long long)allowed);
    for (int i = CYCLES; i < LIVE + CYCLES; i++)
        assert_ptr_equal(table_get(&t, &keys[i]), &keys[i]);
    table_destroy(&t);
    free(keys);
    epoch_writer_retire(record);
}

/* ---- GetBatch's staged lookup against the single Get ---------------------- */

static unsigned long constant_hash(const void *bytes, size_t len, unsigned long seed)
{
    (void)bytes;
    (void)len;
    (void)seed;
    return 5;
}

/* Every item of a batch says what a Get of its id says: present, deleted,
 * never made, nil, repeated; across shards and groups (more than 16 ids),
 * with real hashes and with every key on one hash. */
static void batch_matches_single_gets(void)
{
    virtual_clock clock;
    afsm_engine *engine = open_virtual_engine(&clock, NULL);
    enum { MADE = 40, N = 60 };
    afsm_uuid made[MADE], conn, ids[N];
    for (int i = 0; i < MADE; i++)
        assert_int_equal(create_for(engine, i % 2 ? "odd" : "even", &made[i], &conn), AFSM_OK);
    for (int i = 0; i < MADE; i += 4)
        assert_int_equal(afsm_session_delete(engine, &made[i], NULL, 0), AFSM_OK);
    for (int i = 0; i < N; i++) {
        if (i < MADE)
            ids[i] = made[(i * 7) % MADE];
        else if (i < MADE + 8)
            ids[i] = made[i - MADE]; /* repeats */
        else if (i < MADE + 16)
            afsm_uuid_v7(&ids[i]); /* never made */
        else
            memset(&ids[i], 0, sizeof(ids[i])); /* nil */
    }
    afsm_session_info batch[N], single = AFSM_SESSION_INFO_INIT;
    afsm_status statuses[N];
    for (int i = 0; i < N; i++)
        afsm_session_info_init(&batch[i], AFSM_SESSION_INFO_VERSION);
    assert_int_equal(afsm_session_get_batch(engine, ids, N, batch, statuses), AFSM_OK);
    int found = 0;
    for (int i = 0; i < N; i++) {
        afsm_status want = afsm_session_get(engine, &ids[i], &single);
        if (statuses[i] != want)
            fail_msg("item %d: GetBatch says %s, Get says %s", i, afsm_status_name(statuses[i]),
                     afsm_status_name(want));
        if (want == AFSM_OK) {
            found++;
            assert_memory_equal(&batch[i].session_id, &ids[i], sizeof(afsm_uuid));
            assert_memory_equal(&batch[i].connection_id, &single.connection_id, sizeof(afsm_uuid));
            assert_string_equal(batch[i].user_id, single.user_id);
            assert_int_equal(batch[i].state, single.state);
        }
    }
    assert_true(found > 20 && found < N - 20);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

static void test_batch_matches_single_gets(void **state)
{
    (void)state;
    batch_matches_single_gets();
    table_hash_override = constant_hash;
    batch_matches_single_gets();
    table_hash_override = NULL;
}

/* ---- close after threads that grew and cleaned the tables ----------------- */

typedef struct churner {
    afsm_engine *engine;
    int index;
} churner;

/* Grows the tables (maps replaced, the old ones deferred), deletes it all
 * (clean-up rebuilds, deferred too), and exits with them still pending. */
static void *churn_and_exit(void *arg)
{
    churner *c = arg;
    enum { MANY = 150 };
    afsm_uuid ids[MANY], conn;
    afsm_session_info info = AFSM_SESSION_INFO_INIT;
    for (int i = 0; i < MANY; i++) {
        char user[32];
        snprintf(user, sizeof(user), "t%d-%d", c->index, i % 40);
        assert_int_equal(create_for(c->engine, user, &ids[i], &conn), AFSM_OK);
    }
    for (int i = 0; i < MANY; i++) {
        assert_int_equal(afsm_session_get(c->engine, &ids[i], &info), AFSM_OK);
        assert_int_equal(afsm_session_delete(c->engine, &ids[i], NULL, 0), AFSM_OK);
    }
    return NULL;
}

/* Engines opened, grown by threads that then exit, and closed, again and
 * again: close frees every map still waiting for the epoch (the process'
 * pending frees come back to where they were; LSan sees no leak). */
static void test_close_frees_maps_deferred_by_exited_threads(void **state)
{
    (void)state;
    uint64_t pending_before = epoch_pending();
    for (int rep = 0; rep < 20; rep++) {
        virtual_clock clock;
        afsm_engine *engine = open_small_engine(&clock);
        pthread_t threads[2];
        churner c[2];
        for (int i = 0; i < 2; i++) {
            c[i] = (churner){engine, i};
            assert_int_equal(pthread_create(&threads[i], NULL, churn_and_exit, &c[i]), 0);
        }
        for (int i = 0; i < 2; i++)
            assert_int_equal(pthread_join(threads[i], NULL), 0);
        assert_true(epoch_pending() > pending_before);
        afsm_counts counts;
        assert_int_equal(afsm_engine_counts(engine, &counts), AFSM_OK);
        assert_int_equal(counts.total, 0);
        assert_int_equal(afsm_engine_close(engine), AFSM_OK);
        assert_int_equal(epoch_pending(), pending_before);
    }
}

/* A table churning just under half load (each insert matched by a
 * removal, as sessions come and go) cleans its tombstones by rebuilding at
 * the same size when keys and tombstones pass three quarters (1538401).
 * Lock-free readers racing those rebuilds must find every key present
 * throughout, and their probes must end (a quarter of the slots stays
 * empty); the map must keep its size. */
enum { HALF_STABLE = 100, HALF_CHURN = 409, HALF_POOL = 2048, HALF_REBUILDS = 20 };

typedef struct half_race {
    table t;
    afsm_uuid stable[HALF_STABLE];
    afsm_uuid absent; /* never inserted */
    _Atomic long writer_done;
    _Atomic long passes;
    _Atomic long misses;
} half_race;

static void *half_reader(void *arg)
{
    half_race *h = arg;
    uint64_t deadline = real_ns() + (uint64_t)READ_DEADLINE * SEC;
    while (!atomic_load(&h->writer_done) && !deadline_passed(deadline)) {
        for (int i = 0; i < HALF_STABLE; i++) {
            afsm_uuid copy = h->stable[i];
            ck_epoch_record_t *record = epoch_enter();
            if (record == NULL) {
                atomic_fetch_add(&h->misses, 1);
                return NULL;
            }
            if (table_get(&h->t, &copy) != &h->stable[i])
                atomic_fetch_add(&h->misses, 1);
            if (table_get(&h->t, &h->absent) != NULL)
                atomic_fetch_add(&h->misses, 1);
            epoch_leave(record);
        }
        atomic_fetch_add(&h->passes, 1);
    }
    return NULL;
}

static void test_readers_race_same_size_rebuilds_under_churn(void **state)
{
    (void)state;
    static half_race h;
    static afsm_uuid pool[HALF_POOL];
    ck_epoch_record_t *defer = epoch_writer_record();
    assert_non_null(defer);
    assert_true(table_init(&h.t, TABLE_KEY_UUID, 1024, 5, defer));
    atomic_store(&h.writer_done, 0);
    atomic_store(&h.passes, 0);
    atomic_store(&h.misses, 0);
    afsm_uuid_v7(&h.absent);
    for (int i = 0; i < HALF_STABLE; i++) {
        afsm_uuid_v7(&h.stable[i]);
        assert_int_equal(table_insert(&h.t, &h.stable[i]), TABLE_OK);
    }
    for (int i = 0; i < HALF_POOL; i++)
        afsm_uuid_v7(&pool[i]);
    /* 509 keys in 1024 slots: one insert short of half, where the churn
     * below keeps it. */
    for (int i = 0; i < HALF_CHURN; i++)
        assert_int_equal(table_insert(&h.t, &pool[i]), TABLE_OK);
    pthread_t reader;
    assert_int_equal(pthread_create(&reader, NULL, half_reader, &h), 0);
    assert_true(spin_until(&h.passes, 1, 30));
    long passes_before = atomic_load(&h.passes);
    int rebuilds = 0;
    uint64_t deadline = real_ns() + READ_DEADLINE / 2 * SEC;
    /* The oldest churn key out, the next one in (pool keys come back once
     * the ring wraps, into whatever slot their probe finds). */
    for (long n = 0;
         (rebuilds < HALF_REBUILDS || atomic_load(&h.passes) < passes_before + 20) && !deadline_passed(deadline); n++) {
        table_map *before = atomic_load(&h.t.map);
        assert_true(table_remove(&h.t, &pool[n % HALF_POOL]));
        assert_true(table_maintain(&h.t));
        assert_int_equal(table_insert(&h.t, &pool[(n + HALF_CHURN) % HALF_POOL]), TABLE_OK);
        table_map *after = atomic_load(&h.t.map);
        assert_int_equal(after->mask, 1023);
        rebuilds += after != before;
    }
    atomic_store(&h.writer_done, 1);
    assert_int_equal(pthread_join(reader, NULL), 0);
    print_message("%d same-size rebuilds, %ld reader passes during them\n", rebuilds,
                  atomic_load(&h.passes) - passes_before);
    assert_int_equal(atomic_load(&h.misses), 0);
    assert_true(rebuilds >= HALF_REBUILDS);
    assert_true(atomic_load(&h.passes) > passes_before);
    assert_int_equal(table_count(&h.t), HALF_STABLE + HALF_CHURN);
    table_destroy(&h.t);
    epoch_writer_retire(defer);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_readers_race_growth_and_rebuilds),
        cmocka_unit_test(test_create_that_grows_fails_cleanly_at_every_allocation),
        cmocka_unit_test(test_delete_that_rebuilds_succeeds_without_memory),
        cmocka_unit_test(test_maintain_after_a_spike_sizes_the_map_for_its_keys),
        cmocka_unit_test(test_maintain_of_a_lightly_loaded_map_is_amortised),
        cmocka_unit_test(test_batch_matches_single_gets),
        cmocka_unit_test(test_close_frees_maps_deferred_by_exited_threads),
        cmocka_unit_test(test_readers_race_same_size_rebuilds_under_churn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
