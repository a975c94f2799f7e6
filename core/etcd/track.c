/*
 * track.c: the striped table of track.h: per stripe, chained buckets that
 * double when the stripe holds more entries than buckets. See track.h for
 * the locking.
 */
#include <stdlib.h>
#include <string.h>

#include "etcd/track.h"

typedef struct own_notes {
    int64_t first_seq, last_seq; /* the lowest and highest numbers noted (others between: other sessions') */
    size_t sets;
    struct {
        int64_t seq;
        afsm_stats from;
    } set[TRACK_SET_NOTES_MAX];
} own_notes;

struct track_entry {
    track_entry *next;
    afsm_uuid id;
    track_info info;
    own_notes *notes; /* NULL: no write of this node under way or unanswered */
};

static uint64_t id_hash(const afsm_uuid *id)
{
    /* A v7 id's tail is random. */
    uint64_t x;
    memcpy(&x, id->bytes + 8, sizeof(x));
    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    return x;
}

static track_stripe *stripe_of(track *t, const afsm_uuid *id, uint64_t *hash)
{
    *hash = id_hash(id);
    return &t->stripes[*hash % TRACK_STRIPES];
}

static track_entry **slot_of(track_stripe *s, uint64_t hash, const afsm_uuid *id)
{
    track_entry **p = &s->buckets[(hash / TRACK_STRIPES) & (s->bucket_count - 1)];
    while (*p != NULL && memcmp(&(*p)->id, id, sizeof(*id)) != 0)
        p = &(*p)->next;
    return p;
}

afsm_status track_init(track *t)
{
    memset(t, 0, sizeof(*t));
    for (unsigned i = 0; i < TRACK_STRIPES; i++) {
        track_stripe *s = &t->stripes[i];
        pthread_mutex_init(&s->lock, NULL);
        s->bucket_count = 16;
        s->buckets = calloc(s->bucket_count, sizeof(*s->buckets));
        if (s->buckets == NULL) {
            track_destroy(t);
            return AFSM_ENOMEM;
        }
    }
    return AFSM_OK;
}

void track_destroy(track *t)
{
    for (unsigned i = 0; i < TRACK_STRIPES; i++) {
        track_stripe *s = &t->stripes[i];
        for (size_t b = 0; s->buckets != NULL && b < s->bucket_count; b++) {
            for (track_entry *e = s->buckets[b], *next; e != NULL; e = next) {
                next = e->next;
                free(e->notes);
                free(e);
            }
        }
        free(s->buckets);
        s->buckets = NULL;
        pthread_mutex_destroy(&s->lock);
    }
}

/* Doubles the stripe's buckets; on no memory it keeps the longer chains. */
static void grow(track_stripe *s)
{
    size_t count = s->bucket_count * 2;
    track_entry **buckets = calloc(count, sizeof(*buckets));
    if (buckets == NULL)
        return;
    for (size_t b = 0; b < s->bucket_count; b++) {
        for (track_entry *e = s->buckets[b], *next; e != NULL; e = next) {
            next = e->next;
            track_entry **head = &buckets[(id_hash(&e->id) / TRACK_STRIPES) & (count - 1)];
            e->next = *head;
            *head = e;
        }
    }
    free(s->buckets);
    s->buckets = buckets;
    s->bucket_count = count;
}

afsm_status track_put(track *t, const afsm_uuid *id, const track_info *info)
{
    uint64_t hash;
    track_stripe *s = stripe_of(t, id, &hash);
    track_entry *fresh = NULL;
    pthread_mutex_lock(&s->lock);
    track_entry **p = slot_of(s, hash, id);
    while (*p == NULL && fresh == NULL) {
        /* Only a new entry takes memory, allocated outside the lock:
         * replacing one cannot fail, so applying a record to a session
         * already here never drops it from the replica for want of memory
         * (replica.c, etcd_apply_put; test_etcd_review_flush.c fails every
         * allocation of a pass in turn). */
        pthread_mutex_unlock(&s->lock);
        fresh = malloc(sizeof(*fresh));
        if (fresh == NULL)
            return AFSM_ENOMEM;
        pthread_mutex_lock(&s->lock);
        p = slot_of(s, hash, id);
    }
    if (*p != NULL) {
        track_info *old = &(*p)->info;
        int has_reason = old->has_reason;
        track_info keep = *old;
        *old = *info;
        old->inflight = keep.inflight; /* the writers' own counts, not the record's */
        old->unfired = keep.unfired;
        /* The renewer's mark stays until it is done (renew.c); a lease
         * found gone stays gone while the record keeps that lease. */
        old->renew_queued = keep.renew_queued;
        old->lease_gone = keep.lease_gone && keep.lease == info->lease;
        own_notes *dropped = (*p)->notes; /* a record applied: see track.h */
        (*p)->notes = NULL;
        if (has_reason && !info->has_reason) {
            old->has_reason = 1;
            old->why = keep.why;
            memcpy(old->reason, keep.reason, keep.reason_len + 1);
            old->reason_len = keep.reason_len;
        }
        pthread_mutex_unlock(&s->lock);
        free(dropped);
        free(fresh);
        return AFSM_OK;
    }
    fresh->id = *id;
    fresh->info = *info;
    fresh->notes = NULL;
    fresh->next = NULL;
    *p = fresh;
    if (++s->count > s->bucket_count)
        grow(s);
    pthread_mutex_unlock(&s->lock);
    return AFSM_OK;
}

int track_get(track *t, const afsm_uuid *id, track_info *out)
{
    uint64_t hash;
    track_stripe *s = stripe_of(t, id, &hash);
    pthread_mutex_lock(&s->lock);
    track_entry *e = *slot_of(s, hash, id);
    if (e != NULL && out != NULL)
        *out = e->info;
    pthread_mutex_unlock(&s->lock);
    return e != NULL;
}

int track_remove(track *t, const afsm_uuid *id, track_info *out)
{
    uint64_t hash;
    track_stripe *s = stripe_of(t, id, &hash);
    pthread_mutex_lock(&s->lock);
    track_entry **p = slot_of(s, hash, id);
    track_entry *e = *p;
    if (e != NULL) {
        *p = e->next;
        s->count--;
        if (out != NULL)
            *out = e->info;
    }
    pthread_mutex_unlock(&s->lock);
    if (e != NULL)
        free(e->notes);
    free(e);
    return e != NULL;
}

void track_set_reason(track *t, const afsm_uuid *id, afsm_delete_reason why, const char *reason, size_t reason_len)
{
    uint64_t hash;
    track_stripe *s = stripe_of(t, id, &hash);
    if (reason_len > AFSM_REASON_MAX)
        reason_len = AFSM_REASON_MAX;
    pthread_mutex_lock(&s->lock);
    track_entry *e = *slot_of(s, hash, id);
    if (e != NULL) {
        e->info.has_reason = 1;
        e->info.why = why;
        memcpy(e->info.reason, reason, reason_len);
        e->info.reason[reason_len] = '\0';
        e->info.reason_len = reason_len;
    }
    pthread_mutex_unlock(&s->lock);
}

int track_renew_due(track *t, const afsm_uuid *id, uint64_t now_ns, int64_t *lease, uint64_t *period_ns)
{
    uint64_t hash;
    track_stripe *s = stripe_of(t, id, &hash);
    int due = TRACK_RENEW_NOT_DUE;
    pthread_mutex_lock(&s->lock);
    track_entry *e = *slot_of(s, hash, id);
    if (e != NULL && e->info.lease_gone) {
        due = TRACK_RENEW_GONE;
    } else if (e != NULL && !e->info.renew_queued && now_ns - e->info.renewed_ns >= e->info.renew_period_ns &&
               e->info.lease != 0) {
        /* Counted from now, not from when the renewer sends: the send is
         * later, so the lease lives at least TTL past this heartbeat. */
        e->info.renewed_ns = now_ns;
        e->info.renew_queued = 1;
        *lease = e->info.lease;
        *period_ns = e->info.renew_period_ns;
        due = TRACK_RENEW_DUE;
    }
    pthread_mutex_unlock(&s->lock);
    return due;
}

void track_renew_done(track *t, const afsm_uuid *id, int64_t lease, int outcome)
{
    uint64_t hash;
    track_stripe *s = stripe_of(t, id, &hash);
    pthread_mutex_lock(&s->lock);
    track_entry *e = *slot_of(s, hash, id);
    if (e != NULL) {
        e->info.renew_queued = 0;
        /* A failure is due again a quarter period later, not at the next
         * heartbeat: with etcd away the renewer would spin on every
         * heartbeat's renewal. The lease (TTL: timeout + one period)
         * outlives several such retries. */
        if (outcome == TRACK_RENEW_FAILED)
            e->info.renewed_ns -= e->info.renew_period_ns - e->info.renew_period_ns / 4;
        else if (outcome == TRACK_LEASE_GONE && e->info.lease == lease)
            e->info.lease_gone = 1;
    }
    pthread_mutex_unlock(&s->lock);
}

int track_activation_due(track *t, const afsm_uuid *id, uint64_t now_ns)
{
    uint64_t hash;
    track_stripe *s = stripe_of(t, id, &hash);
    pthread_mutex_lock(&s->lock);
    track_entry *e = *slot_of(s, hash, id);
    int due = e != NULL && now_ns >= e->info.activate_after_ns;
    pthread_mutex_unlock(&s->lock);
    return due;
}

void track_activation_failed(track *t, const afsm_uuid *id, uint64_t now_ns)
{
    uint64_t hash;
    track_stripe *s = stripe_of(t, id, &hash);
    pthread_mutex_lock(&s->lock);
    track_entry *e = *slot_of(s, hash, id);
    if (e != NULL)
        e->info.activate_after_ns = now_ns + e->info.renew_period_ns / 4;
    pthread_mutex_unlock(&s->lock);
}

void track_set_flushed(track *t, const afsm_uuid *id, const afsm_stats *stats)
{
    uint64_t hash;
    track_stripe *s = stripe_of(t, id, &hash);
    pthread_mutex_lock(&s->lock);
    track_entry *e = *slot_of(s, hash, id);
    if (e != NULL)
        e->info.flushed = *stats;
    pthread_mutex_unlock(&s->lock);
}

afsm_status track_note_own_write(track *t, const afsm_uuid *id, int64_t seq, int set, const afsm_stats *from)
{
    uint64_t hash;
    track_stripe *s = stripe_of(t, id, &hash);
    own_notes *fresh = malloc(sizeof(*fresh)); /* outside the lock; freed if unused */
    afsm_status st = AFSM_OK;
    pthread_mutex_lock(&s->lock);
    track_entry *e = *slot_of(s, hash, id);
    if (e != NULL && e->notes == NULL) {
        if (fresh == NULL) {
            pthread_mutex_unlock(&s->lock);
            return AFSM_ENOMEM;
        }
        fresh->first_seq = fresh->last_seq = seq;
        fresh->sets = 0;
        e->notes = fresh;
        fresh = NULL;
    }
    if (e != NULL) {
        own_notes *n = e->notes;
        if (set && n->sets == TRACK_SET_NOTES_MAX) {
            st = AFSM_EUNAVAILABLE;
        } else {
            /* Threads number their writes, then note them: out of order. */
            if (seq < n->first_seq)
                n->first_seq = seq;
            if (seq > n->last_seq)
                n->last_seq = seq;
            if (set) {
                n->set[n->sets].seq = seq;
                n->set[n->sets].from = *from;
                n->sets++;
            }
        }
    }
    pthread_mutex_unlock(&s->lock);
    free(fresh);
    return st;
}

int track_own_write(track *t, const afsm_uuid *id, int64_t seq, int set, afsm_stats *from)
{
    uint64_t hash;
    track_stripe *s = stripe_of(t, id, &hash);
    int found = 0;
    pthread_mutex_lock(&s->lock);
    track_entry *e = *slot_of(s, hash, id);
    own_notes *n = e != NULL ? e->notes : NULL;
    if (n != NULL && seq >= n->first_seq && seq <= n->last_seq) {
        found = !set;
        for (size_t i = 0; i < n->sets && !found; i++)
            if (n->set[i].seq == seq) {
                *from = n->set[i].from;
                found = 1;
            }
    }
    pthread_mutex_unlock(&s->lock);
    return found;
}

void track_inflight(track *t, const afsm_uuid *id, int delta)
{
    uint64_t hash;
    track_stripe *s = stripe_of(t, id, &hash);
    pthread_mutex_lock(&s->lock);
    track_entry *e = *slot_of(s, hash, id);
    if (e != NULL)
        e->info.inflight += delta;
    pthread_mutex_unlock(&s->lock);
}

void track_unfired(track *t, const afsm_uuid *id, int delta)
{
    uint64_t hash;
    track_stripe *s = stripe_of(t, id, &hash);
    pthread_mutex_lock(&s->lock);
    track_entry *e = *slot_of(s, hash, id);
    if (e != NULL)
        e->info.unfired += delta;
    pthread_mutex_unlock(&s->lock);
}

void track_each(track *t, void (*fn)(void *ctx, const afsm_uuid *id, const track_info *info), void *ctx)
{
    for (unsigned i = 0; i < TRACK_STRIPES; i++) {
        track_stripe *s = &t->stripes[i];
        pthread_mutex_lock(&s->lock);
        for (size_t b = 0; b < s->bucket_count; b++)
            for (track_entry *e = s->buckets[b]; e != NULL; e = e->next)
                fn(ctx, &e->id, &e->info);
        pthread_mutex_unlock(&s->lock);
    }
}
