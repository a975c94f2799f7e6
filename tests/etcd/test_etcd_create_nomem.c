/*
 * test_etcd_create_nomem.c: a create on the etcd store whose thread runs
 * out of memory while it builds its txn (the txn a create group nests,
 * core/etcd/store.c) is AFSM_ENOMEM with nothing written, never AFSM_OK
 * with a record etcd holds empty. Against a real etcd (etcd_harness.h).
 *
 * The failures come from the linker: this executable is linked with
 * --wrap=malloc, so the engine's own objects (linked in statically) call
 * __wrap_malloc below, which fails this thread's allocations of 512 bytes
 * or more (the engine's heap buffers, such as a record's base64 text): the
 * one a countdown picks, the others succeed. util/alloc.h's hook does not
 * reach them: they are libc malloc, not mem_alloc. Thread-local: only the
 * test's thread fails. json_object_new_array is wrapped the same way, to
 * fail a group's body as its leader builds it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>

#include "afsm.h"
#include "etcd/keys.h"
#define RAW_TIMEOUT_MS 5000
#include "etcd_test_support.h"

/* Big allocations left before this thread's next one fails (that one
 * only); negative: none. */
static _Thread_local long big_allocations_left = -1;

void *__real_malloc(size_t size);
void *__wrap_malloc(size_t size);
void *__wrap_malloc(size_t size)
{
    if (size >= 512 && big_allocations_left >= 0) {
        if (big_allocations_left == 0) {
            big_allocations_left = -1; /* this one only: a passing shortage */
            return NULL;
        }
        big_allocations_left--;
    }
    return __real_malloc(size);
}

/* json_object_new_array calls left before this thread's next one fails
 * (that one only); negative: none. A create's thread makes 3 for its txn
 * and, leading a group of two or more, 1 for the group's body. */
static _Thread_local long arrays_left = -1;

json_object *__real_json_object_new_array(void);
json_object *__wrap_json_object_new_array(void);
json_object *__wrap_json_object_new_array(void)
{
    if (arrays_left == 0) {
        arrays_left = -1;
        return NULL;
    }
    if (arrays_left > 0)
        arrays_left--;
    return __real_json_object_new_array();
}

/* The length of the value etcd holds at key, or -1 when it has no key. */
static long value_len_in_etcd(const char *key, size_t key_len)
{
    etcd_client *c = raw_client();
    json_object *body = json_object_new_object(), *reply = NULL;
    json_object_object_add(body, "key", etcd_json_bytes(key, key_len));
    assert_int_equal(etcd_call(c, "/v3/kv/range", body, 1, &reply, NULL), AFSM_OK);
    json_object *kvs = etcd_get_array(reply, "kvs");
    long len = -1;
    if (kvs != NULL && json_object_array_length(kvs) == 1) {
        char *value = etcd_get_bytes(json_object_array_get_idx(kvs, 0), "value", &len);
        free(value);
        if (value == NULL)
            len = 0; /* the gateway omits an empty value */
    }
    json_object_put(body);
    json_object_put(reply);
    etcd_client_close(c);
    return len;
}

/* Each of this thread's big allocations in turn fails during a create
 * whose record is big enough (1 KiB of metadata) to need one: every create
 * is AFSM_OK with its record readable in etcd, or AFSM_ENOMEM with nothing
 * there. */
static void test_create_out_of_memory_writes_no_empty_record(void **state)
{
    (void)state;
    afsm_config cfg;
    etcd_test_config(&cfg, "/nm1/");
    cfg.etcd_request_timeout_ms = 5000;
    afsm_engine *e;
    assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_OK);
    char big[1024];
    memset(big, 'm', sizeof(big));
    afsm_kv kv = {.key = "note", .key_len = 4, .value = big, .value_len = sizeof(big)};
    long made = 0, failed = 0;
    for (long n = 0; n < 8; n++) {
        afsm_create_options o = AFSM_CREATE_OPTIONS_INIT;
        o.user_id = "nomem";
        o.user_id_len = 5;
        o.client_ip = "10.9.8.7";
        o.client_ip_len = strlen(o.client_ip);
        o.metadata = &kv;
        o.metadata_count = 1;
        afsm_uuid_v7(&o.connection_id);
        afsm_session_info s;
        afsm_session_info_init(&s, AFSM_SESSION_INFO_VERSION);
        big_allocations_left = n;
        afsm_status st = afsm_session_create(e, &o, &s);
        big_allocations_left = -1;
        if (st == AFSM_OK) {
            char key[KEYS_MAX];
            size_t len = keys_session("/nm1/", 5, &s.session_id, key);
            long value_len = value_len_in_etcd(key, len);
            if (value_len <= 0)
                fail_msg("create with big allocation %ld failing: AFSM_OK, and etcd holds %s", n,
                         value_len < 0 ? "no record" : "an empty record");
            made++;
        } else if (st == AFSM_ENOMEM) {
            failed++;
        } else {
            fail_msg("create with big allocation %ld failing: %s", n, afsm_status_name(st));
        }
    }
    print_message("%ld AFSM_OK, %ld AFSM_ENOMEM\n", made, failed);
    assert_true(failed > 0); /* the sweep reached the create's big allocations */
    assert_int_equal(sessions_in_etcd("/nm1/"), made);
    afsm_engine_close(e);
}

typedef struct steady_ctx {
    afsm_engine *engine;
    _Atomic int stop;
    _Atomic long ok, nomem, other;
} steady_ctx;

static afsm_status create_plain(afsm_engine *e, const char *user)
{
    afsm_create_options o = AFSM_CREATE_OPTIONS_INIT;
    o.user_id = user;
    o.user_id_len = strlen(user);
    o.client_ip = "10.9.8.7";
    o.client_ip_len = strlen(o.client_ip);
    afsm_uuid_v7(&o.connection_id);
    afsm_session_info s;
    afsm_session_info_init(&s, AFSM_SESSION_INFO_VERSION);
    return afsm_session_create(e, &o, &s);
}

static void *steady(void *arg)
{
    steady_ctx *c = arg;
    while (!atomic_load(&c->stop)) {
        afsm_status st = create_plain(c->engine, "steady");
        atomic_fetch_add(st == AFSM_OK ? &c->ok : st == AFSM_ENOMEM ? &c->nomem : &c->other, 1);
    }
    return NULL;
}

/* A leader that cannot allocate its group's body: every member of that
 * group is AFSM_ENOMEM (README, "group commit of creates") and nothing of
 * the group is written; the other groups go on. Repeated until this
 * thread has led such a group (it leads only some), within a deadline. */
static void test_group_body_out_of_memory(void **state)
{
    (void)state;
    afsm_config cfg;
    etcd_test_config(&cfg, "/nm2/");
    cfg.etcd_request_timeout_ms = 5000;
    cfg.default_timeout_ms = 120000; /* pooled leases: creates meet in groups */
    afsm_engine *e;
    assert_int_equal(afsm_engine_open(&cfg, &e), AFSM_OK);
    steady_ctx c = {.engine = e};
    pthread_t threads[8];
    for (int i = 0; i < 8; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, steady, &c), 0);
    long made = 0, failed = 0;
    uint64_t until = harness_now_ms() + 30000;
    while (failed == 0 && harness_now_ms() < until) {
        arrays_left = 3; /* the txn's 3 arrays succeed, a group body's fails */
        afsm_status st = create_plain(e, "leader");
        arrays_left = -1;
        if (st == AFSM_OK)
            made++;
        else if (st == AFSM_ENOMEM)
            failed++;
        else
            fail_msg("create: %s", afsm_status_name(st));
    }
    atomic_store(&c.stop, 1);
    for (int i = 0; i < 8; i++)
        pthread_join(threads[i], NULL);
    long ok = atomic_load(&c.ok), nomem = atomic_load(&c.nomem), other = atomic_load(&c.other);
    print_message("leader thread: %ld OK, %ld ENOMEM; others: %ld OK, %ld ENOMEM, %ld other\n", made, failed, ok, nomem,
                  other);
    assert_int_equal(failed, 1); /* it led a group whose body it could not build */
    assert_true(nomem >= 1);     /* and that group's other members shared its status */
    assert_int_equal(other, 0);
    assert_int_equal(sessions_in_etcd("/nm2/"), made + ok); /* nothing of that group written */
    afsm_engine_close(e);
}

int main(void)
{
    const struct CMUnitTest one[] = {
        cmocka_unit_test(test_create_out_of_memory_writes_no_empty_record),
        cmocka_unit_test(test_group_body_out_of_memory),
    };
    return cmocka_run_group_tests_name("create out of memory", one, start_one, stop_cluster);
}
