/*
 * test_table.c: the fenced ck_ht wrapper. Keys collide on purpose (a
 * constant hash): bytestring mode must still keep them apart, and the
 * ck_ht 0.7.1 tombstone-reuse bug (put A, put B, remove A, put B inserts B
 * twice) must not get through table_insert.
 */
#include "test_support.h"

#include "mem/table.h"
#include "util/epoch.h"

static void constant_hash(ck_ht_hash_t *out, const void *key, size_t key_len, uint64_t seed)
{
    (void)key;
    (void)key_len;
    (void)seed;
    out->value = 42;
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
    assert_true(table_init(&t, 16, 1, record));
    static char a[16] = "AAAAAAAAAAAAAAA", b[16] = "BBBBBBBBBBBBBBB";
    int va = 1, vb = 2, vb2 = 3;
    assert_int_equal(table_insert(&t, a, 16, &va), TABLE_OK);
    assert_int_equal(table_insert(&t, b, 16, &vb), TABLE_OK);
    assert_true(table_remove(&t, a, 16));
    /* B's probe sequence now starts at A's tombstone. */
    assert_int_equal(table_insert(&t, b, 16, &vb2), TABLE_EXISTS);
    assert_int_equal(table_count(&t), 1);
    assert_ptr_equal(table_get(&t, b, 16), &vb);
    assert_true(table_remove(&t, b, 16));
    assert_null(table_get(&t, b, 16));
    assert_false(table_remove(&t, b, 16));
    table_destroy(&t);
}

static void test_colliding_keys_stay_apart_through_growth(void **state)
{
    (void)state;
    table t;
    assert_true(table_init(&t, 16, 1, record));
    enum { N = 300 };
    static afsm_uuid keys[N];
    for (int i = 0; i < N; i++) {
        afsm_uuid_v7(&keys[i]);
        assert_int_equal(table_insert(&t, keys[i].bytes, 16, &keys[i]), TABLE_OK);
    }
    for (int i = 0; i < N; i += 2)
        assert_true(table_remove(&t, keys[i].bytes, 16));
    for (int i = 0; i < N; i++) {
        void *v = table_get(&t, keys[i].bytes, 16);
        if (i % 2)
            assert_ptr_equal(v, &keys[i]);
        else
            assert_null(v);
    }
    table_gc(&t, 1000);
    assert_int_equal(table_count(&t), N / 2);
    for (int i = 1; i < N; i += 2)
        assert_ptr_equal(table_get(&t, keys[i].bytes, 16), &keys[i]);
    table_destroy(&t);
}

/* The whole engine on one hash: connection ids that collide are still told
 * apart by get, delete and the duplicate check. */
static void test_engine_with_colliding_connection_ids(void **state)
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
        cmocka_unit_test(test_colliding_keys_stay_apart_through_growth),
        cmocka_unit_test(test_engine_with_colliding_connection_ids),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
