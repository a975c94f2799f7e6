/*
 * test_user_ids.c: a user id comes back whole, whatever its length and
 * bytes, through every call that reports it. The memory store keeps an id
 * of up to 16 bytes in the session record and a longer one in the user's
 * index entry (mem/index.h), so the lengths around that limit and the
 * extremes are each tried: copies (create, get, by connection, batch, list,
 * token validation), events (created, deleted, expired), delete by user,
 * evict-oldest, and the indexes after each step.
 */
#include "mem_inspect.h"

#include <stdlib.h>

typedef struct seen_event {
    uint32_t type;
    afsm_uuid id;
    size_t user_id_len;
    char user_id[AFSM_USER_ID_MAX + 1];
} seen_event;

static struct {
    seen_event events[64];
    size_t count;
} seen;

static void record_event(void *ctx, const afsm_event *ev)
{
    (void)ctx;
    assert_true(seen.count < sizeof(seen.events) / sizeof(seen.events[0]));
    seen_event *e = &seen.events[seen.count++];
    e->type = ev->type;
    e->id = ev->session_id;
    e->user_id_len = ev->user_id_len;
    memcpy(e->user_id, ev->user_id, ev->user_id_len);
}

/* The one event of type for id; fails unless there is exactly one. */
static const seen_event *event_of(uint32_t type, const afsm_uuid *id)
{
    const seen_event *found = NULL;
    for (size_t i = 0; i < seen.count; i++) {
        if (seen.events[i].type == type && memcmp(&seen.events[i].id, id, sizeof(*id)) == 0) {
            assert_null(found);
            found = &seen.events[i];
        }
    }
    assert_non_null(found);
    return found;
}

static void assert_user(const char *got, size_t got_len, const char *want, size_t want_len)
{
    assert_int_equal(got_len, want_len);
    assert_memory_equal(got, want, want_len);
}

/* info's id is want, NUL-terminated. */
static void assert_info_user(const afsm_session_info *info, const char *want, size_t want_len)
{
    assert_user(info->user_id, info->user_id_len, want, want_len);
    assert_int_equal(info->user_id[want_len], '\0');
}

/* An id of len bytes, none NUL; kind picks the bytes: letters, 0xff (the
 * highest byte, which an inline id's length is read from), or 0x01. */
static void make_id(char *id, size_t len, int kind)
{
    for (size_t i = 0; i < len; i++)
        id[i] = kind == 0 ? (char)('a' + i % 26) : kind == 1 ? (char)0xff : (char)0x01;
    id[len] = '\0';
}

static const size_t lengths[] = {1, 7, 8, 9, 15, 16, 17, 24, 255, AFSM_USER_ID_MAX};
#define LENGTHS (sizeof(lengths) / sizeof(lengths[0]))

/* Two sessions per user id: every copy reports the id, the user's list
 * holds both, delete by user takes both, and an expiry reports it. */
static void every_length_round_trips(int kind)
{
    virtual_clock clock;
    afsm_config cfg = {.on_event = record_event, .default_timeout_ms = 60000};
    afsm_engine *engine = open_virtual_engine(&clock, &cfg);
    seen.count = 0;
    static char ids[LENGTHS][AFSM_USER_ID_MAX + 1];
    afsm_session_info made[LENGTHS][2];
    afsm_uuid conns[LENGTHS][2];
    for (size_t u = 0; u < LENGTHS; u++) {
        make_id(ids[u], lengths[u], kind);
        /* Distinct ids of one length: the last byte names the user. */
        ids[u][lengths[u] - 1] = (char)('A' + u);
        for (int k = 0; k < 2; k++) {
            afsm_create_options o = make_options("x", "10.1.2.3", &conns[u][k]);
            o.user_id = ids[u];
            o.user_id_len = lengths[u];
            afsm_session_info_init(&made[u][k], AFSM_SESSION_INFO_VERSION);
            assert_int_equal(afsm_session_create(engine, &o, &made[u][k]), AFSM_OK);
            assert_info_user(&made[u][k], ids[u], lengths[u]);
            const seen_event *ev = event_of(AFSM_EVENT_CREATED, &made[u][k].session_id);
            assert_user(ev->user_id, ev->user_id_len, ids[u], lengths[u]);
        }
    }
    assert_int_equal(engine_check_indexes(engine, 0), 2 * LENGTHS);

    afsm_uuid batch_ids[LENGTHS];
    afsm_session_info batch[LENGTHS];
    afsm_status statuses[LENGTHS];
    for (size_t u = 0; u < LENGTHS; u++) {
        afsm_session_info copy = AFSM_SESSION_INFO_INIT;
        memset(copy.user_id, 0x5a, sizeof(copy.user_id)); /* a NUL must be written, not found */
        assert_int_equal(afsm_session_get(engine, &made[u][0].session_id, &copy), AFSM_OK);
        assert_info_user(&copy, ids[u], lengths[u]);
        afsm_session_info by_conn = AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_session_get_by_connection(engine, &conns[u][1], &by_conn), AFSM_OK);
        assert_info_user(&by_conn, ids[u], lengths[u]);
        char token[AFSM_TOKEN_SIZE];
        assert_int_equal(afsm_token_issue(engine, &made[u][1].session_id, 0, token, sizeof(token), NULL), AFSM_OK);
        afsm_session_info validated = AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_token_validate(engine, token, strlen(token), NULL, 0, &validated), AFSM_OK);
        assert_info_user(&validated, ids[u], lengths[u]);
        batch_ids[u] = made[u][u % 2].session_id;
        afsm_session_info_init(&batch[u], AFSM_SESSION_INFO_VERSION);
        afsm_session_info page[3] = {AFSM_SESSION_INFO_INIT, AFSM_SESSION_INFO_INIT, AFSM_SESSION_INFO_INIT};
        size_t n;
        uint64_t total;
        assert_int_equal(list_user_page(engine, ids[u], page, 3, &n, &total), AFSM_OK); /* ids hold no NUL */
        assert_int_equal(n, 2);
        for (size_t i = 0; i < n; i++)
            assert_info_user(&page[i], ids[u], lengths[u]);
    }
    assert_int_equal(afsm_session_get_batch(engine, batch_ids, LENGTHS, batch, statuses), AFSM_OK);
    for (size_t u = 0; u < LENGTHS; u++) {
        assert_int_equal(statuses[u], AFSM_OK);
        assert_info_user(&batch[u], ids[u], lengths[u]);
    }

    /* Delete by user: the even users' sessions, reported with their ids. */
    for (size_t u = 0; u < LENGTHS; u += 2) {
        size_t deleted = 0;
        assert_int_equal(afsm_session_delete_by_user(engine, ids[u], lengths[u], NULL, 0, &deleted), AFSM_OK);
        assert_int_equal(deleted, 2);
        for (int k = 0; k < 2; k++) {
            const seen_event *ev = event_of(AFSM_EVENT_DELETED, &made[u][k].session_id);
            assert_user(ev->user_id, ev->user_id_len, ids[u], lengths[u]);
        }
    }
    assert_int_equal(engine_check_indexes(engine, 0), LENGTHS);

    /* The odd users' sessions expire, reported with their ids; the user
     * entries go with them. */
    virtual_clock_set(&clock, 1000 * SEC + 61 * SEC);
    size_t expired = 0;
    assert_int_equal(afsm_engine_advance(engine, 1000 * SEC + 61 * SEC, &expired), AFSM_OK);
    assert_int_equal(expired, LENGTHS);
    for (size_t u = 1; u < LENGTHS; u += 2) {
        for (int k = 0; k < 2; k++) {
            const seen_event *ev = event_of(AFSM_EVENT_EXPIRED, &made[u][k].session_id);
            assert_user(ev->user_id, ev->user_id_len, ids[u], lengths[u]);
        }
    }
    assert_int_equal(engine_check_indexes(engine, 0), 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

static void test_letters(void **state)
{
    (void)state;
    every_length_round_trips(0);
}

static void test_high_bytes(void **state)
{
    (void)state;
    every_length_round_trips(1);
}

static void test_low_bytes(void **state)
{
    (void)state;
    every_length_round_trips(2);
}

/* Evict-oldest finds the user's entry by the record's inline id or by its
 * pointer alike: the cap holds for a short and a long id, and the evicted
 * session's DELETED event names its user. */
static void test_evict_oldest_for_short_and_long_ids(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_config cfg;
    virtual_config(&clock, &cfg);
    cfg.max_sessions_per_user = 2;
    cfg.limit_policy = AFSM_LIMIT_EVICT_OLDEST;
    cfg.on_event = record_event;
    afsm_engine *engine = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    seen.count = 0;
    char long_id[41];
    make_id(long_id, 40, 0);
    const char *users[] = {"short-user", long_id};
    for (int u = 0; u < 2; u++) {
        afsm_session_info first = create_session(engine, users[u]);
        (void)create_session(engine, users[u]);
        (void)create_session(engine, users[u]);
        const seen_event *ev = event_of(AFSM_EVENT_DELETED, &first.session_id);
        assert_user(ev->user_id, ev->user_id_len, users[u], strlen(users[u]));
        afsm_session_info copy = AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_session_get(engine, &first.session_id, &copy), AFSM_ENOTFOUND);
    }
    assert_int_equal(engine_check_indexes(engine, 2), 4);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
}

/* A callback of one expiry group's events deletes the sessions the wheel
 * already handed to the next group, each its long-id user's only one, and
 * advances the engine (which frees their entries through the epoch: no
 * thread is in a section while callbacks run). The next group must not
 * read those entries: a removed session's entry is read only after its
 * record is seen not removed (under ASan a read of a freed entry fails). */
#define GROUPED 40 /* more than one settle group (32, mem/expiry.c) */
static struct {
    afsm_engine *engine;
    afsm_uuid ids[GROUPED];
    int deleted;
} cut;

static void delete_the_rest(void *ctx, const afsm_event *ev)
{
    (void)ctx;
    record_event(NULL, ev);
    if (ev->type != AFSM_EVENT_EXPIRED || cut.deleted >= 0)
        return;
    cut.deleted = 0;
    for (int i = 0; i < GROUPED; i++)
        cut.deleted += afsm_session_delete(cut.engine, &cut.ids[i], "cut", 3) == AFSM_OK;
    uint64_t now = 0;
    assert_int_equal(afsm_engine_now(cut.engine, &now), AFSM_OK);
    assert_int_equal(afsm_engine_advance(cut.engine, now, NULL), AFSM_OK);
}

static void test_expiry_group_skips_entries_a_callback_freed(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_config cfg;
    virtual_config(&clock, &cfg);
    cfg.shard_count = 1; /* one home shard: the sessions form one batch */
    cfg.on_event = delete_the_rest;
    assert_int_equal(afsm_engine_open(&cfg, &cut.engine), AFSM_OK);
    seen.count = 0;
    cut.deleted = -1;
    for (int i = 0; i < GROUPED; i++) {
        char user[41];
        snprintf(user, sizeof(user), "user-%02d-of-a-long-id-longer-than-16", i);
        afsm_uuid conn;
        afsm_create_options o = make_options(user, "10.1.2.3", &conn);
        o.timeout_ms = 1000;
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_session_create(cut.engine, &o, &info), AFSM_OK);
        cut.ids[i] = info.session_id;
    }
    seen.count = 0;
    virtual_clock_set(&clock, 1002 * SEC);
    uint64_t now = 0;
    assert_int_equal(afsm_engine_now(cut.engine, &now), AFSM_OK);
    size_t expired = 0;
    assert_int_equal(afsm_engine_advance(cut.engine, now, &expired), AFSM_OK);
    /* The first group expired its sessions; the callback deleted the rest. */
    assert_int_equal(expired + (size_t)cut.deleted, GROUPED);
    assert_true(cut.deleted > 0);
    for (int i = 0; i < GROUPED; i++) {
        const seen_event *ended = NULL;
        for (size_t k = 0; k < seen.count; k++)
            if (memcmp(&seen.events[k].id, &cut.ids[i], sizeof(cut.ids[i])) == 0 &&
                seen.events[k].type != AFSM_EVENT_CREATED) {
                assert_null(ended); /* one end per session */
                ended = &seen.events[k];
            }
        assert_non_null(ended);
    }
    assert_int_equal(engine_check_indexes(cut.engine, 0), 0);
    assert_int_equal(afsm_engine_close(cut.engine), AFSM_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_letters),
        cmocka_unit_test(test_high_bytes),
        cmocka_unit_test(test_low_bytes),
        cmocka_unit_test(test_evict_oldest_for_short_and_long_ids),
        cmocka_unit_test(test_expiry_group_skips_entries_a_callback_freed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
