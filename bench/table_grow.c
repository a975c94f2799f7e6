/*
 * table_grow.c: a table of session-id keys living in records scattered over
 * a heap much larger than the cache, filled to the point where the next
 * insert rebuilds it (table_grow_bench.cc times that insert). A rebuild
 * hashes every key, so reads every key's record, under the shard's lock.
 */
#include "table_grow.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mem/table.h"
#include "util/epoch.h"

#define RECORD_BYTES 256 /* about what a session takes (192-byte record, tables, user entry) */

struct table_grow {
    char *records;
    size_t *order; /* record i's key is the order[i]-th inserted */
    size_t keys;
    ck_epoch_record_t *writer;
    table table;
    bool live;
};

table_grow *table_grow_new(size_t keys)
{
    if (keys == 0 || keys > SIZE_MAX / RECORD_BYTES)
        return NULL;
    table_grow *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return NULL;
    g->keys = keys;
    g->records = aligned_alloc(64, keys * RECORD_BYTES);
    g->order = malloc(keys * sizeof(*g->order));
    g->writer = epoch_writer_record();
    if (g->records == NULL || g->order == NULL || g->writer == NULL) {
        table_grow_free(g);
        return NULL;
    }
    /* Keys inserted in a random order of addresses, as a churned slab
     * leaves them; distinct 16-byte ids. */
    uint64_t x = 0x9E3779B97F4A7C15u;
    for (size_t i = 0; i < keys; i++)
        g->order[i] = i;
    for (size_t i = keys - 1; i > 0; i--) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t j = (size_t)(x % (i + 1)), t = g->order[i];
        g->order[i] = g->order[j], g->order[j] = t;
    }
    for (size_t i = 0; i < keys; i++) {
        uint64_t id[2] = {i * 0x9E3779B97F4A7C15u + 1, ~i * 0xC2B2AE3D27D4EB4Fu};
        memcpy(g->records + i * RECORD_BYTES, id, sizeof(id));
    }
    return g;
}

static void drop_table(table_grow *g)
{
    if (g->live)
        table_destroy(&g->table);
    g->live = false;
}

bool table_grow_fill(table_grow *g, size_t count)
{
    drop_table(g);
    if (count > g->keys || !table_init(&g->table, TABLE_KEY_UUID, 16, 7, g->writer))
        return false;
    g->live = true;
    for (size_t i = 0; i < count; i++)
        if (table_insert(&g->table, g->records + g->order[i] * RECORD_BYTES) != TABLE_OK)
            return false;
    /* Free the maps the growth so far replaced. */
    epoch_drain(g->writer);
    return true;
}

bool table_grow_insert(table_grow *g, size_t index)
{
    if (!g->live || index >= g->keys)
        return false;
    return table_insert(&g->table, g->records + g->order[index] * RECORD_BYTES) == TABLE_OK;
}

void table_grow_free(table_grow *g)
{
    if (g == NULL)
        return;
    drop_table(g);
    if (g->writer != NULL)
        epoch_writer_retire(g->writer);
    free(g->records);
    free(g->order);
    free(g);
}
