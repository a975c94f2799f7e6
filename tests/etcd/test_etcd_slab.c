/*
 * test_etcd_slab.c: a reviewer's attack on issue 15's record slab (merge
 * 48dc029) where the etcd store embeds the memory store as its replica.
 * The replica's advance never runs: its removals are applied by the watch
 * (or by the writing thread), and what they free is given back by
 * mem_store_tend, which the etcd store's advance calls. Checked against a
 * real etcd (etcd_harness.h): Gets racing the deletes see a session whole
 * or not at all, never another session's fields under the id asked for,
 * and once the store is advanced every slot of the replica's slabs but the
 * live sessions' has come back.
 *
 * Every wait is a poll with a deadline; no sleeps.
 */
#include "test_support.h"

#include <pthread.h>

#include "engine.h"
#include "etcd/etcd_store.h"
#include "etcd_test_support.h"
#include "mem/mem_store.h"
#include "mem/shard.h"
#include "mem/slab.h"

#define ETCD_SESSIONS 120
#define ETCD_READERS  2

/* As test_review15get.c: slots handed out and not given back. */
static size_t replica_slots_in_use(afsm_engine *engine)
{
    mem_store *ms = (mem_store *)((etcd_store *)engine->st)->replica;
    size_t n = 0;
    for (unsigned i = 0; i <= ms->shard_mask; i++) {
        slab *sl = &ms->shards[i].records;
        size_t free_count = 0;
        for (void *p = sl->free; p != NULL; memcpy(&p, p, sizeof(p)))
            free_count++;
        size_t untouched = (size_t)(sl->end - sl->next) / SLAB_SLOT_BYTES;
        n += sl->chunk_count * SLAB_CHUNK_SLOTS - free_count - sl->held_count - untouched;
    }
    return n;
}

typedef struct etcd_ctx {
    afsm_engine *engine;
    afsm_uuid ids[ETCD_SESSIONS];
    char users[ETCD_SESSIONS][48];
    _Atomic long stop;
    _Atomic long found;
    _Atomic long failures;
    const char *failure;
} etcd_ctx;

static void etcd_fail(etcd_ctx *c, const char *what)
{
    if (atomic_fetch_add(&c->failures, 1) == 0)
        c->failure = what;
}

static void *etcd_reader(void *arg)
{
    etcd_ctx *c = arg;
    uint64_t deadline = real_ns() + 120 * SEC;
    for (unsigned i = 0; !atomic_load(&c->stop) && real_ns() < deadline; i++) {
        unsigned j = i % ETCD_SESSIONS;
        afsm_session_info got;
        memset(&got, 0x5a, sizeof(got));
        got.version = AFSM_SESSION_INFO_VERSION;
        afsm_status st = afsm_session_get(c->engine, &c->ids[j], &got);
        if (st == AFSM_ENOTFOUND)
            continue;
        if (st != AFSM_OK) {
            etcd_fail(c, "get failed");
            continue;
        }
        atomic_fetch_add(&c->found, 1);
        size_t len = strlen(c->users[j]);
        if (memcmp(&got.session_id, &c->ids[j], sizeof(afsm_uuid)) != 0)
            etcd_fail(c, "a get returned another session than the id asked for");
        else if (got.user_id_len != len || memcmp(got.user_id, c->users[j], len + 1) != 0)
            etcd_fail(c, "a copy's user id is another session's");
    }
    return NULL;
}

static void test_etcd_replica_returns_its_slots(void **state)
{
    (void)state;
    afsm_config cfg;
    etcd_test_config(&cfg, "/r15get/");
    cfg.default_timeout_ms = 60000;
    cfg.reaper = AFSM_REAPER_MANUAL;
    cfg.shard_count = 2;
    etcd_ctx *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    assert_int_equal(afsm_engine_open(&cfg, &c->engine), AFSM_OK);
    for (int i = 0; i < ETCD_SESSIONS; i++) {
        snprintf(c->users[i], sizeof(c->users[i]), "%.*s", 1 + i % 40,
                 "etcd-user-abcdefghijklmnopqrstuvwxyz0123456789");
        c->users[i][0] = (char)('A' + i % 26);
        afsm_uuid conn;
        afsm_create_options o = make_options(c->users[i], "192.0.2.8", &conn);
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_session_create(c->engine, &o, &info), AFSM_OK);
        c->ids[i] = info.session_id;
    }
    pthread_t readers[ETCD_READERS];
    for (int i = 0; i < ETCD_READERS; i++)
        assert_int_equal(pthread_create(&readers[i], NULL, etcd_reader, c), 0);
    /* Deleted in two halves, an advance between: slots freed by the first
     * half's tend are reused by nothing here, but the readers race both. */
    for (int i = 0; i < ETCD_SESSIONS; i++) {
        assert_int_equal(afsm_session_delete(c->engine, &c->ids[i], NULL, 0), AFSM_OK);
        if (i == ETCD_SESSIONS / 2) {
            size_t expired;
            assert_int_equal(afsm_engine_advance(c->engine, 0, &expired), AFSM_OK);
        }
    }
    atomic_store(&c->stop, 1);
    for (int i = 0; i < ETCD_READERS; i++)
        pthread_join(readers[i], NULL);
    if (atomic_load(&c->failures) != 0)
        fail_msg("%ld failures; first: %s", atomic_load(&c->failures), c->failure);
    assert_true(atomic_load(&c->found) > 0);
    /* The deletes have reached the replica (the writer applies its own). */
    afsm_counts counts;
    assert_int_equal(afsm_engine_counts(c->engine, &counts), AFSM_OK);
    assert_int_equal(counts.total, 0);
    size_t expired;
    assert_int_equal(afsm_engine_advance(c->engine, 0, &expired), AFSM_OK);
    size_t used = replica_slots_in_use(c->engine);
    if (used != 0)
        fail_msg("%zu replica slots still in use with no session left", used);
    assert_int_equal(afsm_engine_close(c->engine), AFSM_OK);
    free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_etcd_replica_returns_its_slots),
    };
    return cmocka_run_group_tests_name("review of 48dc029: the etcd replica's slabs", tests, start_one, stop_cluster);
}
