/*
 * test_table_runs.c: the tables' removal at the end of a run (mem/table.h,
 * d038624) and their resizing on keys, attacked.
 *
 * A removal whose next slot is empty empties its slot and the tombstones
 * just before it instead of leaving a tombstone; table_maintain shrinks a
 * grown map once its keys fill 1/8 of it. What users of a table rely on,
 * checked here:
 * - a lock-free reader finds every key present for its whole lookup and
 *   its probes end, while neighbours at run ends (across the end of the
 *   map too, and on colliding and real hashes) are removed and reinserted
 *   and maps grow and shrink under it; a walk returns each such key once;
 * - the writer's bookkeeping: `used` is always keys plus tombstones of the
 *   current map, `count` its keys, a duplicate is refused;
 * - growth and shrinking cost O(1) slots per operation amortised, on any
 *   sequence (no oscillation between the two rules);
 * - a shrink without memory leaves the table as it was and usable, and no
 *   shrink goes below the presized size.
 * Threads: one writer (the test's thread, as a shard lock would make it)
 * and lock-free readers; run under TSan and ASan too. A reader that never
 * ends is caught by its deadline and by ctest's timeout.
 */
#include "test_support.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "mem/table.h"
#include "util/alloc.h"
#include "util/epoch.h"

#define READ_DEADLINE 20 /* seconds: a reader still running then is stuck */

static bool deadline_passed(uint64_t deadline)
{
    return real_ns() > deadline;
}

/* The test's own generator (xorshift64*): runs replay exactly. */
static uint64_t next_random(uint64_t *state)
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * UINT64_C(0x2545f4914f6cdd1d);
}

/* Keys that say where they go: the first 8 bytes are the hash, so a test
 * lays out runs of occupied slots exactly. */
static unsigned long placed_hash(const void *bytes, size_t len, unsigned long seed)
{
    (void)len;
    (void)seed;
    uint64_t h;
    memcpy(&h, bytes, sizeof(h));
    return (unsigned long)h;
}

/* 32 distinct hashes: long clusters that merge and wrap as maps change size. */
static unsigned long few_hashes(const void *bytes, size_t len, unsigned long seed)
{
    (void)len;
    (void)seed;
    return ((const unsigned char *)bytes)[15] & 31;
}

static void place_key(afsm_uuid *key, uint64_t hash, uint64_t tag)
{
    memcpy(key->bytes, &hash, 8);
    memcpy(key->bytes + 8, &tag, 8);
}

static uint64_t map_slots(table *t)
{
    return atomic_load(&t->map)->mask + 1;
}

/* The writer's view of the map against what it believes is stored (keys
 * [0, n) where present, and `others` keys besides): `used` is keys plus
 * tombstones, `count` is keys, every one of keys present is found by a
 * probe from its hash (no empty slot on the way) and no absent one is.
 * Returns a description of the first disagreement, or NULL. */
static const char *check_table(table *t, const afsm_uuid *keys, const bool *present, int n, uint64_t others, char *why,
                               size_t size)
{
    table_map *m = atomic_load(&t->map);
    uint64_t live = 0, tombstones = 0, expected = others;
    for (uint64_t i = 0; i <= m->mask; i++) {
        const void *k = atomic_load(&m->slots[i]);
        tombstones += k == TABLE_TOMBSTONE;
        live += k != NULL && k != TABLE_TOMBSTONE;
    }
    for (int i = 0; i < n; i++)
        expected += present[i];
    if (live != expected || table_count(t) != expected || t->used != live + tombstones) {
        snprintf(why, size, "%llu keys expected; map holds %llu keys, %llu tombstones; count %zu, used %llu",
                 (unsigned long long)expected, (unsigned long long)live, (unsigned long long)tombstones, table_count(t),
                 (unsigned long long)t->used);
        return why;
    }
    if (live * 2 > m->mask + 1 || (live + tombstones) * 4 > (m->mask + 1) * 3) {
        snprintf(why, size, "%llu keys and %llu tombstones in %llu slots", (unsigned long long)live,
                 (unsigned long long)tombstones, (unsigned long long)m->mask + 1);
        return why;
    }
    for (int i = 0; i < n; i++) {
        afsm_uuid copy = keys[i];
        const void *got = table_get(t, &copy);
        if (got != (present[i] ? (const void *)&keys[i] : NULL)) {
            snprintf(why, size, "key %d (%s) found at %p", i, present[i] ? "present" : "absent", got);
            return why;
        }
    }
    return NULL;
}

/* ---- readers racing the writer -------------------------------------------- */

enum { MAX_STABLE = 16 };

typedef struct runs_race {
    table t;
    int stable_count;
    afsm_uuid stable[MAX_STABLE]; /* present for the whole race */
    afsm_uuid absent[MAX_STABLE]; /* never inserted, on the stable keys' hashes */
    _Atomic long writer_done;
    _Atomic long passes; /* reader passes completed (each reader adds its own) */
    _Atomic long misses; /* stable keys not found, absent ones found, walks that lost or repeated one */
} runs_race;

static void *point_reader(void *arg)
{
    runs_race *r = arg;
    uint64_t deadline = real_ns() + (uint64_t)READ_DEADLINE * SEC;
    while (!atomic_load(&r->writer_done) && !deadline_passed(deadline)) {
        ck_epoch_record_t *record = epoch_enter();
        if (record == NULL) {
            atomic_fetch_add(&r->misses, 1);
            return NULL;
        }
        for (int g = 0; g < r->stable_count; g++) {
            afsm_uuid copy = r->stable[g];
            if (table_get(&r->t, &copy) != &r->stable[g])
                atomic_fetch_add(&r->misses, 1);
            if (table_get(&r->t, &r->absent[g]) != NULL)
                atomic_fetch_add(&r->misses, 1);
        }
        epoch_leave(record);
        atomic_fetch_add(&r->passes, 1);
    }
    return NULL;
}

static void *walk_reader(void *arg)
{
    runs_race *r = arg;
    uint64_t deadline = real_ns() + (uint64_t)READ_DEADLINE * SEC;
    while (!atomic_load(&r->writer_done) && !deadline_passed(deadline)) {
        ck_epoch_record_t *record = epoch_enter();
        if (record == NULL) {
            atomic_fetch_add(&r->misses, 1);
            return NULL;
        }
        int seen[MAX_STABLE] = {0};
        table_iterator it = TABLE_ITERATOR_INIT;
        for (const void *k; (k = table_next(&r->t, &it)) != NULL;) {
            ptrdiff_t at = (const afsm_uuid *)k - r->stable;
            if (at >= 0 && at < r->stable_count)
                seen[at]++;
        }
        epoch_leave(record);
        for (int g = 0; g < r->stable_count; g++)
            if (seen[g] != 1)
                atomic_fetch_add(&r->misses, 1);
        atomic_fetch_add(&r->passes, 1);
    }
    return NULL;
}

static void start_readers(runs_race *r, pthread_t *readers)
{
    atomic_store(&r->writer_done, 0);
    atomic_store(&r->passes, 0);
    atomic_store(&r->misses, 0);
    assert_int_equal(pthread_create(&readers[0], NULL, point_reader, r), 0);
    assert_int_equal(pthread_create(&readers[1], NULL, walk_reader, r), 0);
    assert_true(spin_until(&r->passes, 2, READ_DEADLINE));
}

static long stop_readers(runs_race *r, pthread_t *readers)
{
    atomic_store(&r->writer_done, 1);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_join(readers[i], NULL), 0);
    return atomic_load(&r->passes);
}

/* Groups of keys sharing a hash: RUN_BEFORE churning keys, the group's
 * stable key, RUN_AFTER churning keys, inserted in that order so that the
 * stable key sits behind churning ones on its probe and churning ones end
 * its run. The first group wraps around the end of the map; the second's
 * run runs into the third's, whose probes then cross the second's slots. */
enum { RUN_GROUPS = 4, RUN_BEFORE = 2, RUN_AFTER = 2, RUN_CHURN = RUN_GROUPS * (RUN_BEFORE + RUN_AFTER) };
static const uint64_t run_group_hash[RUN_GROUPS] = {61, 10, 13, 30};

/* Removals whose next slot is empty empty their slot and the tombstones
 * before it. Readers racing them (and the inserts that refill the emptied
 * slots) must find each key present throughout: no slot on its probe is
 * ever emptied. Their probes for absent keys must end, and a walk returns
 * each present key once. The writer checks `used`, `count`, duplicates
 * and every key's probe after each step. */
static void test_readers_race_removals_that_end_runs(void **state)
{
    (void)state;
    static runs_race r;
    static afsm_uuid churn[RUN_CHURN];
    bool present[RUN_CHURN];
    ck_epoch_record_t *defer = epoch_writer_record();
    assert_non_null(defer);
    table_hash_override = placed_hash;
    /* Presized: 64 slots it never leaves (20 keys at most, never below the
     * presized size), so the layout stays what the groups make it. */
    assert_true(table_init(&r.t, TABLE_KEY_UUID, 64, 0, defer));
    r.stable_count = RUN_GROUPS;
    for (int g = 0; g < RUN_GROUPS; g++) {
        uint64_t h = run_group_hash[g];
        for (int j = 0; j < RUN_BEFORE + RUN_AFTER; j++) {
            int i = g * (RUN_BEFORE + RUN_AFTER) + j;
            place_key(&churn[i], h, 100 + (uint64_t)i);
            if (j == RUN_BEFORE) {
                place_key(&r.stable[g], h, (uint64_t)g);
                assert_int_equal(table_insert(&r.t, &r.stable[g]), TABLE_OK);
            }
            assert_int_equal(table_insert(&r.t, &churn[i]), TABLE_OK);
            present[i] = true;
        }
        place_key(&r.absent[g], h, 1000 + (uint64_t)g);
    }
    /* The layout the comment above describes. */
    table_map *m = atomic_load(&r.t.map);
    assert_ptr_equal(atomic_load(&m->slots[63]), &r.stable[0]);
    assert_ptr_equal(atomic_load(&m->slots[1]), &churn[3]);
    assert_ptr_equal(atomic_load(&m->slots[12]), &r.stable[1]);
    assert_ptr_equal(atomic_load(&m->slots[17]), &r.stable[2]);
    pthread_t readers[2];
    start_readers(&r, readers);
    /* A random churning key out (its removal ends a run about as often as
     * not) or back in (into the first tombstone or the slot ending its
     * run), with table_maintain after removals as the engine does. */
    uint64_t rng = 0x9e3779b97f4a7c15, deadline = real_ns() + (uint64_t)READ_DEADLINE / 2 * SEC;
    long steps = 0, emptied = 0, passes_before = atomic_load(&r.passes);
    char why[160];
    const char *wrong = NULL;
    for (;
         wrong == NULL && (steps < 40000 || atomic_load(&r.passes) < passes_before + 200) && !deadline_passed(deadline);
         steps++) {
        int i = (int)(next_random(&rng) >> 33) % RUN_CHURN;
        uint64_t used = r.t.used;
        if (present[i]) {
            assert_true(table_remove(&r.t, &churn[i]));
            emptied += r.t.used < used;
            assert_true(table_maintain(&r.t));
        } else {
            assert_int_equal(table_insert(&r.t, &churn[i]), TABLE_OK);
            afsm_uuid copy = churn[i];
            assert_int_equal(table_insert(&r.t, &copy), TABLE_EXISTS);
        }
        present[i] = !present[i];
        assert_int_equal(map_slots(&r.t), 64);
        wrong = check_table(&r.t, churn, present, RUN_CHURN, RUN_GROUPS, why, sizeof(why));
        for (int g = 0; wrong == NULL && g < RUN_GROUPS; g++)
            if (table_get(&r.t, &r.stable[g]) != &r.stable[g])
                wrong = "a stable key is lost";
    }
    long passes = stop_readers(&r, readers) - passes_before;
    print_message("%ld steps (%ld removals emptied slots), %ld reader passes, %ld misses\n", steps, emptied, passes,
                  atomic_load(&r.misses));
    if (wrong != NULL)
        fail_msg("step %ld: %s", steps, wrong);
    assert_int_equal(atomic_load(&r.misses), 0);
    assert_true(emptied > 0);
    assert_true(passes >= 200);
    table_destroy(&r.t);
    table_hash_override = NULL;
    epoch_writer_retire(defer);
}

/* Maps that grow and shrink (by keys, table_maintain after each removal)
 * under readers, on real hashes and on 32 colliding ones (clusters that
 * merge and wrap): waves of keys in and out, each wave's removals in a
 * random order so that many end runs. Stable keys must stay found and
 * walked once; the writer checks the table every few steps. */
enum { WAVE_POOL = 600, WAVE_STABLE = 8 };

static void readers_race_waves(table_hash_fn *hash, const char *what)
{
    static runs_race r;
    static afsm_uuid pool[WAVE_POOL];
    static bool present[WAVE_POOL];
    ck_epoch_record_t *defer = epoch_writer_record();
    assert_non_null(defer);
    table_hash_override = hash;
    uint64_t rng = 0xd1b54a32d192ed03;
    assert_true(table_init(&r.t, TABLE_KEY_UUID, 16, 3, defer));
    r.stable_count = WAVE_STABLE;
    for (int i = 0; i < WAVE_STABLE; i++) {
        uint64_t halves[2] = {next_random(&rng), next_random(&rng)};
        memcpy(r.stable[i].bytes, halves, 16);
        assert_int_equal(table_insert(&r.t, &r.stable[i]), TABLE_OK);
        r.absent[i] = r.stable[i];
        r.absent[i].bytes[0] ^= 0x80; /* another key, the same hash (few_hashes) */
    }
    for (int i = 0; i < WAVE_POOL; i++) {
        uint64_t halves[2] = {next_random(&rng), next_random(&rng)};
        memcpy(pool[i].bytes, halves, 16);
        present[i] = false;
    }
    pthread_t readers[2];
    start_readers(&r, readers);
    uint64_t deadline = real_ns() + (uint64_t)READ_DEADLINE / 2 * SEC;
    long steps = 0, shrinks = 0, growths = 0, passes_before = atomic_load(&r.passes);
    char why[160];
    const char *wrong = NULL;
    int order[WAVE_POOL];
    for (int wave = 0;
         wrong == NULL && (wave < 12 || atomic_load(&r.passes) < passes_before + 100) && !deadline_passed(deadline);
         wave++) {
        /* Up to a random height, then down to a random floor, in a random
         * order each way. */
        int height = 64 + (int)(next_random(&rng) % (WAVE_POOL - 64));
        for (int i = 0; i < WAVE_POOL; i++)
            order[i] = i;
        for (int i = WAVE_POOL - 1; i > 0; i--) {
            int j = (int)(next_random(&rng) % (uint64_t)(i + 1)), x = order[i];
            order[i] = order[j];
            order[j] = x;
        }
        for (int pass = 0; pass < 2 && wrong == NULL; pass++) {
            int floor = (int)(next_random(&rng) % 8);
            for (int n = 0; n < WAVE_POOL && wrong == NULL; n++, steps++) {
                int i = order[n];
                uint64_t before = map_slots(&r.t);
                if (pass == 0 && n < height && !present[i]) {
                    assert_int_equal(table_insert(&r.t, &pool[i]), TABLE_OK);
                    present[i] = true;
                } else if (pass == 1 && present[i] && n >= floor) {
                    assert_true(table_remove(&r.t, &pool[i]));
                    present[i] = false;
                    assert_true(table_maintain(&r.t));
                }
                shrinks += map_slots(&r.t) < before;
                growths += map_slots(&r.t) > before;
                if (steps % 16 == 0)
                    wrong = check_table(&r.t, pool, present, WAVE_POOL, WAVE_STABLE, why, sizeof(why));
            }
        }
        if (wrong == NULL)
            wrong = check_table(&r.t, pool, present, WAVE_POOL, WAVE_STABLE, why, sizeof(why));
    }
    long passes = stop_readers(&r, readers) - passes_before;
    print_message("%s: %ld steps, %ld growths, %ld shrinks, %ld reader passes, %ld misses\n", what, steps, growths,
                  shrinks, passes, atomic_load(&r.misses));
    if (wrong != NULL)
        fail_msg("%s, step %ld: %s", what, steps, wrong);
    assert_int_equal(atomic_load(&r.misses), 0);
    assert_true(shrinks > 0 && growths > 0);
    assert_true(passes >= 100);
    table_destroy(&r.t);
    table_hash_override = NULL;
    epoch_writer_retire(defer);
}

static void test_readers_race_growth_and_shrinking_waves(void **state)
{
    (void)state;
    readers_race_waves(NULL, "real hash");
    readers_race_waves(few_hashes, "32 hashes");
}

/* ---- what resizing costs -------------------------------------------------- */

typedef struct sized {
    table t;
    afsm_uuid *keys;
    bool *present;
    int n;          /* keys present: keys[0, n) */
    uint64_t ops;   /* inserts and removals */
    uint64_t slots; /* slots of the maps replaced and of their replacements */
    uint64_t replaced;
} sized;

static void note_replacement(sized *s, table_map *before)
{
    table_map *after = atomic_load(&s->t.map);
    if (after != before) {
        s->slots += before->mask + 1 + after->mask + 1;
        s->replaced++;
    }
}

/* Keys [0, n) are present: one more in, or the last out (then maintain,
 * as the engine's delete does). */
static void grow_to(sized *s, int n)
{
    while (s->n < n) {
        table_map *before = atomic_load(&s->t.map);
        assert_int_equal(table_insert(&s->t, &s->keys[s->n]), TABLE_OK);
        s->n++;
        s->ops++;
        note_replacement(s, before);
    }
    while (s->n > n) {
        table_map *before = atomic_load(&s->t.map);
        s->n--;
        assert_true(table_remove(&s->t, &s->keys[s->n]));
        assert_true(table_maintain(&s->t));
        s->ops++;
        note_replacement(s, before);
    }
}

/* The sequences that replace maps most often: keys swinging between the
 * growth point of each size and the shrink point of the doubled map, and
 * keys hovering one step either side of either point. A rebuild of an
 * S-slot map costs O(S) (a new map zeroed, the old one scanned), so each
 * must follow Omega(S) operations: the slots both maps of every
 * replacement hold, over the operations, must stay a small constant (12
 * for the swing: 6S each S/2 operations). Fails on a policy whose shrink
 * and growth points are too close (a map shrunk to the size whose growth
 * point it sits at doubles again on the next insert). */
static void test_resizing_is_amortised_on_worst_sequences(void **state)
{
    (void)state;
    ck_epoch_record_t *defer = epoch_writer_record();
    assert_non_null(defer);
    enum { MOST = 4200 };
    static afsm_uuid keys[MOST];
    uint64_t rng = 0x8cb92ba72f3d8dd7;
    for (int i = 0; i < MOST; i++) {
        uint64_t halves[2] = {next_random(&rng), next_random(&rng)};
        memcpy(keys[i].bytes, halves, 16);
    }
    table_hash_override = NULL;
    for (int pattern = 0; pattern < 3; pattern++) {
        sized s = {.keys = keys};
        assert_true(table_init(&s.t, TABLE_KEY_UUID, 16, 9, defer));
        for (uint64_t slots = 32; slots <= 4096; slots <<= 1) {
            int grows_at = (int)(slots / 2) + 1; /* the insert that doubles a map of `slots` */
            int shrinks_at = (int)(slots / 4);   /* the removal that shrinks the doubled map */
            for (int round = 0; round < 20; round++) {
                switch (pattern) {
                case 0: /* swing */
                    grow_to(&s, grows_at);
                    grow_to(&s, shrinks_at);
                    break;
                case 1: /* hover at the growth point */
                    grow_to(&s, grows_at);
                    grow_to(&s, grows_at - 1);
                    break;
                default: /* hover at the shrink point */
                    grow_to(&s, shrinks_at + 1);
                    grow_to(&s, shrinks_at);
                }
            }
        }
        double per_op = (double)s.slots / (double)s.ops;
        print_message("pattern %d: %llu operations, %llu maps replaced, %.2f slots rebuilt per operation\n", pattern,
                      (unsigned long long)s.ops, (unsigned long long)s.replaced, per_op);
        if (per_op > 24)
            fail_msg("pattern %d: %.2f slots rebuilt per operation (%llu maps replaced in %llu operations)", pattern,
                     per_op, (unsigned long long)s.replaced, (unsigned long long)s.ops);
        for (int i = 0; i < MOST; i++)
            assert_ptr_equal(table_get(&s.t, &keys[i]), i < s.n ? (const void *)&keys[i] : NULL);
        table_destroy(&s.t);
    }
    epoch_writer_retire(defer);
}

/* A shrink that cannot allocate returns false and leaves the map, `used`
 * and every key as they were; the table stays usable (inserts, removals
 * that end runs, lookups), and the next maintain with memory shrinks it.
 * A presized map is never shrunk below its presized size, however few its
 * keys, and a grown one comes back down to exactly that size. */
static void test_shrink_without_memory_and_presized_floor(void **state)
{
    (void)state;
    ck_epoch_record_t *defer = epoch_writer_record();
    assert_non_null(defer);
    enum { KEYS = 1500 };
    static afsm_uuid keys[KEYS];
    static bool present[KEYS];
    uint64_t rng = 0x2545f4914f6cdd1d;
    for (int i = 0; i < KEYS; i++) {
        uint64_t halves[2] = {next_random(&rng), next_random(&rng)};
        memcpy(keys[i].bytes, halves, 16);
        present[i] = false;
    }
    char why[160];
    table t;
    assert_true(table_init(&t, TABLE_KEY_UUID, 16, 11, defer));
    for (int i = 0; i < KEYS; i++) {
        assert_int_equal(table_insert(&t, &keys[i]), TABLE_OK);
        present[i] = true;
    }
    assert_int_equal(map_slots(&t), 4096);
    /* Down to 40 keys with no memory for any shrink. */
    int refused = 0;
    for (int i = 40; i < KEYS; i++) {
        assert_true(table_remove(&t, &keys[i]));
        present[i] = false;
        table_map *before = atomic_load(&t.map);
        uint64_t used = t.used;
        alloc_fail_after_on_this_thread(0);
        bool ok = table_maintain(&t);
        alloc_fail_after_on_this_thread(-1);
        if (atomic_load(&t.map) != before || t.used != used)
            fail_msg("a maintain without memory changed the table (%zu keys)", table_count(&t));
        refused += !ok;
    }
    assert_true(refused > 0); /* it did try to shrink (from 512 keys down) */
    assert_int_equal(map_slots(&t), 4096);
    const char *wrong = check_table(&t, keys, present, KEYS, 0, why, sizeof(why));
    if (wrong != NULL)
        fail_msg("after failed shrinks: %s", wrong);
    alloc_fail_after_on_this_thread(0);
    assert_false(table_maintain(&t));
    alloc_fail_after_on_this_thread(-1);
    /* Still usable: churn at its size. */
    for (int i = 40; i < 140; i++) {
        assert_int_equal(table_insert(&t, &keys[i]), TABLE_OK);
        assert_true(table_remove(&t, &keys[i - 20]));
        present[i] = true;
        present[i - 20] = false;
    }
    wrong = check_table(&t, keys, present, KEYS, 0, why, sizeof(why));
    if (wrong != NULL)
        fail_msg("after churn on the unshrunk map: %s", wrong);
    assert_true(table_maintain(&t));
    assert_int_equal(map_slots(&t), 256); /* 40 keys at a load of 1/4 or less */
    wrong = check_table(&t, keys, present, KEYS, 0, why, sizeof(why));
    if (wrong != NULL)
        fail_msg("after the shrink: %s", wrong);
    table_destroy(&t);

    /* Presized for 1024 slots: grown to 4096, then drained to nothing,
     * most of it before a maintain runs (as after refused ones), so that
     * the first shrink has few keys for the map it leaves. */
    assert_true(table_init(&t, TABLE_KEY_UUID, 1024, 11, defer));
    for (int i = 0; i < KEYS; i++)
        assert_int_equal(table_insert(&t, &keys[i]), TABLE_OK);
    assert_int_equal(map_slots(&t), 4096);
    for (int i = 0; i < KEYS; i++) {
        assert_true(table_remove(&t, &keys[i]));
        if (i < KEYS - 100)
            continue;
        assert_true(table_maintain(&t));
        if (map_slots(&t) != 1024)
            fail_msg("%zu keys in a map of %llu slots presized for 1024", table_count(&t),
                     (unsigned long long)map_slots(&t));
    }
    assert_int_equal(map_slots(&t), 1024);
    assert_int_equal(t.used, 0);
    assert_int_equal(table_count(&t), 0);
    table_destroy(&t);
    epoch_writer_retire(defer);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_readers_race_removals_that_end_runs),
        cmocka_unit_test(test_readers_race_growth_and_shrinking_waves),
        cmocka_unit_test(test_resizing_is_amortised_on_worst_sequences),
        cmocka_unit_test(test_shrink_without_memory_and_presized_floor),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
