/*
 * test_packet_layout.c: review 17's check of the layout claim behind
 * afsm_handle_packet's cost. mem_store.h says of mem_handle: "With base,
 * ms, s and owner, added[0..3] fill the first cache line: a packet without
 * retransmissions touches no other". That holds only if the handle starts
 * on a cache line, and mem_pin takes it from plain malloc.
 *
 * Linked WITHOUT jemalloc (unlike the other unit tests): libafsm.so never
 * brings jemalloc, so Go, Python and C users get the C library's malloc,
 * whose blocks are 16-byte aligned: where a 120-byte handle starts mod 64
 * depends on what the program allocated before it (here a 40-byte flow
 * record per pin, as a gateway keeps: the handles land at 48, 32, 16, 0
 * mod 64 in turn, and 3 in 4 split their packet fields over two lines).
 * jemalloc's 128-byte class is 64-aligned, which is why the tests and
 * benches linked with it never saw the split.
 */
#include "test_support.h"

#include <stdlib.h>

#include "mem/mem_store.h"

static virtual_clock vclock;

static void test_handle_hot_fields_share_one_line(void **state)
{
    (void)state;
    afsm_engine *engine = open_virtual_engine(&vclock, NULL);
    afsm_session_info s = create_session(engine, "line");
    enum { N = 16 };
    afsm_handle *h[N];
    void *flow[N];
    int split = 0;
    for (int i = 0; i < N; i++) {
        /* The application's own allocation per flow (a flow record, say),
         * as a gateway makes one between pins: it moves where the next
         * handle starts, as real programs do. */
        flow[i] = malloc(40);
        assert_non_null(flow[i]);
        assert_int_equal(afsm_handle_pin(engine, &s.session_id, &h[i]), AFSM_OK);
        mem_handle *mh = (mem_handle *)h[i];
        uintptr_t first = (uintptr_t)&mh->base, last = (uintptr_t)&mh->added[3] + sizeof(mh->added[3]) - 1;
        split += first / 64 != last / 64;
    }
    for (int i = 0; i < N; i++) {
        assert_int_equal(afsm_handle_release(h[i]), AFSM_OK);
        free(flow[i]);
    }
    assert_int_equal(afsm_engine_close(engine), AFSM_OK);
    print_message("handles whose packet fields span two cache lines: %d of %d\n", split, N);
    assert_int_equal(split, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handle_hot_fields_share_one_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
