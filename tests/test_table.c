/*
 * test_table.c: the engine's hash tables (mem/table.h). Keys collide on purpose (a
 * constant hash): full-key comparison must still keep them apart, through
 * growth, removal (tombstones), reinsertion and rebuilds; and a key can
 * never enter twice, whatever the library does with tombstones.
 */
#include "test_support.h"

#include <stdlib.h>

#include "mem/table.h"
#include "util/epoch.h"

static unsigned long constant_hash(const void *bytes, size_t len, unsigned long seed)
{
    (void)bytes;
    (void)len;
    (void)seed;
    return 42;
}

static ck_epoch_record_t *record;

static int setup(void **state)
{
    (void)state;
    table_hash_override = constant_hash;
    record = epoch_writer_record();
    return record == NULL;
}

static int teardown(void **state)
{
    (void)state;
    table_hash_override = NULL;
    epoch_writer_retire(record);
    return 0;
}

static void test_tombstone_reuse_does_not_duplicate(void **state)
{
    (void)state;
    table t;
    assert_true(table_init(&t, TABLE_KEY_UUID, 16, 1, record));
    static afsm_uuid a = {"AAAAAAAAAAAAAAA"}, b = {"BBBBBBBBBBBBBBB"}, b2 = {"BBBBBBBBBBBBBBB"};
    assert_int_equal(table_insert(&t, &a), TABLE_OK);
    assert_int_equal(table_insert(&t, &b), TABLE_OK);
    assert_true(table_remove(&t, &a));
    /* B's probe sequence now starts at A's tombstone: the put A, put B,
     * remove A, put B sequence that duplicates keys in ck_ht 0.7.1. */
    assert_int_equal(table_insert(&t, &b2), TABLE_EXISTS);
    assert_int_equal(table_count(&t), 1);
    assert_ptr_equal(table_get(&t, &b2), &b); /* the stored key, not the probe */
    assert_true(table_remove(&t, &b));
    assert_null(table_get(&t, &b));
    assert_false(table_remove(&t, &b));
    table_destroy(&t);
}

static void test_colliding_keys_stay_apart_through_growth_and_rebuild(void **state)
{
    (void)state;
    table t;
    assert_true(table_init(&t, TABLE_KEY_UUID, 16, 1, record));
    enum { N = 300 };
    static afsm_uuid keys[N];
    for (int i = 0; i < N; i++) {
        afsm_uuid_v7(&keys[i]);
        assert_int_equal(table_insert(&t, &keys[i]), TABLE_OK);
    }
    for (int round = 0; round < 3; round++) {
        for (int i = round % 2; i < N; i += 2)
            assert_true(table_remove(&t, &keys[i]));
        assert_true(table_maintain(&t)); /* rebuilds: as many tombstones as entries */
        for (int i = 0; i < N; i++) {
            const void *v = table_get(&t, &keys[i]);
            if (i % 2 != round % 2)
                assert_ptr_equal(v, &keys[i]);
            else
                assert_null(v);
        }
        for (int i = round % 2; i < N; i += 2)
            assert_int_equal(table_insert(&t, &keys[i]), TABLE_OK);
        assert_int_equal(table_count(&t), N);
    }
    table_destroy(&t);
}

static table_string_key *make_key(const char *text)
{
    table_string_key *key = malloc(sizeof(*key) + strlen(text));
    assert_non_null(key);
    key->len = (uint16_t)strlen(text);
    memcpy(key->bytes, text, key->len);
    return key;
}

static void test_string_keys(void **state)
{
    (void)state;
    table t;
    assert_true(table_init(&t, TABLE_KEY_STRING, 16, 7, record));
    table_string_key *alice = make_key("alice"), *alicia = make_key("alicia"), *probe = make_key("alice"),
                     *prefix = make_key("alic");
    assert_int_equal(table_insert(&t, alice), TABLE_OK);
    assert_int_equal(table_insert(&t, alicia), TABLE_OK);
    assert_ptr_equal(table_get(&t, probe), alice);
    assert_null(table_get(&t, prefix));
    assert_int_equal(table_insert(&t, probe), TABLE_EXISTS);
    table_destroy(&t);
    free(alice);
    free(alicia);
    free(probe);
    free(prefix);
}

/* The whole engine on one hash: sessions and connection ids that collide
 * are still told apart by get, delete and the duplicate check. */
static void test_engine_with_colliding_keys(void **state)
{
    (void)state;
    virtual_clock clock;
    afsm_engine *engine = open_virtual_engine(&clock, NULL);
    enum { N = 100 };
    afsm_session_info made[N];
    for (int i = 0; i < N; i++)
        made[i] = create_session(engine, i % 3 ? "x" : "y");
    for (int i = 0; i < N; i += 3)
        assert_int_equal(afsm_session_delete(engine, &made[i].session_id, NULL, 0), AFSM_OK);
    for (int i = 0; i < N; i++) {
        afsm_session_info got = AFSM_SESSION_INFO_INIT;
        afsm_status want = i % 3 == 0 ? AFSM_ENOTFOUND : AFSM_OK;
        assert_int_equal(afsm_session_get(engine, &made[i].session_id, &got), want);
        assert_int_equal(afsm_session_get_by_connection(engine, &made[i].connection_id, &got), want);
        if (want == AFSM_OK)
            assert_memory_equal(&got.session_id, &made[i].session_id, 16);
        afsm_create_options o = make_options("z", "1.2.3.4", &got.connection_id);
        o.connection_id = made[i].connection_id;
        assert_int_equal(afsm_session_create(engine, &o, NULL), want == AFSM_OK ? AFSM_EEXISTS : AFSM_OK);
    }
    afsm_engine_close(engine);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tombstone_reuse_does_not_duplicate),
        cmocka_unit_test(test_colliding_keys_stay_apart_through_growth_and_rebuild),
        cmocka_unit_test(test_string_keys),
        cmocka_unit_test(test_engine_with_colliding_keys),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
