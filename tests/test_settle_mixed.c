/*
 * test_settle_mixed.c: a reviewer's attack on cd79ceb (an expiry group
 * finds each removal's place in stages, only for the items seen not
 * removed; an inline user id is hashed once, from the record's zero-padded
 * words, by table_hash_padded16). It passed on cd79ceb and stays to keep
 * what it checks:
 *
 *  1. table_hash_padded16 of an id held zero padded is table_hash of the
 *     same string key, for every length 1..16 and any bytes, with no hook
 *     and with table_hash_override hooks (the hook sees the same len bytes
 *     either way); keys over 16 bytes still reach the hook whole.
 *  2. In an engine, for every inline length and under several hooks (one
 *     maps every key to one slot, so only the key comparison tells ids
 *     apart, ids that are prefixes of each other included): a session's
 *     index_entry_hash is its entry's table_hash, index_entry_of finds the
 *     entry; deletes (mem_remove's hashed prefetch) and expiry groups
 *     (settle_group) leave no key, no slot and no entry behind.
 *  3. One home shard's batch of 60 sessions (two settle groups), long and
 *     inline ids mixed (unique users whose last session goes, the
 *     emptied-entry drop; shared users; ids of exactly 16 and 17 bytes),
 *     outcomes EXPIRED, CLOSED and IDLE in the same groups. The first
 *     group's first end event's callback changes every session not ended
 *     yet: deletes it; deletes and restores it (same id and connection, a
 *     new record); deletes its user's sessions; deletes it and creates a
 *     new session for its user (a new entry for a unique user); or leaves
 *     it. Then it advances (nested), which frees the retired entries. The
 *     second group must settle each item exactly once: every life ends
 *     once, the indexes hold exactly the live sessions, and at the end no
 *     key, slot or entry is left. With the hooks of 2 as well. (At 13ccad9,
 *     before cd79ceb, ASan reports this one's heap-use-after-free in
 *     mem_user_shard_index from settle_group.)
 *  4. test_expiry_place.c's window (a hook stops the advancing thread in
 *     an item's place, a helper thread changes the store) with long and
 *     inline ids, each its user's only session, the helper recreating
 *     deleted users and advancing the engine itself (its reclaim frees
 *     every retired entry no section protects), stopped in the first
 *     group, between locating the places and finding the entries (K = 32),
 *     in its look-ahead at the second group's slots (after its entries
 *     were found, before its locks), and in the second group.
 *
 * Build with -DCMAKE_BUILD_TYPE=Debug to also run mem_remove_placed_locked's
 * assert that the place's entry is the session's.
 */
#include "advance_window.h"
#include "event_ledger.h"

#include "mem/index.h"

#include <pthread.h>

/* ---- hooks --------------------------------------------------------------- */

/* FNV over exactly len bytes: any byte past len would change it. */
static unsigned long fnv_hook(const void *key, size_t len, unsigned long seed)
{
    uint64_t x = UINT64_C(0xcbf29ce484222325) ^ seed;
    for (size_t i = 0; i < len; i++)
        x = (x ^ ((const unsigned char *)key)[i]) * UINT64_C(0x100000001b3);
    return table_mix(x ^ len);
}

/* Every key on one probe sequence: lookups rest on the key comparison. */
static unsigned long one_slot_hook(const void *key, size_t len, unsigned long seed)
{
    (void)key, (void)len, (void)seed;
    return 3;
}

/* A few hashes from the first and last byte and the length: clusters. */
static unsigned long clustered_hook(const void *key, size_t len, unsigned long seed)
{
    (void)seed;
    const unsigned char *b = key;
    return (unsigned long)((b[0] + b[len - 1] + len) % 5) * 0x9e3779b97f4a7c15u;
}

static table_hash_fn *const hooks[] = {NULL, fnv_hook, one_slot_hook, clustered_hook};
#define HOOKS (sizeof(hooks) / sizeof(hooks[0]))

/* The end of every case: no session listed, no table key, no slab slot
 * left; then the engine closes and the hook goes. */
static void close_emptied(afsm_engine *engine)
{
    assert_int_equal(engine_check_indexes(engine, 0), 0);
    assert_int_equal(table_keys(engine), 0);
    assert_int_equal(engine_slots_in_use(engine), 0);
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    table_hash_override = NULL;
}

/* An id of len bytes (no NUL) of one kind. */
static void make_id(char *id, size_t len, int kind, unsigned salt)
{
    for (size_t i = 0; i < len; i++) {
        switch (kind) {
        case 0:
            id[i] = (char)('a' + (i + salt) % 26);
            break;
        case 1:
            id[i] = (char)0xff;
            break;
        case 2:
            id[i] = (char)0x01;
            break;
        default: /* every byte value but 0 */
            id[i] = (char)(1 + (i * 37 + salt * 11) % 255);
            break;
        }
    }
    id[len] = '\0';
}
#define KINDS 4

/* ---- 1. the two hashes agree --------------------------------------------- */

static void test_padded16_is_table_hash(void **state)
{
    (void)state;
    ck_epoch_record_t *record = epoch_writer_record();
    assert_non_null(record);
    for (size_t h = 0; h < HOOKS; h++) {
        table_hash_override = hooks[h];
        table t;
        assert_true(table_init(&t, TABLE_KEY_STRING, 16, UINT64_C(0x5eed) + h, record));
        for (int kind = 0; kind < KINDS; kind++) {
            for (unsigned salt = 0; salt < 8; salt++) {
                for (size_t len = 1; len <= 40; len++) {
                    _Alignas(table_string_key) char key_bytes[sizeof(table_string_key) + 64];
                    table_string_key *key = (table_string_key *)key_bytes;
                    /* Bytes after the key that are not zero: neither hash
                     * may read them. */
                    memset(key->bytes, 0xa5, 48);
                    char id[48];
                    make_id(id, len, kind, salt);
                    memcpy(key->bytes, id, len);
                    key->len = (uint16_t)len;
                    unsigned long want = table_hash(&t, key);
                    if (len <= 16) {
                        char padded[16] = {0};
                        memcpy(padded, id, len);
                        unsigned long got = table_hash_padded16(&t, padded, len);
                        if (got != want)
                            fail_msg("hook %zu, kind %d, len %zu: padded16 %#lx, table_hash %#lx", h, kind, len, got,
                                     want);
                    }
                    if (hooks[h] != NULL && hooks[h] != one_slot_hook)
                        assert_int_equal(want, hooks[h](id, len, t.seed));
                }
            }
        }
        table_destroy(&t);
    }
    table_hash_override = NULL;
}

/* ---- 2. every inline length, in an engine -------------------------------- */

/* The session of id and its user's entry, looked up as a write does. The
 * answers are taken inside the section and checked after it, so that a
 * failure leaves no section open for the next test. */
static void check_entry_of(afsm_engine *engine, const afsm_uuid *id, const char *user, size_t len)
{
    mem_store *ms = (mem_store *)engine->st;
    ck_epoch_record_t *e = epoch_enter();
    assert_non_null(e);
    session *s = mem_lookup(ms, id);
    bool inline_id = false;
    size_t id_len = 0;
    unsigned us_index = 0;
    user_entry *entry = NULL, *of = NULL, *of_hashed = NULL;
    unsigned long hash = 0, want_hash = 0;
    mem_place place = {0};
    if (s != NULL) {
        inline_id = index_user_inline(s);
        id_len = index_user_id_len(s);
        us_index = mem_user_shard_index(ms, s);
        shard *us = &ms->shards[us_index];
        entry = index_lookup(us, user, (uint16_t)len);
        if (entry != NULL)
            want_hash = table_hash(&us->users, &entry->key);
        hash = index_entry_hash(us, s);
        of = index_entry_of(us, s);
        of_hashed = index_entry_of_hashed(us, s, hash);
        mem_place_of(ms, s, &place);
    }
    epoch_leave(e);
    assert_non_null(s);
    assert_int_equal(inline_id, len <= SESSION_USER_ID_INLINE);
    assert_int_equal(id_len, len);
    assert_int_equal(us_index, mem_shard_of_user(ms, user, len));
    assert_non_null(entry);
    if (len <= SESSION_USER_ID_INLINE)
        assert_int_equal(hash, want_hash);
    assert_ptr_equal(of, entry);
    assert_ptr_equal(of_hashed, entry);
    assert_ptr_equal(place.entry, entry);
    assert_ptr_equal(place.user, &ms->shards[us_index]);
}

#define LEN_USERS (16 * KINDS + 8) /* every inline length of every kind, and prefixes */

static void run_every_length(table_hash_fn *hook)
{
    table_hash_override = hook;
    virtual_clock clock;
    afsm_config cfg;
    virtual_config(&clock, &cfg);
    cfg.shard_count = 4;
    afsm_engine *engine = NULL;
    assert_int_equal(afsm_engine_open(&cfg, &engine), AFSM_OK);
    static char users[LEN_USERS][24];
    static size_t lens[LEN_USERS];
    static afsm_uuid ids[LEN_USERS][2];
    size_t n = 0;
    for (int kind = 0; kind < KINDS; kind++)
        for (size_t len = 1; len <= 16; len++, n++) {
            make_id(users[n], len, kind, (unsigned)kind);
            lens[n] = len;
        }
    /* Prefixes of one another around the inline limit, and past it. */
    for (size_t len = 12; len < 20; len++, n++) {
        make_id(users[n], len, 0, 99);
        lens[n] = len;
    }
    assert_int_equal(n, LEN_USERS);
    /* Users whose sizes equal (0xff x len, 0x01 x len) but bytes differ
     * collide in a one-slot table: only the comparison tells them apart. */
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < 2; k++) {
            afsm_uuid conn;
            afsm_create_options o = make_options("x", "10.1.2.3", &conn);
            o.user_id = users[i];
            o.user_id_len = lens[i];
            o.timeout_ms = k == 0 ? 1000 : 2000;
            afsm_session_info info = AFSM_SESSION_INFO_INIT;
            assert_int_equal(afsm_session_create(engine, &o, &info), AFSM_OK);
            assert_int_equal(info.user_id_len, lens[i]);
            assert_memory_equal(info.user_id, users[i], lens[i]);
            ids[i][k] = info.session_id;
        }
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < 2; k++)
            check_entry_of(engine, &ids[i][k], users[i], lens[i]);
    assert_int_equal(engine_check_indexes(engine, 0), (long)(2 * n));
    /* Half the users lose a session by delete (mem_remove), every other
     * user's first goes by expiry at 1 s, the rest at 2 s. */
    for (size_t i = 0; i < n; i += 2)
        assert_int_equal(afsm_session_delete(engine, &ids[i][0], NULL, 0), AFSM_OK);
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < 2; k++)
            if (!(k == 0 && i % 2 == 0))
                check_entry_of(engine, &ids[i][k], users[i], lens[i]);
    uint64_t now = virtual_clock_read(&clock) + 1500 * MS;
    virtual_clock_set(&clock, now);
    size_t expired = 0;
    assert_int_equal(afsm_engine_advance(engine, now, &expired), AFSM_OK);
    assert_int_equal(expired, n / 2);
    for (size_t i = 0; i < n; i++)
        check_entry_of(engine, &ids[i][1], users[i], lens[i]);
    assert_int_equal(engine_check_indexes(engine, 0), (long)n);
    /* A user deleted whole; then the rest expire. */
    size_t removed = 0;
    assert_int_equal(afsm_session_delete_by_user(engine, users[1], lens[1], NULL, 0, &removed), AFSM_OK);
    assert_int_equal(removed, 1);
    now += 5 * SEC;
    virtual_clock_set(&clock, now);
    assert_int_equal(afsm_engine_advance(engine, now, &expired), AFSM_OK);
    assert_int_equal(expired, n - 1);
    close_emptied(engine);
}

static void test_every_inline_length_under_every_hook(void **state)
{
    (void)state;
    for (size_t h = 0; h < HOOKS; h++)
        run_every_length(hooks[h]);
}

/* ---- 3. a mixed batch changed by a callback between its groups ----------- */

#define MIXED 60 /* one home run (64): one home shard, groups of 32 and 28 */

typedef struct mixed_ctx {
    ledger ledger;
    afsm_engine *engine;
    virtual_clock *clock;
    uint64_t now;
    afsm_uuid ids[MIXED];
    afsm_session_info infos[MIXED];
    char users[MIXED][40];
    int ended[MIXED]; /* end events seen, of every life */
    int lives[MIXED]; /* 1, plus one per restore */
    long over_ended;  /* end events of a life that had ended */
    int acted, depth, creating;
    long deletes, restores, by_user, recreated, left;
} mixed_ctx;

static mixed_ctx mixed;

static int index_of(mixed_ctx *c, const afsm_uuid *id)
{
    for (int i = 0; i < MIXED; i++)
        if (memcmp(&c->ids[i], id, sizeof(*id)) == 0)
            return i;
    return -1;
}

static void mixed_event(void *arg, const afsm_event *ev)
{
    mixed_ctx *c = arg;
    int at = index_of(c, &ev->session_id);
    /* The ledger's lives are one per id (it takes a restore's events for
     * events after the end): the test's own sessions (their CREATED come
     * before their ids are known) are counted here. */
    if (at < 0 && !c->creating)
        ledger_record(&c->ledger, ev);
    if (ev->type != AFSM_EVENT_EXPIRED && ev->type != AFSM_EVENT_DELETED)
        return;
    if (at >= 0) {
        if (c->ended[at] >= c->lives[at])
            c->over_ended++;
        /* The event's user is the session's. */
        THREAD_CHECK(ev->user_id_len == strlen(c->users[at]) &&
                     memcmp(ev->user_id, c->users[at], ev->user_id_len) == 0);
        c->ended[at]++;
    }
    if (c->acted || c->depth > 0 || at < 0)
        return;
    c->acted = 1;
    afsm_status st;
    for (int i = 0; i < MIXED; i++) {
        if (c->ended[i] != 0 || i == at)
            continue;
        switch (i % 5) {
        case 0:
            st = afsm_session_delete(c->engine, &c->ids[i], "cut", 3);
            THREAD_CHECK(st == AFSM_OK || st == AFSM_ENOTFOUND);
            c->deletes += st == AFSM_OK;
            break;
        case 1: {
            st = afsm_session_delete(c->engine, &c->ids[i], "cut", 3);
            THREAD_CHECK(st == AFSM_OK || st == AFSM_ENOTFOUND);
            if (st != AFSM_OK)
                break;
            c->deletes++;
            afsm_session_info info = c->infos[i];
            info.timeout_ms = 3600 * 1000;
            info.last_active_at_ns = info.created_at_ns + 5 * (int64_t)SEC;
            c->lives[i]++;
            st = afsm_session_restore(c->engine, &info, NULL, 0);
            if (st != AFSM_OK)
                fprintf(stderr, "restore: %s (%s)\n", afsm_status_name(st), afsm_error_detail());
            THREAD_CHECK(st == AFSM_OK);
            c->restores++;
            break;
        }
        case 2: {
            size_t removed = 0;
            st = afsm_session_delete_by_user(c->engine, c->users[i], strlen(c->users[i]), "user", 4, &removed);
            THREAD_CHECK(st == AFSM_OK);
            c->by_user += (long)removed;
            break;
        }
        case 3:
            st = afsm_session_delete(c->engine, &c->ids[i], "cut", 3);
            THREAD_CHECK(st == AFSM_OK || st == AFSM_ENOTFOUND);
            c->deletes += st == AFSM_OK;
            THREAD_CHECK(create_for(c->engine, c->users[i], 3600 * 1000, NULL) == AFSM_OK);
            c->recreated++;
            break;
        default:
            c->left++;
            break;
        }
    }
    /* Frees what the deletes retired (no section is held while callbacks
     * run); due now: nothing of the outer batch, which the wheel handed
     * over already. */
    c->depth++;
    size_t n = 0;
    THREAD_CHECK(afsm_engine_advance(c->engine, c->now, &n) == AFSM_OK);
    THREAD_CHECK(afsm_engine_advance(c->engine, c->now, &n) == AFSM_OK);
    c->depth--;
}

/* The user of session i: by i % 6, a unique long id, a unique inline one,
 * a shared inline one, a shared long one, a unique one of exactly 16
 * bytes, a unique one of 17. */
static void mixed_user(char *out, int i)
{
    switch (i % 6) {
    case 0:
        snprintf(out, 40, "unique-long-user-id-%02d-xxxxx", i);
        break;
    case 1:
        snprintf(out, 40, "in-%02d", i);
        break;
    case 2:
        snprintf(out, 40, "shared-%d", (i / 6) % 3);
        break;
    case 3:
        snprintf(out, 40, "shared-long-user-id-over-16-%d", (i / 6) % 3);
        break;
    case 4:
        snprintf(out, 40, "sixteen-bytes-%02d", i); /* 16 */
        break;
    default:
        snprintf(out, 40, "seventeen-bytes%02d", i); /* 17 */
        break;
    }
}

static void run_mixed(table_hash_fn *hook)
{
    mixed_ctx *c = &mixed;
    memset(c, 0, sizeof(*c));
    ledger_init(&c->ledger);
    table_hash_override = hook;
    static virtual_clock clock;
    c->clock = &clock;
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.shard_count = 8;
    cfg.idle_timeout_ms = 200;
    cfg.close_linger_ms = 500;
    cfg.on_event = mixed_event;
    cfg.event_ctx = c;
    afsm_engine *engine = open_engine(&clock, &cfg);
    c->engine = engine;
    c->creating = 1;
    for (int i = 0; i < MIXED; i++) {
        mixed_user(c->users[i], i);
        if (i % 6 == 4)
            assert_int_equal(strlen(c->users[i]), 16);
        if (i % 6 == 5)
            assert_int_equal(strlen(c->users[i]), 17);
        afsm_uuid conn;
        afsm_create_options o = make_options(c->users[i], "10.1.2.3", &conn);
        /* i % 7 == 3: ACTIVE with a long timeout, so the advance finds it
         * IDLE (outcome IDLE, not removed); i % 7 == 5: closed, gone when
         * its linger ends (outcome CLOSED); the rest expire. */
        o.timeout_ms = i % 7 == 3 ? 60 * 1000 : 1000;
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_session_create(engine, &o, &info), AFSM_OK);
        c->ids[i] = info.session_id;
        c->infos[i] = info;
        c->lives[i] = 1;
    }
    c->creating = 0;
    mem_store *ms = (mem_store *)engine->st;
    unsigned home = mem_shard_of_id(ms, &c->ids[0]);
    for (int i = 0; i < MIXED; i++) {
        assert_int_equal(mem_shard_of_id(ms, &c->ids[i]), home); /* one batch */
        uint64_t remaining;
        if (i % 7 == 3)
            assert_int_equal(afsm_session_heartbeat(engine, &c->ids[i], &remaining), AFSM_OK);
        if (i % 7 == 5) {
            afsm_update u;
            afsm_update_init(&u, AFSM_UPDATE_VERSION);
            u.fields = AFSM_UPDATE_STATE;
            u.state = AFSM_STATE_CLOSED;
            assert_int_equal(afsm_session_update(engine, &c->ids[i], &u, NULL), AFSM_OK);
        }
    }
    assert_int_equal(engine_check_indexes(engine, 0), MIXED);

    c->now = virtual_clock_read(&clock) + 5 * SEC;
    virtual_clock_set(&clock, c->now);
    size_t expired = 0;
    assert_int_equal(afsm_engine_advance(engine, c->now, &expired), AFSM_OK);
    assert_true(c->acted);
    assert_true(c->deletes > 0 && c->restores > 0 && c->by_user > 0 && c->recreated > 0 && c->left > 0);
    if (c->ledger.violations != 0)
        fail_msg("%ld event violation(s); first: %s", c->ledger.violations, c->ledger.first);
    /* No life ended twice; every first life not IDLE ended. */
    assert_int_equal(c->over_ended, 0);
    for (int i = 0; i < MIXED; i++)
        if (i % 7 != 3 && c->ended[i] < 1)
            fail_msg("session %d (not idle): its first life did not end", i);
    assert_int_equal(engine_check_indexes(engine, 0), (long)live_sessions(engine));

    /* Everything left ends; nothing stays behind. */
    uint64_t later = c->now + 2 * 3600 * SEC;
    virtual_clock_set(&clock, later);
    assert_int_equal(afsm_engine_advance(engine, later, &expired), AFSM_OK);
    if (c->ledger.violations != 0)
        fail_msg("%ld event violation(s); first: %s", c->ledger.violations, c->ledger.first);
    ledger_check_all_ended(&c->ledger); /* the sessions the callback created */
    assert_int_equal(c->over_ended, 0);
    for (int i = 0; i < MIXED; i++)
        if (c->ended[i] != c->lives[i])
            fail_msg("session %d: %d lives, %d ends", i, c->lives[i], c->ended[i]);
    assert_int_equal(live_sessions(engine), 0);
    close_emptied(engine);
    ledger_free(&c->ledger);
}

static void test_mixed_group_changed_by_a_callback(void **state)
{
    (void)state;
    for (size_t h = 0; h < HOOKS; h++)
        run_mixed(hooks[h]);
}

/* ---- 4. another thread in the window between the places and the locks ---- */

/* test_expiry_place.c's window (advance_window.h): on the advancing
 * thread, while armed, the K-th hash of a tracked connection id (the last
 * hash of an item's place in settle_group's first loop, or of its slots
 * in the previous group's look-ahead) hands over to a helper thread and
 * waits for it. Here the ids are long and inline, each its user's only
 * session, and the helper, besides deleting, creates new sessions
 * for the deleted users (new entries, an inline one under the same key)
 * and advances the engine itself, whose reclaim frees whatever retired
 * entry no epoch section protects. K = 32 is after every place of the
 * first group was located and before any entry is looked up; K = 33..40
 * are the first group's look-ahead at the second group's slots
 * (prefetch_removal_slots, in the first group's section); K = 41..48 the
 * second group's places. */

#define WINDOW 40 /* one home run: groups of 32 and 8 */

typedef struct window_ctx {
    ledger ledger;
    afsm_engine *engine;
    virtual_clock *clock;
    uint64_t now;
    afsm_uuid ids[WINDOW], conns[WINDOW];
    char users[WINDOW][40];
    advance_window window; /* over conns */
    long deleted, created;
} window_ctx;

static window_ctx *window_current;
static _Thread_local int window_advancer;

static unsigned long window_hook(const void *key, size_t len, unsigned long seed)
{
    unsigned long h = fnv_hook(key, len, seed);
    if (window_current != NULL && window_advancer && len == 16)
        advance_window_observe(&window_current->window, key);
    return h;
}

static void window_event(void *arg, const afsm_event *ev)
{
    window_ctx *c = arg;
    ledger_record(&c->ledger, ev);
}

static void *window_helper(void *arg)
{
    window_ctx *c = arg;
    if (!advance_window_wait(&c->window))
        return NULL;
    /* Every session but each third (the triggered one too), a long-id
     * user coming back with a new session. */
    for (int i = 0; i < WINDOW; i++) {
        if (i % 3 == 0 && i != c->window.triggered)
            continue;
        afsm_status st = afsm_session_delete(c->engine, &c->ids[i], NULL, 0);
        THREAD_CHECK(st == AFSM_OK || st == AFSM_ENOTFOUND); /* expired by an earlier group */
        if (st != AFSM_OK)
            continue;
        c->deleted++;
        if (i % 2 == 0) {
            THREAD_CHECK(create_for(c->engine, c->users[i], 3600 * 1000, NULL) == AFSM_OK);
            c->created++;
        }
    }
    size_t n;
    THREAD_CHECK(afsm_engine_advance(c->engine, c->now, &n) == AFSM_OK);
    THREAD_CHECK(afsm_engine_advance(c->engine, c->now, &n) == AFSM_OK);
    advance_window_release(&c->window);
    return NULL;
}

static void run_window(long trigger_at, uint32_t shard_count)
{
    static window_ctx ctx;
    window_ctx *c = &ctx;
    memset(c, 0, sizeof(*c));
    ledger_init(&c->ledger);
    c->window.conns = c->conns;
    c->window.conn_count = WINDOW;
    c->window.trigger_at = trigger_at;
    static virtual_clock clock;
    c->clock = &clock;
    afsm_config cfg;
    afsm_config_init(&cfg, AFSM_CONFIG_VERSION);
    cfg.shard_count = shard_count;
    cfg.on_event = window_event;
    cfg.event_ctx = c;
    table_hash_override = window_hook;
    afsm_engine *engine = open_engine(&clock, &cfg);
    c->engine = engine;
    for (int i = 0; i < WINDOW; i++) {
        /* Each user its own: the delete retires the entry. */
        if (i % 2 == 0)
            snprintf(c->users[i], sizeof(c->users[i]), "window-long-user-id-%02d-xxxxxxx", i);
        else
            snprintf(c->users[i], sizeof(c->users[i]), i % 4 == 1 ? "win-%02d" : "window-16-byte%02d", i);
        if (i % 4 == 3)
            assert_int_equal(strlen(c->users[i]), 16);
        afsm_create_options o = make_options(c->users[i], "10.1.2.3", &c->conns[i]);
        o.timeout_ms = 1000;
        afsm_session_info info = AFSM_SESSION_INFO_INIT;
        assert_int_equal(afsm_session_create(engine, &o, &info), AFSM_OK);
        c->ids[i] = info.session_id;
    }
    mem_store *ms = (mem_store *)engine->st;
    for (int i = 0; i < WINDOW; i++)
        assert_int_equal(mem_shard_of_id(ms, &c->ids[i]), mem_shard_of_id(ms, &c->ids[0]));

    window_current = c;
    pthread_t helper;
    assert_int_equal(pthread_create(&helper, NULL, window_helper, c), 0);
    c->now = virtual_clock_read(&clock) + 5 * SEC;
    virtual_clock_set(&clock, c->now);
    atomic_store(&c->window.armed, 1);
    window_advancer = 1;
    size_t expired = 0;
    assert_int_equal(afsm_engine_advance(engine, c->now, &expired), AFSM_OK);
    window_advancer = 0;
    bool reached = advance_window_close(&c->window);
    pthread_join(helper, NULL);
    window_current = NULL;
    if (!reached)
        fail_msg("the hook never fired (trigger %ld, conn hashes seen: %ld)", trigger_at,
                 atomic_load(&c->window.conn_hashes));
    /* Each session ended once: by the helper's delete or by expiry. */
    assert_int_equal(expired + (size_t)c->deleted, WINDOW);
    for (int i = 0; i < WINDOW; i++) {
        pthread_mutex_lock(&c->ledger.lock);
        ledger_line *line = ledger_line_of(&c->ledger, &c->ids[i]);
        int terminal = line->terminal;
        pthread_mutex_unlock(&c->ledger.lock);
        if (terminal != 1)
            fail_msg("trigger %ld, %u shards: session %d ended %d times", trigger_at, shard_count, i, terminal);
    }
    assert_int_equal(engine_check_indexes(engine, 0), c->created);
    uint64_t later = c->now + 2 * 3600 * SEC;
    virtual_clock_set(&clock, later);
    assert_int_equal(afsm_engine_advance(engine, later, &expired), AFSM_OK);
    ledger_check_all_ended(&c->ledger);
    close_emptied(engine);
    ledger_free(&c->ledger);
}

static void test_window_with_long_ids_and_a_reclaiming_helper(void **state)
{
    (void)state;
    static const long triggers[] = {1, 16, 32, 33, 40, 41, 48};
    static const uint32_t shard_counts[] = {1, 4, 64};
    for (size_t s = 0; s < sizeof(shard_counts) / sizeof(*shard_counts); s++)
        for (size_t t = 0; t < sizeof(triggers) / sizeof(*triggers); t++)
            run_window(triggers[t], shard_counts[s]);
}

static int reset_hook(void **state)
{
    (void)state;
    table_hash_override = NULL;
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_padded16_is_table_hash, reset_hook),
        cmocka_unit_test_teardown(test_every_inline_length_under_every_hook, reset_hook),
        cmocka_unit_test_teardown(test_mixed_group_changed_by_a_callback, reset_hook),
        cmocka_unit_test_teardown(test_window_with_long_ids_and_a_reclaiming_helper, reset_hook),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
