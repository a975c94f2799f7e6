/*
 * store.c: the etcd store (etcd_store.h): open and close, the ops table,
 * and every write as one guarded txn.
 *
 * - create: a lease of its own (TTL: etcd_lease_ttl_s; granted ahead by
 *   leases.c's pool for timeouts of a minute or more), then one txn that
 *   puts s/, c/, u/ (and n/<slot> under a cap) only if s/ and c/ (and the
 *   slot) do not exist: a taken connection id fails with AFSM_EEXISTS on
 *   every node, and two nodes racing for a user's last slot cannot both
 *   win. Slots are keys, not a counter, because a counter would not go down
 *   when etcd expires a lease; a slot key goes with its session's lease.
 *   Concurrent creates are sent together, as nested txns of one txn
 *   ("create groups" below), each with the result it would get alone.
 * - update, token rotation (and activation by heartbeat, a stats flush):
 *   read-modify-write of the record, guarded by its mod revision, in one
 *   loop (guarded_rmw) with each operation's edit; a stale replica learns
 *   the current record from the failure branch and tries again.
 * - delete: the g/ key with the reason (same lease) and the deletion of all
 *   of the session's keys, in one txn guarded by the record's existence.
 * The writing node applies the txn's result to its replica before it
 * returns (it reads its own writes); the watch drops the echo by revision.
 *
 * Heartbeats and stats stay local. A heartbeat queues the session's lease
 * for the renewer (renew.c) at most once per timeout / 3 (track_renew_due)
 * and never waits on etcd, so lease traffic is at most 3 / timeout
 * keepalives per second per active session, and no keepalive is a raft
 * write.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "etcd/etcd_store.h"
#include "metadata.h"
#include "util/clock.h"
#include "util/errdetail.h"
#include "util/random.h"
#include "util/uuid.h"

#define DIAL_TIMEOUT_MS_DEFAULT    2000u
#define REQUEST_TIMEOUT_MS_DEFAULT 5000u
#define STATS_FLUSH_MS_DEFAULT     10000u
/* Attempts of a guarded write against a stale replica or a racing node. */
#define WRITE_ATTEMPTS 8
/* The DELETED reason of a session evicted by a create, as on the memory store. */
#define REASON_EVICTED "evicted"

typedef struct etcd_handle {
    store_handle base;
    etcd_store *es;
    store_handle *inner; /* the replica's */
    afsm_uuid id;
} etcd_handle;

int64_t etcd_lease_ttl_s(uint64_t timeout_ms)
{
    uint64_t ms = timeout_ms + timeout_ms / 3u;
    return (int64_t)((ms + 999u) / 1000u);
}

/* ---- txn building ---------------------------------------------------------------- */

static json_object *op(const char *kind, json_object *request)
{
    return etcd_with(json_object_new_object(), kind, request);
}

static json_object *op_put(const char *key, size_t key_len, const char *value, size_t value_len, int64_t lease)
{
    json_object *r = etcd_with(json_object_new_object(), "key", etcd_json_bytes(key, key_len));
    r = etcd_with(r, "value", etcd_json_bytes(value, value_len));
    if (lease != 0)
        r = etcd_with(r, "lease", etcd_json_int64(lease));
    return op("request_put", r);
}

static json_object *op_delete(const char *key, size_t key_len)
{
    return op("request_delete_range", etcd_with(json_object_new_object(), "key", etcd_json_bytes(key, key_len)));
}

static json_object *op_range(const char *key, size_t key_len)
{
    return op("request_range", etcd_with(json_object_new_object(), "key", etcd_json_bytes(key, key_len)));
}

/* target: "CREATE" or "MOD"; the field compared is target's revision. */
static json_object *compare(const char *key, size_t key_len, const char *target, const char *result, int64_t revision)
{
    json_object *c = etcd_with(json_object_new_object(), "key", etcd_json_bytes(key, key_len));
    c = etcd_with(c, "target", json_object_new_string(target));
    c = etcd_with(c, "result", json_object_new_string(result));
    return etcd_with(c, strcmp(target, "CREATE") == 0 ? "create_revision" : "mod_revision", etcd_json_int64(revision));
}

/* broken: a piece could not be built (no memory); such a txn is never
 * sent (txn_send, create_txn): AFSM_ENOMEM, nothing written. */
typedef struct txn {
    json_object *body, *compare, *success, *failure;
    int broken;
} txn;

static int txn_init(txn *t)
{
    t->broken = 0;
    t->body = json_object_new_object();
    t->compare = json_object_new_array();
    t->success = json_object_new_array();
    t->failure = json_object_new_array();
    if (t->body == NULL || t->compare == NULL || t->success == NULL || t->failure == NULL) {
        json_object_put(t->body);
        json_object_put(t->compare);
        json_object_put(t->success);
        json_object_put(t->failure);
        return 0;
    }
    /* Each array is body's once added. One not added would make a txn
     * without that branch: without "success", etcd writes nothing and
     * answers succeeded. */
    int added = 0;
    json_object *arrays[] = {t->compare, t->success, t->failure};
    const char *names[] = {"compare", "success", "failure"};
    for (int i = 0; i < 3; i++) {
        if (added == i && json_object_object_add(t->body, names[i], arrays[i]) == 0)
            added++;
        else
            json_object_put(arrays[i]);
    }
    if (added < 3) {
        json_object_put(t->body);
        return 0;
    }
    return 1;
}

/* Appends item (NULL: it could not be built) to one of t's arrays. */
static void txn_add(txn *t, json_object *array, json_object *item)
{
    if (item == NULL || json_object_array_add(array, item) != 0) {
        json_object_put(item);
        t->broken = 1;
    }
}

/* Sends the txn (never retried once sent: it is a write). *succeeded and
 * *revision from the answer; *reply kept for the failure branch's ranges. */
static afsm_status txn_send(etcd_store *es, txn *t, int *succeeded, int64_t *revision, json_object **reply)
{
    *reply = NULL;
    afsm_status st = t->broken ? AFSM_ENOMEM : etcd_call(es->client, "/v3/kv/txn", t->body, 0, reply, NULL);
    json_object_put(t->body);
    if (st != AFSM_OK)
        return st == AFSM_ENOTFOUND ? AFSM_EINTERNAL : st;
    json_object *ok, *header;
    *succeeded = json_object_object_get_ex(*reply, "succeeded", &ok) && json_object_get_boolean(ok);
    *revision = json_object_object_get_ex(*reply, "header", &header) ? etcd_get_int64(header, "revision") : 0;
    return AFSM_OK;
}

/* The kvs of the failure branch's index-th response (a request_range). */
static json_object *txn_range_kvs(json_object *reply, size_t index)
{
    /* Every level type-checked: a crafted reply is "no record", not an abort. */
    json_object *responses = etcd_get_array(reply, "responses"), *range, *kvs;
    if (responses == NULL || index >= json_object_array_length(responses) ||
        !json_object_object_get_ex(json_object_array_get_idx(responses, index), "response_range", &range) ||
        (kvs = etcd_get_array(range, "kvs")) == NULL)
        return NULL;
    return json_object_array_length(kvs) > 0 ? kvs : NULL;
}

/* ---- records -------------------------------------------------------------------- */

/* A record with its own metadata bytes (the replica's "k\0v\0" blob or a
 * merged one): meta[] points into it. */
typedef struct owned_record {
    keys_record rec;
    afsm_stats edited_from; /* the replica's stats current_record read, before any edit */
    metadata *meta_blob;    /* may be NULL */
    char buf[AFSM_METADATA_BYTES_MAX + 2 * AFSM_METADATA_KEYS_MAX];
} owned_record;

static void entries_of(const char *data, uint32_t count, afsm_kv *out)
{
    const char *p = data;
    for (uint32_t i = 0; i < count; i++) {
        out[i].key = p;
        out[i].key_len = strlen(p);
        p += out[i].key_len + 1;
        out[i].value = p;
        out[i].value_len = strlen(p);
        p += out[i].value_len + 1;
    }
}

/* The session as this node's replica and tracks know it. Under apply_lock:
 * an apply between the three reads would give a record of one revision
 * guarded by another's (a write that undoes the newer one's changes). */
static afsm_status current_record(etcd_store *es, const afsm_uuid *id, owned_record *o, track_info *ti)
{
    memset(&o->rec, 0, sizeof(o->rec));
    o->meta_blob = NULL;
    o->rec.info.version = AFSM_SESSION_INFO_VERSION;
    size_t needed = 0, count = 0;
    pthread_mutex_lock(&es->apply_lock);
    afsm_status st = es->replica->ops->get(es->replica, id, &o->rec.info);
    if (st == AFSM_OK)
        st = es->replica->ops->get_metadata(es->replica, id, o->buf, sizeof(o->buf), &needed, &count);
    if (st == AFSM_OK && !track_get(&es->tracks, id, ti))
        st = AFSM_ENOTFOUND;
    pthread_mutex_unlock(&es->apply_lock);
    if (st != AFSM_OK)
        return st;
    entries_of(o->buf, (uint32_t)count, o->rec.meta);
    o->rec.meta_count = count;
    o->rec.lease = ti->lease;
    o->rec.leased_ns = ti->leased_ns;
    o->rec.slot = ti->slot;
    o->rec.writer = es->writer_id;
    o->edited_from = o->rec.info.stats;
    return AFSM_OK;
}

/* Replaces the record's metadata with base (may be NULL) merged with kvs. */
static afsm_status set_metadata(owned_record *o, const afsm_kv *base, size_t base_count, const afsm_kv *kvs,
                                size_t count)
{
    metadata *first = NULL, *merged = NULL;
    afsm_status st = metadata_merge(NULL, base, base_count, &first);
    if (st == AFSM_OK)
        st = metadata_merge(first, kvs, count, &merged);
    metadata_free(first);
    if (st != AFSM_OK)
        return st;
    metadata_free(o->meta_blob);
    o->meta_blob = merged;
    o->rec.meta_count = merged != NULL ? merged->count : 0;
    if (merged != NULL)
        entries_of(merged->data, merged->count, o->rec.meta);
    return AFSM_OK;
}

static void owned_release(owned_record *o)
{
    metadata_free(o->meta_blob);
    o->meta_blob = NULL;
}

static afsm_status encode(const keys_record *rec, json_object **json, const char **text, size_t *len)
{
    *json = keys_record_encode(rec);
    if (*json == NULL)
        return AFSM_ENOMEM;
    *text = json_object_to_json_string_ext(*json, JSON_C_TO_STRING_PLAIN);
    if (*text == NULL) {
        json_object_put(*json);
        return AFSM_ENOMEM;
    }
    *len = strlen(*text);
    return AFSM_OK;
}

/* Starts a sample of the watch's delay with this node's write at revision
 * if none is in flight (apply_lock held; raise_revision ends it, and a
 * disconnect drops it: watch_main). A write the watch has already passed is
 * an echo that came first: delay 0. None while the watch is down: the down
 * figure covers that time, and the catch-up is no connected watch's delay. */
static void sample_echo(etcd_store *es, int64_t revision)
{
    if (es->echo_revision != 0 || revision <= 0 || !atomic_load_explicit(&es->watch_connected, memory_order_relaxed))
        return;
    if (revision <= atomic_load_explicit(&es->applied_revision, memory_order_relaxed)) {
        atomic_store_explicit(&es->echo_delay_ns, 0, memory_order_relaxed);
        return;
    }
    es->echo_revision = revision;
    es->echo_written_ns = etcd_lease_clock_ns();
    atomic_store_explicit(&es->echo_pending_since_ns, es->echo_written_ns, memory_order_relaxed);
}

/* Applies this node's own write at revision and fills out (may be NULL)
 * from the replica as applied, under apply_lock: the caller's copy is the
 * write it made, whatever a callback or another thread changes next (the
 * memory store fills it before its event, too). ev gets the event, which
 * the caller fires once its write no longer counts as in flight: the watch
 * waits for in-flight writes (wait_own_writes), so a callback that blocks
 * while its write still counted would hold every node's changes here. */
static afsm_status apply_own(etcd_store *es, const keys_record *rec, int64_t revision, int flags,
                             afsm_session_info *out, etcd_event *ev)
{
    pthread_mutex_lock(&es->apply_lock);
    afsm_status st = etcd_apply_put(es, rec, revision, flags, ev);
    /* Counted until fired (etcd_fire): a delete of this node waits for it
     * (apply_own_delete), so that nothing follows the session's DELETED. */
    if (st == AFSM_OK && ev->pending) {
        track_unfired(&es->tracks, &rec->info.session_id, +1);
        ev->counted = 1;
    }
    if (st == AFSM_OK && out != NULL)
        st = es->replica->ops->get(es->replica, &rec->info.session_id, out);
    if (flags & ETCD_APPLY_OWN)
        sample_echo(es, revision);
    pthread_mutex_unlock(&es->apply_lock);
    return st;
}

/* ---- create ---------------------------------------------------------------------- */

/* Under AFSM_LIMIT_EVICT_OLDEST, a create at a full cap takes the slot of
 * the user's oldest session (the smallest id: v7 ids are creation order,
 * as on the memory store) in the same txn that removes it. */
typedef struct eviction {
    afsm_uuid victim;
    uint32_t slot;
    int64_t slot_revision; /* the n/ key's: the create's txn guards it */
    keys_record rec;       /* the victim's record, read from etcd */
    json_object *holder;   /* rec's strings */
} eviction;

/* (Defined with delete, below.) */
static afsm_status read_record(etcd_store *es, const afsm_uuid *id, keys_record *rec, json_object **holder);
static int add_removal(etcd_store *es, txn *t, const keys_record *rec, int with_slot, afsm_delete_reason why,
                       const char *reason, size_t reason_len);
static void apply_own_delete(etcd_store *es, const keys_record *rec, int64_t revision, afsm_delete_reason why,
                             const char *reason, size_t reason_len, etcd_event *created, etcd_event *ev);
static struct timespec request_deadline(const etcd_store *es);

/* The user's taken cap slots, read from etcd (bit i: slot i); with oldest
 * (may be NULL), also which session holds the oldest of them (slot_revision
 * 0: none could be read). */
static afsm_status taken_slots(etcd_store *es, const char *user, size_t user_len, uint8_t *taken, uint32_t cap,
                               eviction *oldest)
{
    char key[KEYS_MAX], end[KEYS_MAX];
    size_t n = keys_slot(es->prefix, es->prefix_len, user, user_len, 0, key) - 1; /* "n/<user>/" */
    key[n] = '\0';
    keys_range_end(key, n, end);
    json_object *body = etcd_with(json_object_new_object(), "key", etcd_json_bytes(key, n)), *reply = NULL, *kvs;
    body = etcd_with(body, "range_end", etcd_json_bytes(end, n));
    body = etcd_with(body, "keys_only", json_object_new_boolean(oldest == NULL));
    if (body == NULL)
        return AFSM_ENOMEM;
    afsm_status st = etcd_call(es->client, "/v3/kv/range", body, 1, &reply, NULL);
    json_object_put(body);
    memset(taken, 0, (cap + 7) / 8);
    if (oldest != NULL)
        oldest->slot_revision = 0;
    if (st == AFSM_OK && (kvs = etcd_get_array(reply, "kvs")) != NULL) {
        for (size_t i = 0; i < json_object_array_length(kvs); i++) {
            json_object *kv = json_object_array_get_idx(kvs, i);
            long len, value_len;
            char *k = etcd_get_bytes(kv, "key", &len);
            /* Only "<prefix>n/<user>/<digits>": a longer user id shares the prefix. */
            if (k != NULL && (size_t)len > n && strspn(k + n, "0123456789") == (size_t)len - n) {
                unsigned long slot = strtoul(k + n, NULL, 10);
                if (slot < cap)
                    taken[slot / 8] |= (uint8_t)(1u << (slot % 8));
                char *value = oldest != NULL && slot < cap ? etcd_get_bytes(kv, "value", &value_len) : NULL;
                afsm_uuid holder;
                if (value != NULL && uuid_parse_text(value, (size_t)value_len, &holder) == AFSM_OK &&
                    (oldest->slot_revision == 0 || uuid_compare(&holder, &oldest->victim) < 0)) {
                    oldest->victim = holder;
                    oldest->slot = (uint32_t)slot;
                    oldest->slot_revision = etcd_get_int64(kv, "mod_revision");
                }
                free(value);
            }
            free(k);
        }
    }
    json_object_put(reply);
    return st == AFSM_ENOTFOUND ? AFSM_EINTERNAL : st;
}

/* The first free slot at or after `from` (wrapping), -1 if none. Creators
 * start at different places (from: their session id's random bits), so
 * concurrent creates for one user do not all race for the lowest slot. */
static int32_t free_slot(const uint8_t *taken, uint32_t cap, uint32_t from)
{
    for (uint32_t n = 0; n < cap; n++) {
        uint32_t i = (from + n) % cap;
        if (!(taken[i / 8] & (1u << (i % 8))))
            return (int32_t)i;
    }
    return -1;
}

/* A guarded write that lost every one of its WRITE_ATTEMPTS races: it was
 * not made (etcd took other writers' records each time). */
static afsm_status lost_every_guard(void)
{
    return errdetail_set(AFSM_EUNAVAILABLE, "etcd: the record changed under each of %d attempts; not written",
                         WRITE_ATTEMPTS);
}

/* The new session's record, from the spec (or the copy being restored). */
static afsm_status new_record(etcd_store *es, const session_spec *spec, owned_record *o)
{
    memset(&o->rec, 0, sizeof(o->rec));
    o->meta_blob = NULL;
    afsm_session_info *s = &o->rec.info;
    if (spec->restore != NULL) {
        *s = *spec->restore;
    } else {
        int64_t now = mem_store_wall_now(es->replica);
        s->version = AFSM_SESSION_INFO_VERSION;
        uuid_v7_at(&s->session_id, (uint64_t)clock_wall_ns() / 1000000u);
        s->state = AFSM_STATE_CONNECTING;
        s->created_at_ns = now;
        s->last_active_at_ns = now;
        s->token_generation = 1;
    }
    s->connection_id = spec->connection_id;
    s->client_ip = spec->client_ip;
    s->client_port = spec->client_port;
    memcpy(s->user_id, spec->user_id, spec->user_id_len);
    s->user_id[spec->user_id_len] = '\0';
    s->user_id_len = spec->user_id_len;
    s->timeout_ms = spec->timeout_ns / NS_PER_MS;
    o->rec.slot = -1;
    o->rec.writer = es->writer_id;
    return set_metadata(o, NULL, 0, spec->metadata, spec->metadata_count);
}

/* ---- create groups (group commit) ------------------------------------------------ */

/*
 * Concurrent creates go to etcd as one txn. Each create builds its own txn
 * (compare / success / failure, exactly what it would send alone); a group
 * sends them as nested request_txn ops of one txn (etcd >= 3.3; the 3.4
 * JSON gateway answers each with a nested response_txn), and each create
 * reads its own result from its nested response. One gateway request and
 * one raft proposal then carry the whole group (bench/etcd, 8 threads:
 * 1.99 proposals per create before, 1.36 with groups, the other one being
 * the create's lease grant; README, "What a create costs").
 *
 * Why a nested txn gets the answer it would alone: etcd evaluates every
 * compare of the tree against the store as it was before the txn, then
 * runs the chosen branches. A create's compares and failure ranges touch
 * only its own keys (s/, c/, its slot's n/), and no two creates of a group
 * share a key (take_group: etcd refuses a txn that writes a key twice, and
 * two creates writing one key must be ordered anyway, so they go in
 * different groups). So each member's outcome is the one it would get sent
 * alone just before or after the others. Its revision is the group's (all
 * of a txn's writes share one revision; the watch applies a revision's
 * events from one message, replica.c).
 *
 * Flat combining: a create queues its op and, while fewer than
 * GROUP_INFLIGHT groups are in flight, leads a group itself at once: it
 * takes its own op and the queued ones that share no key with one taken
 * (oldest first, up to GROUP_MAX), sends them and writes each result into
 * its op. A create alone therefore sends at once, as before (no added
 * latency); under load, creates queue while GROUP_INFLIGHT groups are in
 * flight and the next leader takes them all. Two groups in flight rather
 * than one keep etcd's pipeline busier (4-second bench runs: create/floor
 * 0.455 and 0.459 with two, 0.415 and 0.416 with one, 0.354 and 0.463
 * with three).
 *
 * Each owner sleeps on its op's own condition variable and is woken only
 * when its result is in or it is asked to lead (a shared broadcast woke
 * every waiting creator at each group's end: about a fifth of the bench's
 * CPU samples were in the scheduler and futex waits).
 *
 * Invariants, all under group_lock:
 * - an op is in exactly one place: the queue (queued), a group being sent
 *   (neither queued nor done) or done;
 * - between taking an op and setting its done flag only the group's leader
 *   touches the op's txn and result fields; the owner reads them once it
 *   sees done (the lock orders the two threads);
 * - groups_sending <= GROUP_INFLIGHT;
 * - no op waits in the queue without a leader to come: whenever ops stay
 *   queued while fewer than GROUP_INFLIGHT groups are in flight (a group
 *   taken that left conflicting ops behind, a group's end), the queue's
 *   head is asked to lead (lead_next); if another leader takes that op
 *   first, that leader's own end asks again.
 * The leader sends without group_lock or apply_lock held; the owners then
 * apply their own results (apply_own) each on its own thread, so CREATED
 * fires on the calling thread before create returns, as before.
 *
 * Deadlines: a create's txn, alone or queued then grouped, ends within
 * the request timeout from its submission, as a create alone did (on a
 * hung etcd, a create queued behind the groups in flight used to wait for
 * their timeout and then for its own: 2 s at a 1 s timeout, 5 s for 8
 * creates racing one connection id; tests/etcd/
 * test_etcd_create_group_faults.c). A group is sent with its members'
 * earliest deadline; a leader takes no op whose deadline has passed, and
 * an op still queued at its deadline leaves the queue, unsent, as
 * AFSM_EUNAVAILABLE (its lease left to expire, as below: revoking it on a
 * hung etcd would take another timeout). When etcd answers, a queue wait
 * is about one group's round trip, which is all a member loses.
 *
 * Outcomes for a whole group: no answer (etcd away, a connection lost
 * after sending) is AFSM_EUNAVAILABLE for every member: the outcome is
 * unknown, each one's lease is left to expire and a resend recognises its
 * own commit (create_txn). An error answer, or no memory to build the
 * group's body, is the same status for every member, with nothing written.
 */
#define GROUP_MAX      32 /* creates in one txn: etcd's --max-txn-ops default is 128 */
#define GROUP_INFLIGHT 2

typedef struct create_op {
    txn t; /* the create's own txn, built (and freed) by its owner */
    char skey[KEYS_MAX], ckey[KEYS_MAX], nkey[KEYS_MAX];
    size_t slen, clen, nlen; /* nlen 0: no cap slot */
    int alone;               /* an eviction: its txn writes the victim's keys too, so it goes in no group */
    struct create_op *next;  /* in the queue */
    int queued, done, lead;  /* lead: asked to lead a group (see lead_next) */
    uint64_t deadline_ms;    /* CLOCK_MONOTONIC: its submission + the request timeout */
    pthread_cond_t wake;     /* its owner waits here, under group_lock (CLOCK_MONOTONIC) */
    /* The result, written by the group's leader before done. */
    afsm_status status;
    int succeeded;
    int64_t revision;       /* the txn's (success) */
    int s_exists, c_exists; /* failure: what the guarded keys held */
    int64_t s_lease, s_mod_revision;
} create_op;

static int same_key(const char *a, size_t alen, const char *b, size_t blen)
{
    return alen == blen && alen > 0 && memcmp(a, b, alen) == 0;
}

/* Whether a and b write a key in common (u/ contains the session id, so
 * equal u/ keys mean equal s/ keys). */
static int shares_key(const create_op *a, const create_op *b)
{
    return a->alone || b->alone || same_key(a->skey, a->slen, b->skey, b->slen) ||
           same_key(a->ckey, a->clen, b->ckey, b->clen) || same_key(a->nkey, a->nlen, b->nkey, b->nlen);
}

static uint64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Takes self and the queued ops that share no key with a taken one out of
 * the queue, oldest first, leaving those past their deadline (their owners
 * take them out). group_lock held. */
static size_t take_group(etcd_store *es, create_op *self, create_op **group, uint64_t now_ms)
{
    size_t n = 0;
    group[n++] = self;
    create_op **link = &es->group_queue, *prev = NULL;
    while (*link != NULL) {
        create_op *op = *link;
        int take = op == self;
        if (!take && n < GROUP_MAX && op->deadline_ms > now_ms) {
            take = 1;
            for (size_t i = 0; i < n && take; i++)
                take = !shares_key(op, group[i]);
            if (take)
                group[n++] = op;
        }
        if (take) {
            *link = op->next;
            op->queued = 0;
            if (es->group_queue_tail == op)
                es->group_queue_tail = prev;
        } else {
            prev = op;
            link = &op->next;
        }
    }
    return n;
}

/* One create's result from its txn's response (the reply itself for a
 * lone create, its nested response_txn in a group). */
static void op_result(create_op *op, json_object *response, int64_t revision)
{
    json_object *ok;
    op->status = AFSM_OK;
    op->succeeded = json_object_object_get_ex(response, "succeeded", &ok) && json_object_get_boolean(ok);
    op->revision = revision;
    json_object *mine = txn_range_kvs(response, 0);
    op->s_exists = mine != NULL;
    op->s_lease = mine != NULL ? etcd_get_int64(json_object_array_get_idx(mine, 0), "lease") : 0;
    op->s_mod_revision = mine != NULL ? etcd_get_int64(json_object_array_get_idx(mine, 0), "mod_revision") : 0;
    op->c_exists = txn_range_kvs(response, 1) != NULL;
}

/* Sends a group (no lock held) by its members' earliest deadline and
 * fills each op's result. */
static void send_group(etcd_store *es, create_op **group, size_t n)
{
    uint64_t deadline_ms = group[0]->deadline_ms;
    for (size_t i = 1; i < n; i++)
        if (group[i]->deadline_ms < deadline_ms)
            deadline_ms = group[i]->deadline_ms;
    json_object *body = NULL, *ops = NULL, *reply = NULL, *header;
    afsm_status st = AFSM_OK;
    if (n == 1) {
        body = json_object_get(group[0]->t.body); /* a lone create's txn as it is */
    } else {
        body = json_object_new_object();
        ops = json_object_new_array();
        if (body == NULL || ops == NULL || json_object_object_add(body, "success", ops) != 0) {
            json_object_put(ops);
            st = AFSM_ENOMEM;
        }
        for (size_t i = 0; i < n && st == AFSM_OK; i++) {
            json_object *nested = json_object_new_object();
            if (nested == NULL || json_object_array_add(ops, nested) != 0) {
                json_object_put(nested);
                st = AFSM_ENOMEM;
            } else if (json_object_object_add(nested, "request_txn", json_object_get(group[i]->t.body)) != 0) {
                json_object_put(group[i]->t.body);
                st = AFSM_ENOMEM;
            }
        }
    }
    if (st == AFSM_OK)
        st = etcd_call_until(es->client, "/v3/kv/txn", body, 0, &reply, NULL, deadline_ms);
    json_object_put(body); /* the owners' txns keep their own reference */
    if (st == AFSM_ENOTFOUND)
        st = AFSM_EINTERNAL;
    int64_t revision =
        st == AFSM_OK && json_object_object_get_ex(reply, "header", &header) ? etcd_get_int64(header, "revision") : 0;
    json_object *responses = n > 1 ? etcd_get_array(reply, "responses") : NULL;
    for (size_t i = 0; i < n; i++) {
        group[i]->status = st;
        if (st != AFSM_OK)
            continue;
        if (n == 1) {
            op_result(group[i], reply, revision);
            continue;
        }
        json_object *nested = NULL;
        /* Every level type-checked: a crafted reply fails its create, it
         * does not abort the process. */
        if (responses != NULL && i < json_object_array_length(responses) &&
            json_object_object_get_ex(json_object_array_get_idx(responses, i), "response_txn", &nested) &&
            json_object_is_type(nested, json_type_object))
            op_result(group[i], nested, revision);
        else
            group[i]->status = AFSM_EINTERNAL;
    }
    json_object_put(reply);
}

/* While a group could start and ops wait, asks the oldest to lead one.
 * group_lock held. */
static void lead_next(etcd_store *es)
{
    create_op *head = es->group_queue;
    if (head != NULL && !head->lead && es->groups_sending < GROUP_INFLIGHT) {
        head->lead = 1;
        pthread_cond_signal(&head->wake);
    }
}

/* Takes op, past its deadline, out of the queue. group_lock held. */
static void leave_queue(etcd_store *es, create_op *op)
{
    create_op **link = &es->group_queue, *prev = NULL;
    while (*link != op) {
        prev = *link;
        link = &(*link)->next;
    }
    *link = op->next;
    if (es->group_queue_tail == op)
        es->group_queue_tail = prev;
    op->queued = 0;
}

/* Sends op's txn, alone or in a group (see above); its result is in op. */
static afsm_status create_submit(etcd_store *es, create_op *op)
{
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0)
        return AFSM_ENOMEM; /* nothing sent */
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int failed = pthread_cond_init(&op->wake, &attr);
    pthread_condattr_destroy(&attr);
    if (failed)
        return AFSM_ENOMEM; /* nothing sent */
    op->deadline_ms = monotonic_ms() + es->request_timeout_ns / NS_PER_MS;
    struct timespec until = {.tv_sec = (time_t)(op->deadline_ms / 1000u),
                             .tv_nsec = (long)(op->deadline_ms % 1000u) * 1000000L};
    pthread_mutex_lock(&es->group_lock);
    op->next = NULL;
    op->queued = 1;
    op->done = 0;
    op->lead = 0;
    if (es->group_queue_tail != NULL)
        es->group_queue_tail->next = op;
    else
        es->group_queue = op;
    es->group_queue_tail = op;
    while (!op->done) {
        uint64_t now_ms = monotonic_ms();
        if (op->queued && now_ms >= op->deadline_ms) {
            /* Never sent: etcd has kept the groups ahead busy (hung). */
            leave_queue(es, op);
            op->status = AFSM_EUNAVAILABLE;
            lead_next(es); /* op may have been asked to lead */
            break;
        }
        if (op->queued && es->groups_sending < GROUP_INFLIGHT) {
            create_op *group[GROUP_MAX];
            size_t n = take_group(es, op, group, now_ms);
            es->groups_sending++;
            /* Ops left behind (they share a key with this group) may lead
             * the next group now rather than wait for this one's answer. */
            lead_next(es);
            pthread_mutex_unlock(&es->group_lock);
            send_group(es, group, n);
            pthread_mutex_lock(&es->group_lock);
            es->groups_sending--;
            for (size_t i = 1; i < n; i++) {
                group[i]->done = 1;
                pthread_cond_signal(&group[i]->wake);
            }
            op->done = 1;
            lead_next(es);
            break;
        }
        /* Asked to lead, but the op was taken into another group or no
         * group can start: wait again (the next group's end asks anew).
         * Taken, it waits for its group, whose send ends by op's deadline. */
        op->lead = 0;
        if (op->queued)
            pthread_cond_timedwait(&op->wake, &es->group_lock, &until);
        else
            pthread_cond_wait(&op->wake, &es->group_lock);
    }
    pthread_mutex_unlock(&es->group_lock);
    pthread_cond_destroy(&op->wake);
    return op->status;
}

/* One attempt at the create txn (sent alone or in a group: create_submit).
 * With ev (may be NULL), the same txn takes the victim's slot and removes
 * the victim, if the slot still holds it. *retry: a slot was lost to a race
 * (or the victim was gone). */
static afsm_status create_txn(etcd_store *es, const keys_record *rec, const eviction *ev, int *retry, int64_t *revision)
{
    const afsm_session_info *s = &rec->info;
    create_op op;
    char ukey[KEYS_MAX], id_text[AFSM_UUID_STRING_SIZE];
    op.slen = keys_session(es->prefix, es->prefix_len, &s->session_id, op.skey);
    op.clen = keys_connection(es->prefix, es->prefix_len, &s->connection_id, op.ckey);
    size_t ulen = keys_user(es->prefix, es->prefix_len, s->user_id, s->user_id_len, &s->session_id, ukey);
    op.nlen = rec->slot >= 0
                  ? keys_slot(es->prefix, es->prefix_len, s->user_id, s->user_id_len, (uint32_t)rec->slot, op.nkey)
                  : 0;
    afsm_uuid_format(&s->session_id, id_text);
    json_object *record;
    const char *text;
    size_t text_len;
    afsm_status st = encode(rec, &record, &text, &text_len);
    if (st != AFSM_OK)
        return st;
    txn *t = &op.t;
    if (!txn_init(t)) {
        json_object_put(record);
        return AFSM_ENOMEM;
    }
    op.alone = ev != NULL;
    txn_add(t, t->compare, compare(op.skey, op.slen, "CREATE", "EQUAL", 0));
    txn_add(t, t->compare, compare(op.ckey, op.clen, "CREATE", "EQUAL", 0));
    /* An eviction's slot must still be the victim's: its n/ key unchanged
     * since it was read (it goes with its session, by delete or lease). */
    if (ev != NULL)
        txn_add(t, t->compare, compare(op.nkey, op.nlen, "MOD", "EQUAL", ev->slot_revision));
    else if (op.nlen > 0)
        txn_add(t, t->compare, compare(op.nkey, op.nlen, "CREATE", "EQUAL", 0));
    /* The victim's removal before the new session's puts: a watcher applies
     * a txn's keys one by one, so its replica never holds the user above
     * the cap, not even between two keys. */
    if (ev != NULL)
        add_removal(es, t, &ev->rec, 0, AFSM_DELETE_EVICTED, REASON_EVICTED, sizeof(REASON_EVICTED) - 1);
    txn_add(t, t->success, op_put(op.skey, op.slen, text, text_len, rec->lease));
    txn_add(t, t->success, op_put(op.ckey, op.clen, id_text, AFSM_UUID_STRING_SIZE - 1, rec->lease));
    txn_add(t, t->success, op_put(ukey, ulen, "", 0, rec->lease));
    if (op.nlen > 0)
        txn_add(t, t->success, op_put(op.nkey, op.nlen, id_text, AFSM_UUID_STRING_SIZE - 1, rec->lease));
    txn_add(t, t->failure, op_range(op.skey, op.slen));
    txn_add(t, t->failure, op_range(op.ckey, op.clen));
    json_object_put(record);
    st = t->broken ? AFSM_ENOMEM : create_submit(es, &op); /* a group never carries a broken txn */
    json_object_put(t->body);
    *retry = 0;
    if (st == AFSM_OK && op.succeeded) {
        *revision = op.revision;
    } else if (st == AFSM_OK) {
        if (op.s_exists && op.s_lease == rec->lease) {
            /* Our own create, committed by an earlier send whose answer was
             * lost (curl resends on a fresh connection when a kept-alive
             * one dies): the session id and the lease are ours alone. */
            *revision = op.s_mod_revision;
        } else if (op.s_exists || op.c_exists) {
            st = AFSM_EEXISTS;
        } else if (rec->slot >= 0) {
            *retry = 1; /* only the slot was taken */
        } else {
            st = AFSM_EINTERNAL; /* failed, yet no key it guards exists: not etcd's answer */
        }
    }
    return st;
}

/* A txn that creates or removes id is under way. Its echo may reach the
 * watch before the writer applies the txn's result: the watch holds id's
 * events until then (wait_own_writes), so the CREATED or DELETED fires
 * once, on the writing thread, and a restore stays quiet. An id without an
 * entry here (a new one; or one being removed that this replica has not
 * applied yet, whose creation and removal the watch could otherwise both
 * apply meanwhile, firing a second DELETED) gets a placeholder entry
 * (mod_revision 0: nothing applied yet) that carries the count. */
static afsm_status hold_events(etcd_store *es, const afsm_uuid *id)
{
    afsm_status st = AFSM_OK;
    track_info ti;
    pthread_mutex_lock(&es->apply_lock);
    if (track_get(&es->tracks, id, &ti)) {
        track_inflight(&es->tracks, id, +1);
    } else {
        track_info pending = {.slot = -1, .inflight = 1};
        st = track_put(&es->tracks, id, &pending);
    }
    pthread_mutex_unlock(&es->apply_lock);
    return st;
}

static void release_events(etcd_store *es, const afsm_uuid *id)
{
    track_info ti;
    pthread_mutex_lock(&es->apply_lock);
    if (track_get(&es->tracks, id, &ti)) {
        /* A placeholder goes with its last hold: another thread's (a create
         * of the id, an eviction or a delete of it) still keeps the watch
         * off the id's keys, else the watch could apply the session and
         * its removal before that thread does, and both would fire. */
        if (ti.mod_revision == 0 && ti.inflight <= 1)
            track_remove(&es->tracks, id, &ti); /* nothing applied: no such session here */
        else if (ti.inflight > 0)
            track_inflight(&es->tracks, id, -1);
    }
    pthread_cond_broadcast(&es->applied);
    pthread_mutex_unlock(&es->apply_lock);
}

/* pick_slot's eviction: the victim's record, unless the restore rule
 * refuses it. */
static afsm_status read_victim(etcd_store *es, const session_spec *spec, keys_record *rec, eviction *ev,
                               eviction **victim, int *retry)
{
    /* A restore keeps the user's newest sessions, as on the memory store. */
    if (spec->restore != NULL && uuid_compare(&spec->restore->session_id, &ev->victim) < 0)
        return errdetail_set(AFSM_ELIMIT,
                             "info.session_id: older than every session of its user, who is at "
                             "max_sessions_per_user (%u) under evict-oldest, which keeps the newest",
                             es->config.max_sessions_per_user);
    json_object_put(ev->holder);
    ev->holder = NULL;
    afsm_status st = read_record(es, &ev->victim, &ev->rec, &ev->holder);
    if (st == AFSM_ENOTFOUND) {
        *retry = 1; /* gone since the slots were read */
        return AFSM_OK;
    }
    if (st == AFSM_OK) {
        rec->slot = (int32_t)ev->slot;
        *victim = ev;
    }
    return st;
}

/* One attempt's cap slot for rec: a free one, or at a full cap under
 * evict-oldest the slot of the user's oldest session (*victim = ev, with
 * the victim's record read from etcd, and es->evict_lock held: the caller
 * unlocks it once the txn is answered). AFSM_ELIMIT when none may be
 * taken; *retry when the victim went before its record could be read. */
static afsm_status pick_slot(etcd_store *es, const session_spec *spec, keys_record *rec, uint8_t *taken, uint32_t from,
                             eviction *ev, eviction **victim, int *retry)
{
    uint32_t cap = es->config.max_sessions_per_user;
    int evicting = es->config.limit_policy == AFSM_LIMIT_EVICT_OLDEST;
    afsm_status st = taken_slots(es, rec->info.user_id, rec->info.user_id_len, taken, cap, evicting ? ev : NULL);
    if (st != AFSM_OK)
        return st;
    rec->slot = free_slot(taken, cap, from);
    if (rec->slot >= 0)
        return AFSM_OK;
    if (!evicting || ev->slot_revision == 0)
        return AFSM_ELIMIT; /* only a full cap is a limit */
    /* Look again under the lock: another create of this node may have
     * evicted the same victim meanwhile, or a slot came free. */
    pthread_mutex_lock(&es->evict_lock);
    st = taken_slots(es, rec->info.user_id, rec->info.user_id_len, taken, cap, ev);
    rec->slot = st == AFSM_OK ? free_slot(taken, cap, from) : -1;
    if (st == AFSM_OK && rec->slot < 0)
        st = ev->slot_revision != 0 ? read_victim(es, spec, rec, ev, victim, retry) : AFSM_ELIMIT;
    if (*victim == NULL)
        pthread_mutex_unlock(&es->evict_lock);
    return st;
}

static afsm_status etcd_create(store *st, const session_spec *spec, afsm_session_info *out)
{
    etcd_store *es = (etcd_store *)st;
    /* A copy past its deadline is not brought back (the memory store's
     * rule; the replica, which never judges expiry, would keep it). */
    if (spec->restore != NULL && spec->restore->last_active_at_ns + (int64_t)(spec->restore->timeout_ms * NS_PER_MS) <=
                                     mem_store_wall_now(es->replica))
        return AFSM_EEXPIRED;
    /* Nor a closed copy: with no linger on this store (checked at open),
     * its linger is over, as the memory store judges one with none. */
    if (spec->restore != NULL && spec->restore->state == AFSM_STATE_CLOSED)
        return AFSM_EEXPIRED;
    afsm_session_info probe = {.version = AFSM_SESSION_INFO_VERSION};
    /* The replica answers the common refusal without a round trip; the txn
     * is what guarantees it. */
    if (es->replica->ops->get_by_connection(es->replica, &spec->connection_id, &probe) == AFSM_OK)
        return AFSM_EEXISTS;
    owned_record *o = malloc(sizeof(*o));
    if (o == NULL)
        return AFSM_ENOMEM;
    eviction ev = {.holder = NULL}; /* evict-oldest at a full cap */
    afsm_status status = new_record(es, spec, o);
    if (status != AFSM_OK)
        goto out;
    status = etcd_lease_take(es, o->rec.info.timeout_ms, &o->rec.lease, &o->rec.leased_ns);
    if (status != AFSM_OK)
        goto out;
    status = hold_events(es, &o->rec.info.session_id);
    if (status != AFSM_OK) {
        etcd_lease_revoke(es, o->rec.lease);
        goto out;
    }
    uint32_t cap = es->config.max_sessions_per_user;
    uint8_t *taken = cap != 0 ? malloc((cap + 7) / 8) : NULL;
    int64_t revision = 0;
    uint32_t from;
    memcpy(&from, &o->rec.info.session_id.bytes[12], sizeof(from)); /* random bits of the v7 id */
    /* evicted: the committed txn removed ev.victim; held: hold_events holds its events */
    int evicted = 0, held = 0;
    for (int attempt = 0;; attempt++) {
        int retry = 0;
        eviction *victim = NULL;
        if (cap != 0)
            status = taken != NULL ? pick_slot(es, spec, &o->rec, taken, from, &ev, &victim, &retry) : AFSM_ENOMEM;
        if (status == AFSM_OK && !retry) {
            if (victim != NULL)
                status = hold_events(es, &victim->victim);
            held = victim != NULL && status == AFSM_OK;
            if (status == AFSM_OK)
                status = create_txn(es, &o->rec, victim, &retry, &revision);
            evicted = victim != NULL && status == AFSM_OK && !retry;
            if (victim != NULL)
                pthread_mutex_unlock(&es->evict_lock); /* taken by pick_slot */
            if (held && !evicted) {
                release_events(es, &ev.victim);
                held = 0;
            }
        }
        if (status != AFSM_OK || !retry)
            break;
        /* Each lost slot was taken by another create, so the cap fills in
         * at most cap rounds; past that, slots churn faster than we win. */
        if ((uint32_t)attempt + 1 >= cap + WRITE_ATTEMPTS) {
            etcd_lease_revoke(es, o->rec.lease); /* known unwritten (below, EUNAVAILABLE is not) */
            status = lost_every_guard();
            break;
        }
    }
    free(taken);
    if (status != AFSM_OK) {
        release_events(es, &o->rec.info.session_id);
        if (status != AFSM_EUNAVAILABLE) /* else the outcome is unknown: let the lease expire */
            etcd_lease_revoke(es, o->rec.lease);
        goto out;
    }
    /* The victim's removal applied first, so that this replica never holds
     * the user above the cap; its DELETED fires after the CREATED, as on the
     * memory store (a callback on the DELETED may create and evict the new
     * session, whose DELETED must follow its CREATED). */
    etcd_event victim_created = {0}, created = {0}, gone = {0};
    if (evicted)
        apply_own_delete(es, &ev.rec, revision, AFSM_DELETE_EVICTED, REASON_EVICTED, sizeof(REASON_EVICTED) - 1,
                         &victim_created, &gone);
    if (held)
        release_events(es, &ev.victim);
    status = apply_own(es, &o->rec, revision, ETCD_APPLY_OWN | (spec->restore != NULL ? ETCD_APPLY_QUIET : 0), out,
                       &created);
    /* Committed, but this replica could not take its copy (no memory):
     * the caller hears AFSM_ENOMEM, so the session must not stay. Its
     * lease carries every key the txn wrote, and revoking it removes them
     * all at once; nodes whose watch saw the create see it expire. (A
     * victim the txn removed stays removed: etcd has no undo.) */
    if (status != AFSM_OK)
        etcd_lease_revoke(es, o->rec.lease);
    /* Applied: the watch, which drops the echo by revision, need not wait
     * any longer, and the CREATED (still on this thread, before the call
     * returns) holds nothing but this caller. */
    release_events(es, &o->rec.info.session_id);
    etcd_fire(es, &victim_created);
    etcd_fire(es, &created);
    etcd_fire(es, &gone);
out:
    json_object_put(ev.holder);
    owned_release(o);
    free(o);
    return status;
}

/* ---- update and rotation --------------------------------------------------------- */

/* The txn of a guarded put: o's record if etcd still has it at ti's
 * revision, else the record etcd has. *t is sent (txn_send) or nested in a
 * group's txn. */
static afsm_status guarded_txn(etcd_store *es, owned_record *o, const track_info *ti, txn *t, size_t *bytes)
{
    /* Each write its own number, so that its record, if its answer is
     * lost, is known for this one (note_own_write). */
    o->rec.seq = atomic_fetch_add_explicit(&es->write_seq, 1, memory_order_relaxed) + 1;
    char skey[KEYS_MAX];
    size_t slen = keys_session(es->prefix, es->prefix_len, &o->rec.info.session_id, skey);
    json_object *record;
    const char *text;
    size_t text_len;
    afsm_status st = encode(&o->rec, &record, &text, &text_len);
    if (st != AFSM_OK)
        return st;
    if (!txn_init(t)) {
        json_object_put(record);
        return AFSM_ENOMEM;
    }
    txn_add(t, t->compare, compare(skey, slen, "MOD", "EQUAL", ti->mod_revision));
    txn_add(t, t->success, op_put(skey, slen, text, text_len, ti->lease));
    txn_add(t, t->failure, op_range(skey, slen));
    json_object_put(record);
    if (bytes != NULL)
        *bytes = text_len + slen;
    return AFSM_OK;
}

/* Applies a guarded put's answer (answer: the txn's reply, or its nested
 * response_txn in a group; revision: the reply's header revision): the
 * record as written, or on a lost guard the record etcd has, with *retry
 * set. The caller marked the record in flight and fires *ev once it no
 * longer is (see apply_own). */
static afsm_status guarded_result(etcd_store *es, owned_record *o, int flags, afsm_session_info *out,
                                  json_object *answer, int succeeded, int64_t revision, int *retry, etcd_event *ev)
{
    *retry = 0;
    if (succeeded) {
        afsm_status st = apply_own(es, &o->rec, revision, flags, out, ev);
        /* Written but not applied here (no memory): the watch applies it
         * (its events wait until this write is no longer in flight). The
         * stats it carries are this node's, flushed: the echo must not add
         * them again as another node's. A stats set (RESET) has no base. */
        if (st != AFSM_OK && !(flags & ETCD_APPLY_RESET))
            track_set_flushed(&es->tracks, &o->rec.info.session_id, &o->rec.info.stats);
        return st;
    }
    json_object *kvs = txn_range_kvs(answer, 0);
    if (kvs == NULL)
        return AFSM_ENOTFOUND; /* gone in etcd; the watch removes it here */
    json_object *kv = json_object_array_get_idx(kvs, 0);
    long len;
    char *value = etcd_get_bytes(kv, "value", &len);
    keys_record fresh;
    json_object *holder = NULL;
    afsm_status st = AFSM_OK;
    if (value != NULL && keys_record_decode(value, (size_t)len, &fresh, &holder) == AFSM_OK) {
        /* etcd's, not ours. Not applied for want of memory: editing
         * again would start from the same stale record and lose again. */
        if (apply_own(es, &fresh, etcd_get_int64(kv, "mod_revision"), 0, NULL, ev) == AFSM_ENOMEM)
            st = AFSM_ENOMEM;
        else
            *retry = 1;
    } else {
        st = AFSM_EINTERNAL;
    }
    json_object_put(holder);
    free(value);
    return st;
}

/* o's guarded write is about to be sent: noted (track.h,
 * track_note_own_write) so that if its answer never comes, its record is
 * known for this node's own. Before the send, so that nothing can apply
 * the record first: not the watch (it holds the record's events while the
 * write is in flight), nor another thread's write of the session losing
 * its guard to this one. AFSM_ENOMEM, or AFSM_EUNAVAILABLE past
 * TRACK_SET_NOTES_MAX unanswered sets: not to be sent. (Dropping the notes
 * when etcd's record has not moved was tried and reverted: a write guarded
 * on that revision may still be on its way, core/etcd/README.md "Stats".) */
static afsm_status note_own_write(etcd_store *es, const owned_record *o)
{
    afsm_status st =
        track_note_own_write(&es->tracks, &o->rec.info.session_id, o->rec.seq, o->rec.stats_set, &o->edited_from);
    if (st == AFSM_EUNAVAILABLE)
        return errdetail_set(st,
                             "etcd: %d stats sets of this session are unanswered (sent or refused); no more is sent "
                             "until another write of the session is applied here",
                             TRACK_SET_NOTES_MAX);
    return st;
}

/* Marks the end of a guarded write: the watch may apply the record's
 * events again. */
static void guarded_done(etcd_store *es, const afsm_uuid *id)
{
    pthread_mutex_lock(&es->apply_lock);
    track_inflight(&es->tracks, id, -1);
    pthread_cond_broadcast(&es->applied);
    pthread_mutex_unlock(&es->apply_lock);
}

/* Writes o's record if etcd still has it at ti's revision, and fills out
 * (may be NULL) as written. On a stale replica, applies what etcd has and
 * sets *retry. */
static afsm_status guarded_put(etcd_store *es, owned_record *o, const track_info *ti, int flags, afsm_session_info *out,
                               int *retry)
{
    *retry = 0;
    txn t;
    afsm_status st = guarded_txn(es, o, ti, &t, NULL);
    if (st != AFSM_OK)
        return st;
    int succeeded = 0;
    int64_t revision = 0;
    json_object *reply = NULL;
    etcd_event ev = {.pending = 0};
    /* The watch holds this record's events until the result is applied. */
    track_inflight(&es->tracks, &o->rec.info.session_id, +1);
    st = note_own_write(es, o);
    if (st != AFSM_OK)
        json_object_put(t.body); /* not sent */
    else
        st = txn_send(es, &t, &succeeded, &revision, &reply);
    if (st == AFSM_OK)
        st = guarded_result(es, o, flags, out, reply, succeeded, revision, retry, &ev);
    guarded_done(es, &o->rec.info.session_id);
    etcd_fire(es, &ev); /* applied and no longer in flight: see apply_own */
    json_object_put(reply);
    return st;
}

/* ---- guarded read-modify-write ------------------------------------------------- */

/* What an edit tells guarded_rmw: write the record as edited, or stop with
 * *status as the call's answer (nothing to write, a refusal, or done in
 * another way). */
enum { GUARD_WRITE, GUARD_STOP };
typedef int (*guard_edit)(etcd_store *es, owned_record *o, const track_info *ti, void *ctx, afsm_status *status);

/* The one loop behind update, rotation, activation by heartbeat and a stats
 * flush: edit the record this node holds (current_record: one revision's,
 * under apply_lock) and write it if etcd still has that revision
 * (guarded_put). A race lost to another writer applies etcd's record here
 * (keeping this node's stats additions) and edits again at once, so the
 * edit always sees the record it replaces. After WRITE_ATTEMPTS lost
 * guards nothing was written: AFSM_EUNAVAILABLE (lost_every_guard), never
 * AFSM_OK, with *raced (may be NULL) set. *wrote (may be NULL): whether a
 * write was made. out (may be NULL): the session as written, from the
 * replica (guarded_put). */
static afsm_status guarded_rmw(etcd_store *es, const afsm_uuid *id, int flags, guard_edit edit, void *ctx,
                               afsm_session_info *out, int *wrote, int *raced)
{
    if (wrote != NULL)
        *wrote = 0;
    if (raced != NULL)
        *raced = 0;
    owned_record *o = malloc(sizeof(*o));
    if (o == NULL)
        return AFSM_ENOMEM;
    afsm_status st = AFSM_OK;
    for (int attempt = 0; attempt < WRITE_ATTEMPTS; attempt++) {
        track_info ti;
        st = current_record(es, id, o, &ti);
        if (st != AFSM_OK || edit(es, o, &ti, ctx, &st) == GUARD_STOP)
            break;
        int retry = 0;
        st = guarded_put(es, o, &ti, flags, out, &retry);
        owned_release(o);
        if (st != AFSM_OK)
            break;
        if (!retry) {
            if (wrote != NULL)
                *wrote = 1;
            break;
        }
        if (attempt + 1 == WRITE_ATTEMPTS) {
            st = lost_every_guard();
            if (raced != NULL)
                *raced = 1;
        }
    }
    owned_release(o);
    free(o);
    return st;
}

/* ---- stats flush, update, activation, rotation ----------------------------------- */

static afsm_status etcd_remove_known(etcd_store *es, const afsm_uuid *id, afsm_delete_reason why, const char *reason,
                                     size_t reason_len);

static int flush_edit(etcd_store *es, owned_record *o, const track_info *ti, void *ctx, afsm_status *status)
{
    (void)es;
    (void)ctx;
    *status = AFSM_OK;
    /* The replica's stats are the record's plus this node's additions. */
    return memcmp(&o->rec.info.stats, &ti->flushed, sizeof(afsm_stats)) == 0 ? GUARD_STOP : GUARD_WRITE;
}

afsm_status etcd_flush_one(etcd_store *es, const afsm_uuid *id, int *raced)
{
    /* Retried at once after a lost race: the flush at close has no next
     * pass to leave it to. Every guard lost: nothing written, the stats
     * stay buffered (tracks' `flushed` is still what etcd's record holds,
     * the rest this node's) for the next pass, and the caller hears it. */
    int wrote = 0;
    afsm_status st = guarded_rmw(es, id, ETCD_APPLY_OWN, flush_edit, NULL, NULL, &wrote, raced);
    if (wrote)
        atomic_fetch_add_explicit(&es->stats_writes, 1, memory_order_relaxed);
    return st;
}

/* Record bytes one grouped flush sends at most: etcd refuses a request
 * over --max-request-bytes (1.5 MiB by default), and a group of 64 records
 * with the most metadata (4 KB of it, escaped) would be larger. */
#define FLUSH_GROUP_BYTES (1024 * 1024)

/* One txn of a grouped flush: its sessions' records as edited, and their
 * guarded puts' txns. */
typedef struct flush_group {
    owned_record records[ETCD_FLUSH_GROUP];
    track_info known[ETCD_FLUSH_GROUP];
    txn txns[ETCD_FLUSH_GROUP];
    size_t from[ETCD_FLUSH_GROUP]; /* each member's index in the caller's ids */
    etcd_event events[ETCD_FLUSH_GROUP];
    size_t count;
} flush_group;

/* Sends the members' txns nested in one (etcd >= 3.3, as create groups
 * are; every member writes its own session's key, so no key is written
 * twice) and applies each member's answer. A member whose guard lost is
 * marked in alone[] and its record left applied from etcd's answer. */
static afsm_status flush_group_send(etcd_store *es, flush_group *g, int *alone, size_t *wrote)
{
    json_object *body = json_object_new_object(), *ops = json_object_new_array(), *reply = NULL, *header;
    afsm_status st = AFSM_OK;
    if (body == NULL || ops == NULL || json_object_object_add(body, "success", ops) != 0) {
        json_object_put(ops); /* not taken by body */
        st = AFSM_ENOMEM;
    }
    for (size_t k = 0; k < g->count && st == AFSM_OK; k++) {
        json_object *nested = json_object_new_object();
        if (g->txns[k].broken || nested == NULL || json_object_array_add(ops, nested) != 0) {
            json_object_put(nested);
            st = AFSM_ENOMEM;
        } else if (json_object_object_add(nested, "request_txn", json_object_get(g->txns[k].body)) != 0) {
            json_object_put(g->txns[k].body);
            st = AFSM_ENOMEM;
        }
    }
    /* The watch holds these records' events until the results are applied. */
    for (size_t k = 0; k < g->count; k++)
        track_inflight(&es->tracks, &g->records[k].rec.info.session_id, +1);
    for (size_t k = 0; k < g->count && st == AFSM_OK; k++)
        st = note_own_write(es, &g->records[k]);
    if (st == AFSM_OK)
        st = etcd_call(es->client, "/v3/kv/txn", body, 0, &reply, NULL);
    json_object_put(body);
    if (st == AFSM_ENOTFOUND)
        st = AFSM_EINTERNAL;
    int64_t revision =
        st == AFSM_OK && json_object_object_get_ex(reply, "header", &header) ? etcd_get_int64(header, "revision") : 0;
    json_object *responses = st == AFSM_OK ? etcd_get_array(reply, "responses") : NULL;
    for (size_t k = 0; k < g->count; k++) {
        g->events[k].pending = g->events[k].counted = 0;
        json_object *answer = NULL, *ok;
        /* Every level type-checked: a crafted reply is a member not
         * known written (its stats stay unflushed for the next pass), not
         * an abort. */
        if (responses == NULL || k >= json_object_array_length(responses) ||
            !json_object_object_get_ex(json_object_array_get_idx(responses, k), "response_txn", &answer) ||
            !json_object_is_type(answer, json_type_object))
            continue;
        int succeeded = json_object_object_get_ex(answer, "succeeded", &ok) && json_object_get_boolean(ok);
        int retry = 0;
        afsm_status member = guarded_result(es, &g->records[k], ETCD_APPLY_OWN, NULL, answer, succeeded, revision,
                                            &retry, &g->events[k]);
        if (member == AFSM_OK && !retry)
            (*wrote)++;
        alone[g->from[k]] = retry;
    }
    for (size_t k = 0; k < g->count; k++)
        guarded_done(es, &g->records[k].rec.info.session_id);
    for (size_t k = 0; k < g->count; k++)
        etcd_fire(es, &g->events[k]);
    for (size_t k = 0; k < g->count; k++)
        json_object_put(g->txns[k].body); /* the group's reference; the nesting took its own */
    json_object_put(reply);
    return st;
}

afsm_status etcd_flush_group(etcd_store *es, const afsm_uuid *ids, size_t n, int *alone)
{
    assert(n <= ETCD_FLUSH_GROUP);
    flush_group *g = malloc(sizeof(*g));
    if (g == NULL)
        return AFSM_ENOMEM;
    g->count = 0;
    size_t bytes = 0;
    memset(alone, 0, n * sizeof(*alone));
    afsm_status st = AFSM_OK;
    for (size_t i = 0; i < n && st == AFSM_OK; i++) {
        owned_record *o = &g->records[g->count];
        track_info *ti = &g->known[g->count];
        afsm_status edit_st = AFSM_OK;
        if (current_record(es, &ids[i], o, ti) != AFSM_OK)
            continue; /* gone here: nothing to flush */
        if (flush_edit(es, o, ti, NULL, &edit_st) == GUARD_STOP) {
            owned_release(o);
            continue;
        }
        size_t record_bytes = 0;
        st = guarded_txn(es, o, ti, &g->txns[g->count], &record_bytes);
        if (st != AFSM_OK) {
            owned_release(o);
            break;
        }
        if (g->count > 0 && bytes + record_bytes > FLUSH_GROUP_BYTES) {
            /* Past etcd's request size: this one is flushed alone. */
            json_object_put(g->txns[g->count].body);
            owned_release(o);
            alone[i] = 1;
            continue;
        }
        bytes += record_bytes;
        g->from[g->count++] = i;
    }
    size_t wrote = 0;
    if (st == AFSM_OK && g->count > 0)
        st = flush_group_send(es, g, alone, &wrote);
    else
        for (size_t k = 0; k < g->count; k++)
            json_object_put(g->txns[k].body); /* built, never sent */
    for (size_t k = 0; k < g->count; k++)
        owned_release(&g->records[k]);
    atomic_fetch_add_explicit(&es->stats_writes, wrote, memory_order_relaxed);
    free(g);
    return st;
}

typedef struct update_ctx {
    const afsm_update *u;
    afsm_session_info *out;
} update_ctx;

static int update_edit(etcd_store *es, owned_record *o, const track_info *ti, void *ctx, afsm_status *status)
{
    (void)ti;
    const afsm_update *u = ((update_ctx *)ctx)->u;
    afsm_session_info *out = ((update_ctx *)ctx)->out;
    afsm_session_info *s = &o->rec.info;
    uint32_t new_state = (u->fields & AFSM_UPDATE_STATE) ? u->state : s->state;
    if (!store_transition_allowed(s->state, new_state)) {
        *status = AFSM_ETRANSITION;
        return GUARD_STOP;
    }
    *status = AFSM_OK;
    if (u->fields & AFSM_UPDATE_METADATA_MERGE)
        *status = set_metadata(o, o->rec.meta, o->rec.meta_count, u->metadata, u->metadata_count);
    else if (u->fields & AFSM_UPDATE_METADATA_REPLACE)
        *status = set_metadata(o, NULL, 0, u->metadata, u->metadata_count);
    if (*status != AFSM_OK)
        return GUARD_STOP;
    if (new_state == AFSM_STATE_CLOSED && s->state != AFSM_STATE_CLOSED) {
        /* close_linger is 0 for this store (checked at open): closing
         * removes, as the memory store does without a linger. */
        afsm_session_info last = *s;
        *status = etcd_remove_known(es, &s->session_id, AFSM_DELETE_CLOSED, "closed", 6);
        if (*status == AFSM_OK && out != NULL) {
            *out = last;
            out->state = AFSM_STATE_CLOSED;
            /* Closing is the last activity: the copy says when it closed,
             * as the memory store's does (afsm_session_update). */
            int64_t closed_at = mem_store_wall_now(es->replica);
            if (closed_at > out->last_active_at_ns)
                out->last_active_at_ns = closed_at;
            out->expires_at_ns = out->last_active_at_ns + (int64_t)out->timeout_ms * 1000000;
        }
        return GUARD_STOP;
    }
    if (new_state == AFSM_STATE_ACTIVE && s->state != AFSM_STATE_ACTIVE)
        s->last_active_at_ns = mem_store_wall_now(es->replica);
    s->state = new_state;
    if (u->fields & AFSM_UPDATE_STATS) {
        s->stats = u->stats;
        /* If its answer is lost, the echo sets the stats here too. */
        o->rec.stats_set = 1;
    }
    return GUARD_WRITE;
}

static afsm_status etcd_update(store *st, const afsm_uuid *id, const afsm_update *u, afsm_session_info *out)
{
    update_ctx ctx = {u, out};
    int flags = ETCD_APPLY_OWN | ((u->fields & AFSM_UPDATE_STATS) ? ETCD_APPLY_RESET : 0);
    return guarded_rmw((etcd_store *)st, id, flags, update_edit, &ctx, out, NULL, NULL);
}

static int activate_edit(etcd_store *es, owned_record *o, const track_info *ti, void *ctx, afsm_status *status)
{
    (void)ti;
    (void)ctx;
    *status = AFSM_OK;
    if (o->rec.info.state != AFSM_STATE_CONNECTING && o->rec.info.state != AFSM_STATE_IDLE)
        return GUARD_STOP; /* activated meanwhile (a racing heartbeat, another node) */
    o->rec.info.state = AFSM_STATE_ACTIVE;
    o->rec.info.last_active_at_ns = mem_store_wall_now(es->replica);
    return GUARD_WRITE;
}

/* A heartbeat moves a CONNECTING or IDLE session to ACTIVE (the memory
 * store's rule). The replica leaves that to this store (external_
 * activation): it is a guarded write like an explicit update, so every
 * node sees it and fires its STATE_CHANGED. Once: a racing heartbeat that
 * loses the guard finds ACTIVE in etcd's record and writes nothing. */
static afsm_status heartbeat_activate(etcd_store *es, const afsm_uuid *id)
{
    afsm_session_info now = {.version = AFSM_SESSION_INFO_VERSION};
    if (es->replica->ops->get(es->replica, id, &now) != AFSM_OK ||
        (now.state != AFSM_STATE_CONNECTING && now.state != AFSM_STATE_IDLE))
        return AFSM_OK; /* the common case: already active (or gone) */
    /* With etcd away, not every heartbeat may block for the request
     * timeout (as renewals: review finding 11). */
    if (!track_activation_due(&es->tracks, id, etcd_lease_clock_ns()))
        return AFSM_OK;
    afsm_status status = guarded_rmw(es, id, ETCD_APPLY_OWN, activate_edit, NULL, NULL, NULL, NULL);
    if (status == AFSM_EUNAVAILABLE) {
        /* The heartbeat itself was taken (the replica answers while etcd
         * is away); the session stays as it is, and a heartbeat a quarter
         * period later tries the activation again. */
        track_activation_failed(&es->tracks, id, etcd_lease_clock_ns());
        etcd_log(es, AFSM_LOG_WARN, "etcd: activation by heartbeat not written; retried a quarter period later", NULL,
                 NULL);
        return AFSM_OK;
    }
    /* Deleted meanwhile: the heartbeat itself was taken. */
    return status == AFSM_ENOTFOUND ? AFSM_OK : status;
}

static int rotate_edit(etcd_store *es, owned_record *o, const track_info *ti, void *ctx, afsm_status *status)
{
    (void)es;
    (void)ti;
    if (o->rec.info.state == AFSM_STATE_CLOSED) {
        *status = AFSM_ECLOSED;
        return GUARD_STOP;
    }
    o->rec.info.token_generation++;
    *(afsm_session_info *)ctx = o->rec.info; /* the record as it will be written */
    return GUARD_WRITE;
}

static afsm_status etcd_rotate_generation(store *st, const afsm_uuid *id, afsm_session_info *out)
{
    afsm_session_info pending;
    int wrote = 0;
    afsm_status status = guarded_rmw((etcd_store *)st, id, ETCD_APPLY_OWN, rotate_edit, &pending, NULL, &wrote, NULL);
    /* Only a write made fills `out`: after lost guards a token sealed for
     * it would name no session. */
    if (status == AFSM_OK && wrote)
        *out = pending;
    return status;
}

/* ---- delete ---------------------------------------------------------------------- */

/* Adds to t the removal of the session rec describes: the g/ key with the
 * reason (on the session's lease), then the deletion of s/, c/, u/ and, if
 * with_slot, its n/ key (an eviction writes the slot for its new session
 * instead). Returns 0 for want of memory (t is then broken). */
static int add_removal(etcd_store *es, txn *t, const keys_record *rec, int with_slot, afsm_delete_reason why,
                       const char *reason, size_t reason_len)
{
    const afsm_session_info *s = &rec->info;
    char skey[KEYS_MAX], ckey[KEYS_MAX], ukey[KEYS_MAX], nkey[KEYS_MAX], gkey[KEYS_MAX];
    size_t slen = keys_session(es->prefix, es->prefix_len, &s->session_id, skey);
    size_t clen = keys_connection(es->prefix, es->prefix_len, &s->connection_id, ckey);
    size_t ulen = keys_user(es->prefix, es->prefix_len, s->user_id, s->user_id_len, &s->session_id, ukey);
    size_t glen = keys_gone(es->prefix, es->prefix_len, &s->session_id, gkey);
    /* A reason missing a field is one no node can read: they would report
     * an expiry where this one reports the delete. */
    json_object *gone =
        etcd_with(json_object_new_object(), "reason", json_object_new_string_len(reason, (int)reason_len));
    gone = etcd_with(gone, "why", json_object_new_int((int)why));
    const char *gone_text = gone != NULL ? json_object_to_json_string_ext(gone, JSON_C_TO_STRING_PLAIN) : NULL;
    if (gone_text == NULL) {
        json_object_put(gone);
        t->broken = 1;
        return 0;
    }
    /* The reason first: a watcher learns it before the deletion it explains. */
    txn_add(t, t->success, op_put(gkey, glen, gone_text, strlen(gone_text), rec->lease));
    txn_add(t, t->success, op_delete(skey, slen));
    txn_add(t, t->success, op_delete(ckey, clen));
    txn_add(t, t->success, op_delete(ukey, ulen));
    if (with_slot && rec->slot >= 0) {
        size_t nlen = keys_slot(es->prefix, es->prefix_len, s->user_id, s->user_id_len, (uint32_t)rec->slot, nkey);
        txn_add(t, t->success, op_delete(nkey, nlen));
    }
    json_object_put(gone);
    return !t->broken;
}

/* Deletes every key of the session rec describes, with the reason beside
 * it, if its record still exists. */
static afsm_status delete_txn(etcd_store *es, const keys_record *rec, afsm_delete_reason why, const char *reason,
                              size_t reason_len, int64_t *revision)
{
    char skey[KEYS_MAX];
    size_t slen = keys_session(es->prefix, es->prefix_len, &rec->info.session_id, skey);
    txn t;
    if (!txn_init(&t))
        return AFSM_ENOMEM;
    txn_add(&t, t.compare, compare(skey, slen, "CREATE", "GREATER", 0));
    add_removal(es, &t, rec, 1, why, reason, reason_len);
    int succeeded = 0;
    json_object *reply;
    afsm_status st = txn_send(es, &t, &succeeded, revision, &reply);
    json_object_put(reply);
    return st == AFSM_OK && !succeeded ? AFSM_ENOTFOUND : st;
}

/* Applies this node's delete of rec (made at revision) and captures its
 * DELETED in *ev, for the caller to fire in place (an event points into
 * its etcd_event), after *created. A session the replica does not hold yet
 * (delete by user and evictions read etcd, not the replica) is applied
 * first from rec, with its CREATED in *created, so that this node tells of
 * it as of every other session, and as the memory store reports every
 * session the call removed. The watch holds the session's events
 * meanwhile (hold_events), and the tombstone makes it skip the session's
 * older puts afterwards. (Should the replica take no copy, for want of
 * memory, the DELETED still fires.) */
static void apply_own_delete(etcd_store *es, const keys_record *rec, int64_t revision, afsm_delete_reason why,
                             const char *reason, size_t reason_len, etcd_event *created, etcd_event *ev)
{
    const afsm_uuid *id = &rec->info.session_id;
    afsm_session_info probe = {.version = AFSM_SESSION_INFO_VERSION};
    created->pending = created->counted = 0;
    struct timespec until = request_deadline(es);
    pthread_mutex_lock(&es->apply_lock);
    /* Wait (bounded by the request timeout) while another thread of this
     * node holds the id's placeholder too, or has applied an event of the
     * session it has not fired yet:
     * - a create whose txn etcd committed (this removal found its session
     *   there) but that has not applied its answer: it then fires its
     *   CREATED on its own thread and returns its session, which this
     *   removal removes, as on the memory store; without the wait, the
     *   session would be applied here as unseen and its creator's answer
     *   dropped under the tombstone (AFSM_ENOTFOUND for a committed
     *   create);
     * - a writer about to fire the session's CREATED or STATE_CHANGED: the
     *   DELETED must come after it (afsm.h: nothing follows a DELETED);
     *   unless this thread is delivering one of them, from whose callback
     *   this removal comes: that one is delivered already.
     * (Another removal of the id holding it too ends with AFSM_ENOTFOUND.) */
    track_info ti;
    int own_callback = etcd_firing_here(id);
    while (track_get(&es->tracks, id, &ti) &&
           ((ti.mod_revision == 0 && ti.inflight > 1) || (ti.unfired > 0 && !own_callback)) &&
           pthread_cond_timedwait(&es->applied, &es->apply_lock, &until) == 0)
        ;
    int watch_past = atomic_load_explicit(&es->applied_revision, memory_order_relaxed) >= revision;
    int unseen = !watch_past && es->replica->ops->get(es->replica, id, &probe) != AFSM_OK;
    if (unseen && etcd_apply_put(es, rec, revision - 1, 0, created) == AFSM_OK)
        unseen = 0;
    track_set_reason(&es->tracks, id, why, reason, reason_len);
    etcd_apply_delete(es, id, ev);
    if (!ev->pending && unseen)
        etcd_deleted_unseen(es, &rec->info, why, reason, reason_len, ev);
    etcd_tombstone_add(es, id, revision);
    pthread_mutex_unlock(&es->apply_lock);
}

/* delete_txn, then its result applied here. While the txn is under way
 * the watch holds the session's deletion (wait_own_writes), so the DELETED
 * fires once, on this thread, before the call returns, as on the memory
 * store; the watch's copy then finds the session gone. */
static afsm_status delete_and_apply(etcd_store *es, const afsm_uuid *id, const keys_record *rec, afsm_delete_reason why,
                                    const char *reason, size_t reason_len)
{
    int64_t revision;
    etcd_event created = {0}, ev = {0};
    afsm_status st = hold_events(es, id);
    if (st != AFSM_OK)
        return st; /* nothing sent */
    st = delete_txn(es, rec, why, reason, reason_len, &revision);
    if (st == AFSM_OK)
        apply_own_delete(es, rec, revision, why, reason, reason_len, &created, &ev);
    release_events(es, id); /* a no-op once the delete removed the entry */
    /* Fired once the count is down: a DELETED callback that restores the
     * same id makes a new placeholder, whose count must stay its own. */
    etcd_fire(es, &created);
    etcd_fire(es, &ev);
    return st;
}

/* A session this node's replica knows. */
static afsm_status etcd_remove_known(etcd_store *es, const afsm_uuid *id, afsm_delete_reason why, const char *reason,
                                     size_t reason_len)
{
    owned_record *o = malloc(sizeof(*o));
    if (o == NULL)
        return AFSM_ENOMEM;
    track_info ti;
    afsm_status st = current_record(es, id, o, &ti);
    if (st == AFSM_OK)
        st = delete_and_apply(es, id, &o->rec, why, reason, reason_len);
    owned_release(o);
    free(o);
    return st;
}

static afsm_status etcd_remove(store *st, const afsm_uuid *id, const char *reason, size_t reason_len)
{
    if (reason == NULL || reason_len == 0) {
        reason = "deleted";
        reason_len = 7;
    }
    return etcd_remove_known((etcd_store *)st, id, AFSM_DELETE_REQUESTED, reason, reason_len);
}

/* Reads one record from etcd (remove_by_user: sessions this node's
 * replica may not have yet). */
static afsm_status read_record(etcd_store *es, const afsm_uuid *id, keys_record *rec, json_object **holder)
{
    char skey[KEYS_MAX];
    size_t slen = keys_session(es->prefix, es->prefix_len, id, skey);
    json_object *body = etcd_with(json_object_new_object(), "key", etcd_json_bytes(skey, slen)), *reply = NULL, *kvs;
    if (body == NULL)
        return AFSM_ENOMEM;
    afsm_status st = etcd_call(es->client, "/v3/kv/range", body, 1, &reply, NULL);
    json_object_put(body);
    if (st == AFSM_OK && ((kvs = etcd_get_array(reply, "kvs")) == NULL || json_object_array_length(kvs) == 0))
        st = AFSM_ENOTFOUND;
    if (st == AFSM_OK) {
        long len;
        char *value = etcd_get_bytes(json_object_array_get_idx(kvs, 0), "value", &len);
        st = value != NULL ? keys_record_decode(value, (size_t)len, rec, holder) : AFSM_EINTERNAL;
        free(value);
    }
    json_object_put(reply);
    return st;
}

static afsm_status etcd_remove_by_user(store *st, const char *user_id, size_t user_id_len, const char *reason,
                                       size_t reason_len, size_t *removed)
{
    etcd_store *es = (etcd_store *)st;
    *removed = 0;
    if (reason == NULL || reason_len == 0) {
        reason = "deleted";
        reason_len = 7;
    }
    /* The user's sessions on every node: etcd's u/ keys, not this replica. */
    char key[KEYS_MAX], end[KEYS_MAX];
    size_t n = keys_user_prefix(es->prefix, es->prefix_len, user_id, user_id_len, key);
    keys_range_end(key, n, end);
    json_object *body = etcd_with(json_object_new_object(), "key", etcd_json_bytes(key, n)), *reply = NULL, *kvs;
    body = etcd_with(body, "range_end", etcd_json_bytes(end, n));
    body = etcd_with(body, "keys_only", json_object_new_boolean(1));
    if (body == NULL)
        return AFSM_ENOMEM;
    afsm_status status = etcd_call(es->client, "/v3/kv/range", body, 1, &reply, NULL);
    json_object_put(body);
    if (status == AFSM_OK && (kvs = etcd_get_array(reply, "kvs")) != NULL) {
        for (size_t i = 0; i < json_object_array_length(kvs) && status == AFSM_OK; i++) {
            long len;
            char *k = etcd_get_bytes(json_object_array_get_idx(kvs, i), "key", &len);
            afsm_uuid id;
            /* Exactly "<prefix>u/<user>/<id>": not a longer user id's key. */
            if (k != NULL && (size_t)len == n + AFSM_UUID_STRING_SIZE - 1 &&
                keys_parse(es->prefix, es->prefix_len, k, (size_t)len, &id) == KEYS_USER) {
                keys_record rec;
                json_object *holder = NULL;
                afsm_status one = read_record(es, &id, &rec, &holder);
                if (one == AFSM_OK)
                    one = delete_and_apply(es, &id, &rec, AFSM_DELETE_USER, reason, reason_len);
                if (one == AFSM_OK) {
                    (*removed)++;
                } else if (one != AFSM_ENOTFOUND) {
                    status = one; /* gone meanwhile is fine; etcd down is not */
                }
                json_object_put(holder);
            }
            free(k);
        }
    }
    json_object_put(reply);
    return status == AFSM_ENOTFOUND ? AFSM_EINTERNAL : status;
}

/* ---- reads, heartbeats, stats: the replica --------------------------------------- */

/* Reads key from etcd: whether it exists, its mod revision, and (unless
 * keys_only) its value (free it). */
static afsm_status read_key(etcd_store *es, const char *key, size_t len, int keys_only, int *found,
                            int64_t *mod_revision, char **value, long *value_len)
{
    json_object *body = etcd_with(json_object_new_object(), "key", etcd_json_bytes(key, len)), *reply = NULL, *kvs;
    if (keys_only)
        body = etcd_with(body, "keys_only", json_object_new_boolean(1));
    if (body == NULL)
        return AFSM_ENOMEM;
    afsm_status st = etcd_call(es->client, "/v3/kv/range", body, 1, &reply, NULL);
    json_object_put(body);
    *found = 0;
    if (value != NULL)
        *value = NULL;
    if (st == AFSM_OK && (kvs = etcd_get_array(reply, "kvs")) != NULL && json_object_array_length(kvs) > 0) {
        json_object *kv = json_object_array_get_idx(kvs, 0);
        *found = 1;
        *mod_revision = etcd_get_int64(kv, "mod_revision");
        if (value != NULL) {
            *value = etcd_get_bytes(kv, "value", value_len);
            if (*value == NULL && *value_len < 0)
                st = AFSM_ENOMEM;
        }
    }
    json_object_put(reply);
    return st == AFSM_ENOTFOUND ? AFSM_EINTERNAL : st;
}

/* The monotonic time one request timeout from now. */
static struct timespec request_deadline(const etcd_store *es)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    uint64_t ns = (uint64_t)until.tv_nsec + es->request_timeout_ns;
    until.tv_sec += (time_t)(ns / 1000000000u);
    until.tv_nsec = (long)(ns % 1000000000u);
    return until;
}

/* Consistent mode: waits until the replica has applied id's record at
 * mod_revision or later, at most until `until` (CLOCK_MONOTONIC): the
 * caller's request timeout, counted from before its read of etcd. */
static afsm_status wait_applied(etcd_store *es, const afsm_uuid *id, int64_t mod_revision, const struct timespec *until)
{
    afsm_status st = AFSM_OK;
    pthread_mutex_lock(&es->apply_lock);
    for (;;) {
        track_info ti;
        if (track_get(&es->tracks, id, &ti) && ti.mod_revision >= mod_revision)
            break;
        if (pthread_cond_timedwait(&es->applied, &es->apply_lock, until) != 0) {
            st = AFSM_EUNAVAILABLE; /* the watch did not deliver it in time */
            break;
        }
    }
    pthread_mutex_unlock(&es->apply_lock);
    return st;
}

/* Linearizable mode: the record itself, from etcd. */
static afsm_status read_from_etcd(etcd_store *es, const afsm_uuid *id, afsm_session_info *out, char *meta,
                                  size_t meta_size, size_t *needed, size_t *count)
{
    char skey[KEYS_MAX];
    size_t slen = keys_session(es->prefix, es->prefix_len, id, skey);
    int found;
    int64_t mod_revision;
    char *value;
    long len = 0;
    afsm_status st = read_key(es, skey, slen, 0, &found, &mod_revision, &value, &len);
    if (st != AFSM_OK || !found)
        return st != AFSM_OK ? st : AFSM_ENOTFOUND;
    keys_record rec;
    json_object *holder = NULL;
    st = value != NULL ? keys_record_decode(value, (size_t)len, &rec, &holder) : AFSM_EINTERNAL;
    free(value);
    if (st != AFSM_OK)
        return st == AFSM_EINVAL ? AFSM_EINTERNAL : st;
    if (out != NULL) {
        uint32_t version = out->version;
        *out = rec.info;
        out->version = version;
        const char *addr = es->config.server_addr != NULL ? es->config.server_addr : "";
        out->server_addr_len = (uint32_t)strlen(addr);
        memcpy(out->server_addr, addr, out->server_addr_len + 1u);
        out->expires_at_ns = out->last_active_at_ns + (int64_t)out->timeout_ms * 1000000;
        out->metadata_count = (uint32_t)rec.meta_count;
        size_t bytes = 0;
        for (size_t i = 0; i < rec.meta_count; i++)
            bytes += rec.meta[i].key_len + rec.meta[i].value_len + 2;
        out->metadata_bytes = (uint32_t)bytes;
    }
    if (needed != NULL || meta != NULL) {
        /* The memory store's form: sorted "key\0value\0" pairs. */
        metadata *blob = NULL;
        st = metadata_merge(NULL, rec.meta, rec.meta_count, &blob);
        size_t size = blob != NULL ? blob->data_bytes : 0;
        if (st == AFSM_OK) {
            if (needed != NULL)
                *needed = size;
            if (count != NULL)
                *count = blob != NULL ? blob->count : 0;
            if (size > meta_size)
                st = AFSM_EBUFFER;
            else if (size > 0)
                memcpy(meta, blob->data, size);
        }
        metadata_free(blob);
    }
    json_object_put(holder);
    return st;
}

/* Consistent mode: etcd's revision of the record (no payload), then the
 * replica once it has caught up. AFSM_OK: the replica answers now. */
static afsm_status catch_up(etcd_store *es, const afsm_uuid *id)
{
    char skey[KEYS_MAX];
    size_t slen = keys_session(es->prefix, es->prefix_len, id, skey);
    int found;
    int64_t mod_revision = 0;
    /* One request timeout for the read and the wait together. */
    struct timespec until = request_deadline(es);
    afsm_status st = read_key(es, skey, slen, 1, &found, &mod_revision, NULL, NULL);
    if (st != AFSM_OK)
        return st;
    /* Gone in etcd: gone, even if this replica has not heard yet. */
    return found ? wait_applied(es, id, mod_revision, &until) : AFSM_ENOTFOUND;
}

/* The session id a connection id names, from etcd's c/ key. */
static afsm_status connection_owner(etcd_store *es, const afsm_uuid *connection_id, afsm_uuid *id)
{
    char ckey[KEYS_MAX];
    size_t clen = keys_connection(es->prefix, es->prefix_len, connection_id, ckey);
    int found;
    int64_t mod_revision;
    char *value = NULL;
    long len = 0;
    afsm_status st = read_key(es, ckey, clen, 0, &found, &mod_revision, &value, &len);
    if (st == AFSM_OK && !found)
        st = AFSM_ENOTFOUND;
    if (st == AFSM_OK && (value == NULL || uuid_parse_text(value, (size_t)len, id) != AFSM_OK))
        st = AFSM_EINTERNAL;
    free(value);
    return st;
}

/* Whether a read goes to etcd itself: linearizable mode, or consistent
 * mode on the watch thread (an event callback), which would wait in
 * wait_applied for its own progress; etcd's answer is at least as new. */
static int read_etcd_itself(etcd_store *es)
{
    return es->read_mode == AFSM_READ_LINEARIZABLE ||
           (es->read_mode == AFSM_READ_CONSISTENT && etcd_on_watch_thread(es));
}

static afsm_status etcd_get(store *st, const afsm_uuid *id, afsm_session_info *out)
{
    etcd_store *es = (etcd_store *)st;
    if (read_etcd_itself(es))
        return read_from_etcd(es, id, out, NULL, 0, NULL, NULL);
    if (es->read_mode == AFSM_READ_CONSISTENT) {
        afsm_status status = catch_up(es, id);
        if (status != AFSM_OK)
            return status;
    }
    return es->replica->ops->get(es->replica, id, out);
}

static afsm_status etcd_get_by_connection(store *st, const afsm_uuid *connection_id, afsm_session_info *out)
{
    etcd_store *es = (etcd_store *)st;
    if (es->read_mode == AFSM_READ_REPLICA)
        return es->replica->ops->get_by_connection(es->replica, connection_id, out);
    afsm_uuid id;
    afsm_status status = connection_owner(es, connection_id, &id);
    return status == AFSM_OK ? etcd_get(st, &id, out) : status;
}

static afsm_status etcd_get_metadata(store *st, const afsm_uuid *id, char *buf, size_t buf_size, size_t *needed,
                                     size_t *count)
{
    etcd_store *es = (etcd_store *)st;
    if (read_etcd_itself(es))
        return read_from_etcd(es, id, NULL, buf, buf_size, needed, count);
    if (es->read_mode == AFSM_READ_CONSISTENT) {
        afsm_status status = catch_up(es, id);
        if (status != AFSM_OK)
            return status;
    }
    return es->replica->ops->get_metadata(es->replica, id, buf, buf_size, needed, count);
}

static afsm_status etcd_add_stats(store *st, const afsm_uuid *id, const afsm_stats *delta)
{
    store *r = ((etcd_store *)st)->replica;
    return r->ops->add_stats(r, id, delta);
}

static afsm_status heartbeat_activate(etcd_store *es, const afsm_uuid *id);

/* After the replica took a heartbeat: the activation it may call for (an
 * etcd write), then the lease renewal. */
static afsm_status after_heartbeat(etcd_store *es, const afsm_uuid *id)
{
    afsm_status status = heartbeat_activate(es, id);
    afsm_status renewed = etcd_renew_if_due(es, id); /* queued for the renewer: no wait */
    return status != AFSM_OK ? status : renewed;
}

static afsm_status etcd_heartbeat(store *st, const afsm_uuid *id, uint64_t *remaining_ns)
{
    etcd_store *es = (etcd_store *)st;
    afsm_status status = es->replica->ops->heartbeat(es->replica, id, remaining_ns);
    return status == AFSM_OK ? after_heartbeat(es, id) : status;
}

/* Lists and counts: in consistent and linearizable mode the replica first
 * catches up with etcd's revision (etcd_replica_sync), then answers. Read
 * from etcd instead, a list would move every record's payload per call
 * and be no more of a snapshot: the replica's scan is not atomic either. */
static afsm_status etcd_list(store *st, const afsm_list_filter *filter, afsm_session_info *out, size_t *count,
                             uint64_t *total, afsm_uuid *next_cursor)
{
    etcd_store *es = (etcd_store *)st;
    if (es->read_mode != AFSM_READ_REPLICA) {
        afsm_status status = etcd_replica_sync(es);
        if (status != AFSM_OK)
            return status;
    }
    return es->replica->ops->list(es->replica, filter, out, count, total, next_cursor);
}

static afsm_status etcd_advance(store *st, uint64_t now_ns, size_t *expired)
{
    /* Expiry is etcd's (leases); it reaches this node through the watch.
     * The rest of an advance the replica still needs: reported (and
     * written) times follow wall-clock steps, and what it removed is freed. */
    mem_store_tend(((etcd_store *)st)->replica);
    (void)now_ns;
    *expired = 0;
    return AFSM_OK;
}

static afsm_status etcd_counts(store *st, afsm_counts *out)
{
    etcd_store *es = (etcd_store *)st;
    if (es->read_mode != AFSM_READ_REPLICA) {
        afsm_status status = etcd_replica_sync(es);
        if (status != AFSM_OK)
            return status;
    }
    return es->replica->ops->counts(es->replica, out);
}

static afsm_status etcd_metrics(store *st, afsm_metrics *out)
{
    etcd_store *es = (etcd_store *)st;
    afsm_status status = es->replica->ops->metrics(es->replica, out);
    if (status != AFSM_OK)
        return status;
    out->created_total = atomic_load_explicit(&es->created_total, memory_order_relaxed);
    for (unsigned r = 0; r < AFSM_DELETE_REASON_COUNT; r++)
        out->deleted_total[r] = atomic_load_explicit(&es->deleted_total[r], memory_order_relaxed);
    out->expired_total = out->deleted_total[AFSM_DELETE_EXPIRED];
    out->reaper_lag_ns = 0;
    out->etcd_lease_grants_total = atomic_load_explicit(&es->lease_grants, memory_order_relaxed);
    out->etcd_lease_keepalives_total = atomic_load_explicit(&es->lease_keepalives, memory_order_relaxed);
    out->etcd_stats_writes_total = atomic_load_explicit(&es->stats_writes, memory_order_relaxed);
    /* Down: how long. Connected: the last own write's echo delay, or the
     * age of the one still awaited if that is longer (a stalled watch). */
    uint64_t down = atomic_load_explicit(&es->watch_down_since_ns, memory_order_relaxed);
    uint64_t now = etcd_lease_clock_ns();
    uint64_t lag = atomic_load_explicit(&es->echo_delay_ns, memory_order_relaxed);
    uint64_t pending = atomic_load_explicit(&es->echo_pending_since_ns, memory_order_relaxed);
    if (pending != 0 && now > pending && now - pending > lag)
        lag = now - pending;
    if (down != 0)
        lag = now > down ? now - down : 0;
    out->etcd_replica_lag_seconds = (double)lag / 1e9;
    return AFSM_OK;
}

/* ---- handles ----------------------------------------------------------------------- */

static const store_ops etcd_ops;

static afsm_status etcd_pin(store *st, const afsm_uuid *id, int by_connection, store_handle **out)
{
    etcd_store *es = (etcd_store *)st;
    etcd_handle *h = malloc(sizeof(*h));
    if (h == NULL)
        return AFSM_ENOMEM;
    afsm_status status = es->replica->ops->pin(es->replica, id, by_connection, &h->inner);
    if (status != AFSM_OK) {
        free(h);
        return status;
    }
    h->base.ops = &etcd_ops;
    h->es = es;
    h->inner->ops->handle_session_id(h->inner, &h->id);
    atomic_fetch_add_explicit(&es->pinned, 1, memory_order_relaxed);
    *out = &h->base;
    return AFSM_OK;
}

static afsm_status etcd_handle_heartbeat(store_handle *handle, uint64_t *remaining_ns)
{
    etcd_handle *h = (etcd_handle *)handle;
    /* Copied first: the inner heartbeat may fire an event on this thread
     * whose callback releases (frees) this very handle. */
    etcd_store *es = h->es;
    afsm_uuid id = h->id;
    afsm_status status = h->inner->ops->handle_heartbeat(h->inner, remaining_ns);
    return status == AFSM_OK ? after_heartbeat(es, &id) : status;
}

static afsm_status etcd_handle_add_stats(store_handle *handle, const afsm_stats *delta)
{
    etcd_handle *h = (etcd_handle *)handle;
    return h->inner->ops->handle_add_stats(h->inner, delta);
}

/* A heartbeat, then the stats added by id: nothing is deferred (the
 * replica is never advanced, so its handles' counts would wait for their
 * release), and the handle is not touched after the heartbeat, whose event
 * callback may release it. The heartbeat reads the store's clock; the
 * caller's reading is only checked, as the memory store checks it. If the
 * stats add then fails (the session went meanwhile), the heartbeat stays. */
static afsm_status etcd_handle_packet(store_handle *handle, uint64_t now_ns, const afsm_stats *delta,
                                      uint64_t *remaining_ns)
{
    etcd_handle *h = (etcd_handle *)handle;
    etcd_store *es = h->es;
    afsm_uuid id = h->id;
    if (now_ns > es->config.clock(es->config.clock_ctx))
        return errdetail_set(AFSM_EINVAL,
                             "now_ns: %llu is ahead of the engine clock (pass a reading of afsm_engine_now)",
                             (unsigned long long)now_ns);
    uint64_t remaining = 0;
    afsm_status status = etcd_handle_heartbeat(handle, &remaining);
    if (status == AFSM_OK)
        status = etcd_add_stats(&es->base, &id, delta);
    if (status == AFSM_OK && remaining_ns != NULL)
        *remaining_ns = remaining;
    return status;
}

static void etcd_handle_session_id(const store_handle *handle, afsm_uuid *out)
{
    *out = ((const etcd_handle *)handle)->id;
}

static void etcd_handle_release(store_handle *handle)
{
    etcd_handle *h = (etcd_handle *)handle;
    h->inner->ops->handle_release(h->inner);
    atomic_fetch_sub_explicit(&h->es->pinned, 1, memory_order_relaxed);
    free(h);
}

static size_t etcd_pinned(store *st)
{
    return atomic_load_explicit(&((etcd_store *)st)->pinned, memory_order_relaxed);
}

/* ---- open and close ----------------------------------------------------------------- */

static void etcd_close(store *st)
{
    etcd_store *es = (etcd_store *)st;
    /* Sessions stay in etcd: their leases end them unless another node
     * keeps them alive. */
    etcd_stats_stop(es); /* a last flush (it also tells the watch to stop) */
    etcd_replica_stop(es);
    /* After the watch: its event callbacks may heartbeat until it stops. */
    etcd_renewer_stop(es);
    etcd_leases_stop(es);
    es->replica->ops->close(es->replica);
    etcd_client_close(es->client);
    track_destroy(&es->tracks);
    etcd_tombstones_free(es);
    pthread_cond_destroy(&es->applied);
    pthread_mutex_destroy(&es->apply_lock);
    pthread_mutex_destroy(&es->group_lock);
    pthread_mutex_destroy(&es->evict_lock);
    free(es);
}

static const store_ops etcd_ops = {
    .close = etcd_close,
    .create = etcd_create,
    .get = etcd_get,
    .get_by_connection = etcd_get_by_connection,
    .get_metadata = etcd_get_metadata,
    .update = etcd_update,
    .add_stats = etcd_add_stats,
    .heartbeat = etcd_heartbeat,
    .remove = etcd_remove,
    .remove_by_user = etcd_remove_by_user,
    .rotate_generation = etcd_rotate_generation,
    .list = etcd_list,
    .advance = etcd_advance,
    .counts = etcd_counts,
    .metrics = etcd_metrics,
    .pin = etcd_pin,
    .handle_heartbeat = etcd_handle_heartbeat,
    .handle_add_stats = etcd_handle_add_stats,
    .handle_packet = etcd_handle_packet,
    .handle_session_id = etcd_handle_session_id,
    .handle_release = etcd_handle_release,
    .pinned = etcd_pinned,
};

/* A positive id no other open is likely to draw (64 random bits; the clock
 * and an address if the system's random source fails). */
static int64_t new_writer_id(const void *salt)
{
    uint64_t id;
    if (!random_fill(&id, sizeof(id)))
        id = (uint64_t)clock_wall_ns() ^ (uint64_t)(uintptr_t)salt;
    id &= (uint64_t)INT64_MAX;
    return id != 0 ? (int64_t)id : 1;
}

afsm_status etcd_store_open(const store_config *config, const etcd_store_config *etcd, store **out)
{
    const char *prefix = etcd->prefix != NULL ? etcd->prefix : KEYS_PREFIX_DEFAULT;
    size_t prefix_len = strlen(prefix);
    if (prefix_len == 0 || prefix_len > KEYS_PREFIX_MAX || (unsigned char)prefix[prefix_len - 1] == 0xff)
        return AFSM_EINVAL;
    etcd_store *es = calloc(1, sizeof(*es));
    if (es == NULL)
        return AFSM_ENOMEM;
    es->base.ops = &etcd_ops;
    es->config = *config;
    memcpy(es->prefix, prefix, prefix_len + 1);
    es->prefix_len = prefix_len;
    es->read_mode = etcd->read_mode;
    es->writer_id = new_writer_id(es);
    es->stats_flush_ns = (etcd->stats_flush_ms != 0 ? etcd->stats_flush_ms : STATS_FLUSH_MS_DEFAULT) * NS_PER_MS;
    pthread_mutex_init(&es->apply_lock, NULL);
    pthread_mutex_init(&es->group_lock, NULL);
    pthread_mutex_init(&es->evict_lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&es->applied, &attr);
    pthread_condattr_destroy(&attr);
    afsm_status status = track_init(&es->tracks);
    if (status != AFSM_OK) {
        pthread_cond_destroy(&es->applied);
        pthread_mutex_destroy(&es->apply_lock);
        pthread_mutex_destroy(&es->group_lock);
        pthread_mutex_destroy(&es->evict_lock);
        free(es);
        return status;
    }
    es->request_timeout_ns =
        (etcd->request_timeout_ms != 0 ? etcd->request_timeout_ms : REQUEST_TIMEOUT_MS_DEFAULT) * NS_PER_MS;
    etcd_client_config cc = {
        .endpoints = etcd->endpoints,
        .dial_timeout_ms = etcd->dial_timeout_ms != 0 ? etcd->dial_timeout_ms : DIAL_TIMEOUT_MS_DEFAULT,
        .request_timeout_ms = etcd->request_timeout_ms != 0 ? etcd->request_timeout_ms : REQUEST_TIMEOUT_MS_DEFAULT,
        .ca_file = etcd->ca_file,
        .cert_file = etcd->cert_file,
        .key_file = etcd->key_file,
        .user = etcd->user,
        .password = etcd->password,
    };
    /* The replica: no events (this store fires them), no expiry of its own
     * (leases decide), no cap (the txns enforce it across nodes). */
    store_config rc = *config;
    rc.emit = NULL;
    rc.emit_ctx = NULL;
    rc.external_expiry = 1;
    rc.external_activation = 1; /* heartbeat_activate writes it to etcd */
    rc.max_sessions_per_user = 0;
    status = etcd_client_open(&cc, &es->client);
    if (status != AFSM_OK)
        goto fail_tracks;
    status = mem_store_open(&rc, &es->replica);
    if (status != AFSM_OK)
        goto fail_client;
    /* The renewer first: a callback fired by the watch may heartbeat. */
    status = etcd_renewer_start(es);
    if (status != AFSM_OK)
        goto fail_replica;
    status = etcd_replica_load(es, 0);
    if (status == AFSM_OK)
        status = etcd_replica_start(es);
    if (status != AFSM_OK) {
        etcd_renewer_stop(es);
        goto fail_replica;
    }
    status = etcd_leases_start(es);
    if (status == AFSM_OK) {
        status = etcd_stats_start(es);
        if (status != AFSM_OK)
            etcd_leases_stop(es);
    }
    if (status != AFSM_OK) {
        etcd_replica_stop(es);
        etcd_renewer_stop(es);
        goto fail_replica;
    }
    *out = &es->base;
    return AFSM_OK;
fail_replica:
    es->replica->ops->close(es->replica);
fail_client:
    etcd_client_close(es->client);
fail_tracks:
    track_destroy(&es->tracks);
    pthread_cond_destroy(&es->applied);
    pthread_mutex_destroy(&es->apply_lock);
    pthread_mutex_destroy(&es->group_lock);
    pthread_mutex_destroy(&es->evict_lock);
    free(es);
    return status;
}
