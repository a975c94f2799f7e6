/*
 * ck_floor.c: bare ck_ht / ck_hs tables for the floor benchmark
 * (ck_floor.h). Allocation hooks count bytes, so the table's own footprint
 * per entry is exact rather than read from RSS.
 */
#include "ck_floor.h"

#include <ck_hs.h>
#include <ck_ht.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct floor_table {
    int is_hs;
    ck_ht_t ht;
    ck_hs_t hs;
};

/* Only one table is alive at a time in the harness; a plain counter is
 * enough (writes happen single-threaded, during the build). */
static size_t allocated_bytes;

static void *count_malloc(size_t size)
{
    allocated_bytes += size;
    return malloc(size);
}

static void count_free(void *p, size_t size, bool defer)
{
    (void)defer; /* no concurrent readers while a table is built or freed */
    allocated_bytes -= size;
    free(p);
}

static void *count_realloc(void *p, size_t old_size, size_t new_size, bool defer)
{
    (void)defer;
    allocated_bytes += new_size - old_size;
    return realloc(p, new_size);
}

static struct ck_malloc counting = {.malloc = count_malloc, .realloc = count_realloc, .free = count_free};

/* The engine's own mixer (core/mem/store.c) over both halves of the key:
 * ck_hs wants a hash callback, and murmur would only make it slower. */
static unsigned long hs_hash(const void *object, unsigned long seed)
{
    uint64_t a, b;
    memcpy(&a, object, 8);
    memcpy(&b, (const char *)object + 8, 8);
    uint64_t x = a ^ (b * UINT64_C(0x9e3779b97f4a7c15)) ^ seed;
    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x *= UINT64_C(0xc4ceb9fe1a85ec53);
    x ^= x >> 33;
    return (unsigned long)x;
}

static bool hs_compare(const void *a, const void *b)
{
    return memcmp(a, b, 16) == 0;
}

floor_table *floor_build(const char *kind, const uint8_t (*keys)[16], size_t n)
{
    floor_table *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->is_hs = strcmp(kind, "ck_hs") == 0;
    allocated_bytes = 0;
    bool ok;
    if (t->is_hs)
        ok = ck_hs_init(&t->hs, CK_HS_MODE_OBJECT | CK_HS_MODE_SPMC | CK_HS_MODE_DELETE, hs_hash, hs_compare, &counting,
                        n, 0x5eed);
    else
        ok = ck_ht_init(&t->ht, CK_HT_MODE_BYTESTRING | CK_HT_WORKLOAD_DELETE, NULL, &counting, n, 0x5eed);
    if (!ok) {
        free(t);
        return NULL;
    }
    for (size_t i = 0; i < n && ok; i++) {
        if (t->is_hs) {
            unsigned long h = CK_HS_HASH(&t->hs, hs_hash, keys[i]);
            ok = ck_hs_put(&t->hs, h, keys[i]);
        } else {
            ck_ht_hash_t h;
            ck_ht_entry_t e;
            ck_ht_hash(&h, &t->ht, keys[i], 16);
            ck_ht_entry_set(&e, h, keys[i], 16, (void *)keys[i]);
            ok = ck_ht_put_spmc(&t->ht, h, &e);
        }
    }
    if (!ok) {
        floor_destroy(t);
        return NULL;
    }
    return t;
}

const void *floor_get(floor_table *t, const uint8_t *key)
{
    if (t->is_hs)
        return ck_hs_get(&t->hs, CK_HS_HASH(&t->hs, hs_hash, key), key);
    ck_ht_hash_t h;
    ck_ht_entry_t e;
    ck_ht_hash(&h, &t->ht, key, 16);
    ck_ht_entry_key_set(&e, key, 16);
    if (!ck_ht_get_spmc(&t->ht, h, &e))
        return NULL;
    return ck_ht_entry_value(&e);
}

size_t floor_table_bytes(const floor_table *t)
{
    (void)t;
    return allocated_bytes;
}

void floor_destroy(floor_table *t)
{
    if (t == NULL)
        return;
    if (t->is_hs)
        ck_hs_destroy(&t->hs);
    else
        ck_ht_destroy(&t->ht);
    free(t);
}

/* ---- the get + copy floor --------------------------------------------- */

struct floor_records {
    ck_hs_t hs;
    uint8_t **records; /* n records of FLOOR_RECORD_BYTES, one malloc each */
    size_t n;
    uint8_t *users; /* NULL, or the user entries (FLOOR_USER_BYTES each) */
};

/* Where a record keeps its user entry's pointer: the engine record's
 * offset of it (core/mem/session.h), in the first line. */
#define FLOOR_USER_POINTER_AT 56

/* The user entries of n records, records_per_user to a user, each holding
 * its id as the bench names users ("user-" and 8 digits, its NUL, zeros). */
static uint8_t *users_build(size_t n, size_t records_per_user)
{
    size_t count = (n + records_per_user - 1) / records_per_user;
    uint8_t *users = aligned_alloc(64, count * FLOOR_USER_BYTES);
    if (users == NULL)
        return NULL;
    memset(users, 0, count * FLOOR_USER_BYTES);
    for (size_t u = 0; u < count; u++) {
        char *id = (char *)users + u * FLOOR_USER_BYTES + FLOOR_USER_ID_AT;
        memcpy(id, "user-", 5);
        for (size_t i = 12, v = u; i >= 5; i--, v /= 10)
            id[i] = (char)('0' + v % 10);
    }
    return users;
}

floor_records *floor_records_build(const uint8_t (*keys)[16], size_t n, size_t records_per_user)
{
    floor_records *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->records = calloc(n, sizeof(*f->records));
    if (records_per_user > 0 && f->records != NULL && (f->users = users_build(n, records_per_user)) == NULL) {
        free(f->records);
        free(f);
        return NULL;
    }
    if (f->records == NULL || !ck_hs_init(&f->hs, CK_HS_MODE_OBJECT | CK_HS_MODE_SPMC | CK_HS_MODE_DELETE, hs_hash,
                                          hs_compare, &counting, n, 0x5eed)) {
        free(f->records);
        free(f->users);
        free(f);
        return NULL;
    }
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
        /* One malloc per record, in creation order, as the engine makes
         * them: the allocator decides where they land. */
        uint8_t *r = malloc(FLOOR_RECORD_BYTES);
        if (r == NULL) {
            ok = false;
            break;
        }
        memset(r, (int)(i & 0xff), FLOOR_RECORD_BYTES);
        memcpy(r, keys[i], 16); /* the key is the record's first field, as the engine's id is */
        if (f->users != NULL) {
            const uint8_t *user = f->users + i / records_per_user * FLOOR_USER_BYTES;
            memcpy(r + FLOOR_USER_POINTER_AT, &user, sizeof(user));
        }
        f->records[f->n++] = r;
        ok = ck_hs_put(&f->hs, CK_HS_HASH(&f->hs, hs_hash, r), r);
    }
    if (!ok) {
        floor_records_destroy(f);
        return NULL;
    }
    return f;
}

int floor_get_copy(floor_records *f, const uint8_t *key, void *out)
{
    const uint8_t *r = ck_hs_get(&f->hs, CK_HS_HASH(&f->hs, hs_hash, key), key);
    if (r == NULL)
        return 0;
    if (f->users == NULL) {
        memcpy(out, r, FLOOR_RECORD_BYTES);
        return 1;
    }
    /* The entry is a miss of its own behind the record's first line (which
     * the probe's key compare brought in): start it before the record's
     * copy waits for its other two lines. */
    const uint8_t *user;
    memcpy(&user, r + FLOOR_USER_POINTER_AT, sizeof(user));
    __builtin_prefetch(user + FLOOR_USER_ID_AT);
    memcpy(out, r, FLOOR_RECORD_BYTES);
    memcpy((uint8_t *)out + FLOOR_RECORD_BYTES, user + FLOOR_USER_ID_AT, FLOOR_USER_ID_COPY);
    return 1;
}

size_t floor_get_copy_batch(floor_records *f, const uint8_t *const *keys, size_t n, void *const *outs)
{
    const uint8_t *r[FLOOR_BATCH];
    unsigned long h[FLOOR_BATCH];
    size_t found = 0;
    if (n > FLOOR_BATCH)
        n = FLOOR_BATCH;
    for (size_t i = 0; i < n; i++)
        h[i] = CK_HS_HASH(&f->hs, hs_hash, keys[i]);
    for (size_t i = 0; i < n; i++)
        r[i] = ck_hs_get(&f->hs, h[i], keys[i]);
    for (size_t i = 0; i < n; i++) {
        if (r[i] == NULL)
            continue;
        for (size_t line = 0; line < FLOOR_RECORD_BYTES; line += 64)
            __builtin_prefetch(r[i] + line);
    }
    for (size_t i = 0; i < n; i++) {
        if (r[i] == NULL)
            continue;
        memcpy(outs[i], r[i], FLOOR_RECORD_BYTES);
        found++;
    }
    return found;
}

void floor_records_destroy(floor_records *f)
{
    if (f == NULL)
        return;
    ck_hs_destroy(&f->hs);
    for (size_t i = 0; i < f->n; i++)
        free(f->records[i]);
    free(f->records);
    free(f->users);
    free(f);
}
