/*
 * test_uuid.c: UUID parse / format and the UUIDv7 generator.
 *
 * The generator's state is process-wide and only moves forward, so the tests
 * never assume a fresh generator: each one that needs an exact timestamp
 * first reads where the generator stands and picks a later millisecond.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/uuid.h"

static const char sample_text[] = "0192f3a4-5b6c-7d8e-9fa0-b1c2d3e4f5a6";
static const afsm_uuid sample = {
    {0x01, 0x92, 0xf3, 0xa4, 0x5b, 0x6c, 0x7d, 0x8e, 0x9f, 0xa0, 0xb1, 0xc2, 0xd3, 0xe4, 0xf5, 0xa6}};

/* A millisecond later than any the generator has reached so far. */
static uint64_t fresh_ms(void)
{
    afsm_uuid probe;
    uuid_v7_at(&probe, 0);
    return uuid_v7_unix_ms(&probe) + 1000;
}

/* Parses from a heap copy with no NUL, so ASan catches a read past text_len. */
static afsm_status parse_exact(const char *text, size_t len, afsm_uuid *out)
{
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, text, len);
    afsm_status status = afsm_uuid_parse(copy, len, out);
    free(copy);
    return status;
}

static void test_parse_format_round_trip(void **state)
{
    (void)state;
    afsm_uuid uuid;
    char text[AFSM_UUID_STRING_SIZE];

    assert_int_equal(parse_exact(sample_text, strlen(sample_text), &uuid), AFSM_OK);
    assert_memory_equal(uuid.bytes, sample.bytes, 16);
    assert_int_equal(afsm_uuid_format(&uuid, text), AFSM_OK);
    assert_string_equal(text, sample_text);

    /* Upper case parses to the same bytes and formats back in lower case. */
    const char upper[] = "0192F3A4-5B6C-7D8E-9FA0-B1C2D3E4F5A6";
    afsm_uuid from_upper;
    assert_int_equal(parse_exact(upper, strlen(upper), &from_upper), AFSM_OK);
    assert_memory_equal(from_upper.bytes, sample.bytes, 16);
    assert_int_equal(afsm_uuid_format(&from_upper, text), AFSM_OK);
    assert_string_equal(text, sample_text);

    const char mixed[] = "ffffffff-FFFF-ffff-FfFf-000000000000";
    assert_int_equal(parse_exact(mixed, strlen(mixed), &uuid), AFSM_OK);
    assert_int_equal(afsm_uuid_format(&uuid, text), AFSM_OK);
    assert_string_equal(text, "ffffffff-ffff-ffff-ffff-000000000000");

    /* Every byte value survives the round trip. */
    for (int v = 0; v < 256; v++) {
        afsm_uuid in, back;
        memset(in.bytes, v, sizeof in.bytes);
        in.bytes[15] = (uint8_t)(255 - v);
        assert_int_equal(afsm_uuid_format(&in, text), AFSM_OK);
        assert_int_equal(strlen(text), 36);
        assert_int_equal(parse_exact(text, 36, &back), AFSM_OK);
        assert_memory_equal(in.bytes, back.bytes, 16);
    }
}

static void test_parse_does_not_need_nul(void **state)
{
    (void)state;
    /* The 36 characters are followed by more text: only text_len counts. */
    const char longer[] = "0192f3a4-5b6c-7d8e-9fa0-b1c2d3e4f5a6 and more";
    afsm_uuid uuid;
    assert_int_equal(afsm_uuid_parse(longer, 36, &uuid), AFSM_OK);
    assert_memory_equal(uuid.bytes, sample.bytes, 16);
}

static void test_nil_parses(void **state)
{
    (void)state;
    const char nil_text[] = "00000000-0000-0000-0000-000000000000";
    afsm_uuid uuid;
    memset(uuid.bytes, 0xaa, sizeof uuid.bytes);
    assert_int_equal(parse_exact(nil_text, 36, &uuid), AFSM_OK);
    assert_true(uuid_is_nil(&uuid));
    assert_false(uuid_is_nil(&sample));
    char text[AFSM_UUID_STRING_SIZE];
    assert_int_equal(afsm_uuid_format(&uuid, text), AFSM_OK);
    assert_string_equal(text, nil_text);
}

static void test_parse_rejects(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "0192f3a4-5b6c-7d8e-9fa0-b1c2d3e4f5a",           /* 35 */
        "0192f3a4-5b6c-7d8e-9fa0-b1c2d3e4f5a6a",         /* 37 */
        "{0192f3a4-5b6c-7d8e-9fa0-b1c2d3e4f5a6}",        /* braces */
        "urn:uuid:0192f3a4-5b6c-7d8e-9fa0-b1c2d3e4f5a6", /* urn */
        "0192f3a45b6c7d8e9fa0b1c2d3e4f5a6",              /* 32 hex digits */
        "0192f3a4-5b6c-7d8e-9fa0-b1c2d3e4f5ag",          /* non-hex */
        "0192f3a4 5b6c-7d8e-9fa0-b1c2d3e4f5a6",          /* space for a dash */
        "0192f3a4-5b6c-7d8e-9fa0b-1c2d3e4f5a6",          /* dash moved */
        "0192f3a45-b6c-7d8e-9fa0-b1c2d3e4f5a6",          /* dash moved */
        "-0192f3a4-5b6c-7d8e-9fa0-b1c2d3e4f5a",          /* leading dash */
        "0192f3a4-5b6c-7d8e-9fa0-b1c2d3e4f5a ",          /* trailing space */
        " 0192f3a4-5b6c-7d8e-9fa0-b1c2d3e4f5a",          /* leading space */
        "0192f3a4-+b6c-7d8e-9fa0-b1c2d3e4f5a6",          /* sign */
        "0x92f3a4-5b6c-7d8e-9fa0-b1c2d3e4f5a6",          /* 0x prefix */
        "------------------------------------",          /* all dashes */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        afsm_uuid uuid;
        memset(uuid.bytes, 0x5a, sizeof uuid.bytes);
        assert_int_equal(parse_exact(bad[i], strlen(bad[i]), &uuid), AFSM_EUUID);
        /* A failed parse leaves the output alone. */
        for (size_t b = 0; b < sizeof uuid.bytes; b++)
            assert_int_equal(uuid.bytes[b], 0x5a);
    }

    /* An embedded NUL inside the 36 characters is just a bad character. */
    char with_nul[36];
    memcpy(with_nul, sample_text, 36);
    with_nul[20] = '\0';
    afsm_uuid uuid;
    assert_int_equal(parse_exact(with_nul, 36, &uuid), AFSM_EUUID);
}

static void test_null_arguments(void **state)
{
    (void)state;
    afsm_uuid uuid;
    char text[AFSM_UUID_STRING_SIZE];
    assert_int_equal(afsm_uuid_parse(NULL, 36, &uuid), AFSM_ENULL);
    assert_int_equal(afsm_uuid_parse(sample_text, 36, NULL), AFSM_ENULL);
    assert_int_equal(afsm_uuid_parse(NULL, 0, NULL), AFSM_ENULL);
    assert_int_equal(afsm_uuid_format(NULL, text), AFSM_ENULL);
    assert_int_equal(afsm_uuid_format(&sample, NULL), AFSM_ENULL);
    assert_int_equal(afsm_uuid_v7(NULL), AFSM_ENULL);
}

static void test_compare(void **state)
{
    (void)state;
    afsm_uuid a = sample, b = sample;
    assert_int_equal(uuid_compare(&a, &b), 0);
    b.bytes[15]++;
    assert_true(uuid_compare(&a, &b) < 0);
    assert_true(uuid_compare(&b, &a) > 0);
    b = sample;
    b.bytes[0]--;
    assert_true(uuid_compare(&a, &b) > 0);
}

static void assert_v7_layout(const afsm_uuid *uuid)
{
    assert_int_equal(uuid->bytes[6] >> 4, 7); /* version */
    assert_int_equal(uuid->bytes[8] >> 6, 2); /* variant 10 */
}

static void test_v7_layout(void **state)
{
    (void)state;
    uint64_t ms = fresh_ms();
    afsm_uuid uuid;
    uuid_v7_at(&uuid, ms);
    assert_v7_layout(&uuid);
    assert_int_equal(uuid_v7_unix_ms(&uuid), ms);
    /* The first id of a fresh millisecond has counter (rand_a) zero. */
    assert_int_equal(uuid.bytes[6] & 0x0f, 0);
    assert_int_equal(uuid.bytes[7], 0);
    /* Big-endian timestamp in bytes 0..5. */
    for (int i = 0; i < 6; i++)
        assert_int_equal(uuid.bytes[i], (uint8_t)(ms >> (40 - 8 * i)));

    /* The next id in the same millisecond: counter 1, same timestamp. */
    afsm_uuid next;
    uuid_v7_at(&next, ms);
    assert_v7_layout(&next);
    assert_int_equal(uuid_v7_unix_ms(&next), ms);
    assert_int_equal(next.bytes[6] & 0x0f, 0);
    assert_int_equal(next.bytes[7], 1);

    /* Formatted text shows version 7 and a variant digit in 8..b. */
    char text[AFSM_UUID_STRING_SIZE];
    assert_int_equal(afsm_uuid_format(&uuid, text), AFSM_OK);
    assert_int_equal(text[14], '7');
    assert_non_null(strchr("89ab", text[19]));
}

static void test_v7_rand_b_varies(void **state)
{
    (void)state;
    /* 62 random bits: 64 ids with identical rand_b would mean no randomness. */
    uint64_t ms = fresh_ms();
    afsm_uuid first, other;
    uuid_v7_at(&first, ms);
    int same = 0;
    for (int i = 0; i < 64; i++) {
        uuid_v7_at(&other, ms);
        assert_v7_layout(&other);
        if (memcmp(first.bytes + 8, other.bytes + 8, 8) == 0)
            same++;
    }
    assert_int_equal(same, 0);
}

static void test_v7_wall_clock(void **state)
{
    (void)state;
    struct timespec before_ts, after_ts;
    clock_gettime(CLOCK_REALTIME, &before_ts);
    afsm_uuid uuid;
    assert_int_equal(afsm_uuid_v7(&uuid), AFSM_OK);
    clock_gettime(CLOCK_REALTIME, &after_ts);
    assert_v7_layout(&uuid);
    uint64_t before_ms = (uint64_t)before_ts.tv_sec * 1000 + (uint64_t)before_ts.tv_nsec / 1000000;
    uint64_t after_ms = (uint64_t)after_ts.tv_sec * 1000 + (uint64_t)after_ts.tv_nsec / 1000000;
    /* Earlier tests pushed the generator at most a few seconds ahead of now
     * (fresh_ms adds 1 s per call), never behind. */
    assert_true(uuid_v7_unix_ms(&uuid) >= before_ms);
    assert_true(uuid_v7_unix_ms(&uuid) <= after_ms + 60000);
}

#define SAME_MS_IDS 100000

static void test_v7_monotonic_same_ms(void **state)
{
    (void)state;
    uint64_t ms = fresh_ms();
    afsm_uuid *ids = malloc(SAME_MS_IDS * sizeof *ids);
    assert_non_null(ids);
    for (int i = 0; i < SAME_MS_IDS; i++)
        uuid_v7_at(&ids[i], ms);
    for (int i = 0; i < SAME_MS_IDS; i++) {
        assert_v7_layout(&ids[i]);
        if (i > 0)
            assert_true(uuid_compare(&ids[i - 1], &ids[i]) < 0);
    }
    /* 100k ids at 4096 per ms carry the timestamp forward by exactly 24 ms. */
    assert_int_equal(uuid_v7_unix_ms(&ids[0]), ms);
    assert_int_equal(uuid_v7_unix_ms(&ids[SAME_MS_IDS - 1]), ms + (SAME_MS_IDS - 1) / 4096);
    /* The 4097th id carried into the next millisecond with counter 0. */
    assert_int_equal(uuid_v7_unix_ms(&ids[4096]), ms + 1);
    assert_int_equal(ids[4096].bytes[6] & 0x0f, 0);
    assert_int_equal(ids[4096].bytes[7], 0);
    free(ids);
}

static void test_v7_monotonic_clock_steps_back(void **state)
{
    (void)state;
    uint64_t ms = fresh_ms();
    afsm_uuid prev, next;
    uuid_v7_at(&prev, ms);
    /* The wall clock jumps back an hour, then wanders: ids keep increasing. */
    const uint64_t steps[] = {ms - 3600000, ms - 1, ms, 0, ms - 5, ms + 1, ms + 1, ms};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        for (int k = 0; k < 1000; k++) {
            uuid_v7_at(&next, steps[i]);
            assert_v7_layout(&next);
            assert_true(uuid_compare(&prev, &next) < 0);
            /* Never behind the clock it was given. */
            assert_true(uuid_v7_unix_ms(&next) >= steps[i]);
            prev = next;
        }
    }
    /* Once the clock is well past the carried stamp, ids follow it again. */
    uuid_v7_at(&next, ms + 100000);
    assert_int_equal(uuid_v7_unix_ms(&next), ms + 100000);
    assert_true(uuid_compare(&prev, &next) < 0);
}

static void test_v7_fork_does_not_repeat(void **state)
{
    (void)state;
    /* The child inherits the generator's stamp and this thread's random
     * buffer; without the fork handler both would emit the same next id. */
    uint64_t ms = fresh_ms();
    afsm_uuid warm;
    uuid_v7_at(&warm, ms); /* leaves unused random bytes in this thread's buffer */
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        afsm_uuid child_id;
        uuid_v7_at(&child_id, ms);
        ssize_t n = write(fds[1], child_id.bytes, sizeof child_id.bytes);
        _exit(n == (ssize_t)sizeof child_id.bytes ? 0 : 1);
    }
    afsm_uuid parent_id, child_id;
    uuid_v7_at(&parent_id, ms);
    assert_int_equal(read(fds[0], child_id.bytes, sizeof child_id.bytes), (ssize_t)sizeof child_id.bytes);
    int wstatus;
    assert_int_equal(waitpid(pid, &wstatus, 0), pid);
    assert_true(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0);
    close(fds[0]);
    close(fds[1]);
    /* Same stamp (both continue from the inherited one), different rand_b. */
    assert_memory_equal(parent_id.bytes, child_id.bytes, 8);
    assert_memory_not_equal(parent_id.bytes + 8, child_id.bytes + 8, 8);
}

static void test_v7_huge_ms_clamped(void **state)
{
    (void)state;
    /* Timestamps beyond 48 bits cannot be encoded; the generator must still
     * produce well-formed ids rather than wrap the field. */
    afsm_uuid a, b;
    uuid_v7_at(&a, fresh_ms());
    uuid_v7_at(&b, UINT64_MAX);
    assert_v7_layout(&b);
    assert_int_equal(uuid_v7_unix_ms(&b), (UINT64_C(1) << 48) - 1);
    assert_true(uuid_compare(&a, &b) < 0);
}

#define THREADS        4
#define IDS_PER_THREAD 50000

struct thread_ids {
    afsm_uuid ids[IDS_PER_THREAD];
    pthread_barrier_t *start;
    int use_wall_clock;
};

static void *generate(void *arg)
{
    struct thread_ids *t = arg;
    pthread_barrier_wait(t->start);
    for (int i = 0; i < IDS_PER_THREAD; i++) {
        if (t->use_wall_clock)
            afsm_uuid_v7(&t->ids[i]);
        else
            uuid_v7_at(&t->ids[i], 1000); /* far in the past: every id comes from the carry */
    }
    return NULL;
}

static int compare_ids(const void *a, const void *b)
{
    return uuid_compare(a, b);
}

static void run_threads(int use_wall_clock)
{
    pthread_barrier_t start;
    pthread_t threads[THREADS];
    struct thread_ids *per = calloc(THREADS, sizeof *per);
    assert_non_null(per);
    assert_int_equal(pthread_barrier_init(&start, NULL, THREADS), 0);
    for (int t = 0; t < THREADS; t++) {
        per[t].start = &start;
        per[t].use_wall_clock = use_wall_clock;
        assert_int_equal(pthread_create(&threads[t], NULL, generate, &per[t]), 0);
    }
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(pthread_join(threads[t], NULL), 0);
    pthread_barrier_destroy(&start);

    afsm_uuid *all = malloc(THREADS * IDS_PER_THREAD * sizeof *all);
    assert_non_null(all);
    for (int t = 0; t < THREADS; t++) {
        for (int i = 0; i < IDS_PER_THREAD; i++) {
            assert_v7_layout(&per[t].ids[i]);
            if (i > 0)
                assert_true(uuid_compare(&per[t].ids[i - 1], &per[t].ids[i]) < 0);
        }
        memcpy(all + t * IDS_PER_THREAD, per[t].ids, sizeof per[t].ids);
    }
    qsort(all, THREADS * IDS_PER_THREAD, sizeof *all, compare_ids);
    for (int i = 1; i < THREADS * IDS_PER_THREAD; i++)
        assert_true(uuid_compare(&all[i - 1], &all[i]) < 0);
    /* Stamps are unique across threads, not only whole ids: compare the
     * first 8 bytes, which hold timestamp and counter. */
    for (int i = 1; i < THREADS * IDS_PER_THREAD; i++)
        assert_true(memcmp(all[i - 1].bytes, all[i].bytes, 8) < 0);
    free(all);
    free(per);
}

static void test_v7_threads_fixed_ms(void **state)
{
    (void)state;
    run_threads(0);
}

static void test_v7_threads_wall_clock(void **state)
{
    (void)state;
    run_threads(1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_format_round_trip),
        cmocka_unit_test(test_parse_does_not_need_nul),
        cmocka_unit_test(test_nil_parses),
        cmocka_unit_test(test_parse_rejects),
        cmocka_unit_test(test_null_arguments),
        cmocka_unit_test(test_compare),
        cmocka_unit_test(test_v7_wall_clock),
        cmocka_unit_test(test_v7_layout),
        cmocka_unit_test(test_v7_rand_b_varies),
        cmocka_unit_test(test_v7_monotonic_same_ms),
        cmocka_unit_test(test_v7_monotonic_clock_steps_back),
        cmocka_unit_test(test_v7_threads_fixed_ms),
        cmocka_unit_test(test_v7_threads_wall_clock),
        cmocka_unit_test(test_v7_fork_does_not_repeat),
        /* Last: it leaves the generator at the end of the 48-bit range. */
        cmocka_unit_test(test_v7_huge_ms_clamped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
