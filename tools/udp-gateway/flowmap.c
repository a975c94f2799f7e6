/*
 * flowmap.c: the per-thread connection-id map (see flowmap.h for why it
 * exists and what it costs). Single-threaded by construction.
 */
#include "flowmap.h"

#include <stdlib.h>
#include <string.h>

static const afsm_uuid nil_id;

static int is_empty(const flow *f)
{
    return memcmp(&f->connection_id, &nil_id, sizeof(nil_id)) == 0;
}

/* Connection ids are UUIDs: v7 ids share their time bits, so both halves
 * are mixed before the multiply spreads them over the table. */
static size_t hash_id(const afsm_uuid *id)
{
    uint64_t hi, lo;
    memcpy(&hi, id->bytes, 8);
    memcpy(&lo, id->bytes + 8, 8);
    uint64_t h = (hi ^ (lo * UINT64_C(0x9e3779b97f4a7c15))) * UINT64_C(0xff51afd7ed558ccd);
    return (size_t)(h ^ (h >> 32));
}

int flowmap_init(flowmap *m, size_t capacity_hint)
{
    size_t capacity = 16;
    while (capacity < capacity_hint * 2)
        capacity <<= 1;
    m->slots = calloc(capacity, sizeof(flow));
    if (m->slots == NULL)
        return -1;
    m->mask = capacity - 1;
    m->count = 0;
    return 0;
}

void flowmap_free(flowmap *m)
{
    free(m->slots);
    m->slots = NULL;
    m->count = 0;
}

flow *flowmap_find(flowmap *m, const afsm_uuid *id)
{
    for (size_t i = hash_id(id) & m->mask;; i = (i + 1) & m->mask) {
        flow *f = &m->slots[i];
        if (memcmp(&f->connection_id, id, sizeof(*id)) == 0)
            return f;
        if (is_empty(f))
            return NULL;
    }
}

static flow *place(flowmap *m, const afsm_uuid *id)
{
    size_t i = hash_id(id) & m->mask;
    while (!is_empty(&m->slots[i]))
        i = (i + 1) & m->mask;
    return &m->slots[i];
}

static int grow(flowmap *m)
{
    flowmap bigger = {.slots = calloc((m->mask + 1) * 2, sizeof(flow)), .mask = m->mask * 2 + 1, .count = m->count};
    if (bigger.slots == NULL)
        return -1;
    for (size_t i = 0; i <= m->mask; i++)
        if (!is_empty(&m->slots[i]))
            *place(&bigger, &m->slots[i].connection_id) = m->slots[i];
    free(m->slots);
    *m = bigger;
    return 0;
}

flow *flowmap_insert(flowmap *m, const afsm_uuid *id)
{
    if ((m->count + 1) * 2 > m->mask + 1 && grow(m) != 0)
        return NULL;
    flow *f = place(m, id);
    memset(f, 0, sizeof(*f));
    f->connection_id = *id;
    m->count++;
    return f;
}

/* Backward-shift deletion: every later entry of the probe run whose home
 * slot lies at or before the hole moves into it, so a probe never meets a
 * gap before its key. */
void flowmap_remove(flowmap *m, flow *f)
{
    size_t hole = (size_t)(f - m->slots);
    for (size_t i = (hole + 1) & m->mask;; i = (i + 1) & m->mask) {
        flow *next = &m->slots[i];
        if (is_empty(next))
            break;
        size_t home = hash_id(&next->connection_id) & m->mask;
        /* Moves if home is not in (hole, i], cyclically. */
        if (((i - home) & m->mask) >= ((i - hole) & m->mask)) {
            m->slots[hole] = *next;
            hole = i;
        }
    }
    memset(&m->slots[hole], 0, sizeof(flow));
    m->count--;
}
