/*
 * keyring.c: see keyring.h. Snapshots are small (a handful of keys), so a
 * copy per change is the simplest way to give readers a consistent ring.
 */
#include "keyring.h"

#include <ck_epoch.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/alloc.h"
#include "util/epoch.h"
#include "util/errdetail.h"

typedef struct key_slot {
    uint32_t id;
    uint8_t key[AFSM_KEY_BYTES];
} key_slot;

typedef struct snapshot {
    ck_epoch_entry_t epoch_entry;
    int current; /* index into slots, -1 when empty */
    uint32_t count;
    key_slot slots[];
} snapshot;

struct keyring {
    pthread_mutex_t lock;                                 /* writers */
    ck_epoch_record_t *defer;                             /* used under lock only */
    _Atomic(snapshot *) keys;                             /* never NULL */
    _Atomic uint64_t removed[(AFSM_KEY_ID_MAX + 1) / 64]; /* bit per removed id */
};

static void snapshot_destroy(ck_epoch_entry_t *entry)
{
    epoch_observe_quiescence();
    snapshot *snap = (snapshot *)entry;
    sodium_memzero(snap->slots, snap->count * sizeof(key_slot));
    mem_free(snap);
}

static snapshot *snapshot_alloc(uint32_t count)
{
    snapshot *snap = mem_calloc(1, sizeof(*snap) + count * sizeof(key_slot));
    if (snap != NULL) {
        snap->count = count;
        snap->current = -1;
    }
    return snap;
}

afsm_status keyring_open(keyring **out)
{
    keyring *ring = mem_calloc(1, sizeof(*ring));
    snapshot *empty = snapshot_alloc(0);
    ck_epoch_record_t *defer = epoch_writer_record();
    if (ring == NULL || empty == NULL || defer == NULL) {
        mem_free(ring);
        mem_free(empty);
        if (defer != NULL)
            epoch_writer_retire(defer);
        return AFSM_ENOMEM;
    }
    pthread_mutex_init(&ring->lock, NULL);
    ring->defer = defer;
    atomic_init(&ring->keys, empty);
    *out = ring;
    return AFSM_OK;
}

void keyring_close(keyring *ring)
{
    epoch_writer_retire(ring->defer);
    snapshot *snap = atomic_load_explicit(&ring->keys, memory_order_relaxed);
    sodium_memzero(snap->slots, snap->count * sizeof(key_slot));
    mem_free(snap);
    pthread_mutex_destroy(&ring->lock);
    mem_free(ring);
}

static int find_slot(const snapshot *snap, uint32_t key_id)
{
    for (uint32_t i = 0; i < snap->count; i++)
        if (snap->slots[i].id == key_id)
            return (int)i;
    return -1;
}

static void publish(keyring *ring, snapshot *old, snapshot *fresh)
{
    atomic_store_explicit(&ring->keys, fresh, memory_order_release);
    epoch_defer(ring->defer, &old->epoch_entry, snapshot_destroy);
    epoch_poll(ring->defer);
}

static void set_removed(keyring *ring, uint32_t key_id, int removed)
{
    uint64_t bit = UINT64_C(1) << (key_id % 64);
    if (removed)
        atomic_fetch_or_explicit(&ring->removed[key_id / 64], bit, memory_order_relaxed);
    else
        atomic_fetch_and_explicit(&ring->removed[key_id / 64], ~bit, memory_order_relaxed);
}

afsm_status keyring_add(keyring *ring, uint32_t key_id, const uint8_t key[AFSM_KEY_BYTES])
{
    afsm_status status = AFSM_OK;
    pthread_mutex_lock(&ring->lock);
    snapshot *old = atomic_load_explicit(&ring->keys, memory_order_relaxed);
    snapshot *fresh = NULL;
    if (find_slot(old, key_id) >= 0) {
        status = errdetail_set(AFSM_EKEYEXISTS, "key_id: %u is already in the key ring", key_id);
    } else if ((fresh = snapshot_alloc(old->count + 1)) == NULL) {
        status = AFSM_ENOMEM;
    } else {
        memcpy(fresh->slots, old->slots, old->count * sizeof(key_slot));
        fresh->slots[old->count].id = key_id;
        memcpy(fresh->slots[old->count].key, key, AFSM_KEY_BYTES);
        /* The first key seals until told otherwise. */
        fresh->current = old->current >= 0 ? old->current : 0;
        set_removed(ring, key_id, 0);
        publish(ring, old, fresh);
    }
    pthread_mutex_unlock(&ring->lock);
    return status;
}

afsm_status keyring_use(keyring *ring, uint32_t key_id)
{
    afsm_status status = AFSM_OK;
    pthread_mutex_lock(&ring->lock);
    snapshot *old = atomic_load_explicit(&ring->keys, memory_order_relaxed);
    int at = find_slot(old, key_id);
    snapshot *fresh = NULL;
    if (at < 0) {
        status = errdetail_set(AFSM_EKEYNOTFOUND, "key_id: %u is not in the key ring", key_id);
    } else if ((fresh = snapshot_alloc(old->count)) == NULL) {
        status = AFSM_ENOMEM;
    } else {
        memcpy(fresh->slots, old->slots, old->count * sizeof(key_slot));
        fresh->current = at;
        publish(ring, old, fresh);
    }
    pthread_mutex_unlock(&ring->lock);
    return status;
}

afsm_status keyring_remove(keyring *ring, uint32_t key_id)
{
    afsm_status status = AFSM_OK;
    pthread_mutex_lock(&ring->lock);
    snapshot *old = atomic_load_explicit(&ring->keys, memory_order_relaxed);
    int at = find_slot(old, key_id);
    snapshot *fresh = NULL;
    if (at < 0) {
        status = errdetail_set(AFSM_EKEYNOTFOUND, "key_id: %u is not in the key ring", key_id);
    } else if (at == old->current) {
        status = errdetail_set(AFSM_EKEYINUSE,
                               "key_id: %u is the current key; make another current first (afsm_key_use)", key_id);
    } else if ((fresh = snapshot_alloc(old->count - 1)) == NULL) {
        status = AFSM_ENOMEM;
    } else {
        uint32_t n = 0;
        for (uint32_t i = 0; i < old->count; i++) {
            if ((int)i == at)
                continue;
            if ((int)i == old->current)
                fresh->current = (int)n;
            fresh->slots[n++] = old->slots[i];
        }
        set_removed(ring, key_id, 1);
        publish(ring, old, fresh);
    }
    pthread_mutex_unlock(&ring->lock);
    return status;
}

afsm_status keyring_current(keyring *ring, uint16_t *key_id, const uint8_t **key)
{
    snapshot *snap = atomic_load_explicit(&ring->keys, memory_order_acquire);
    if (snap->current < 0)
        return AFSM_ENOTFOUND;
    *key_id = (uint16_t)snap->slots[snap->current].id;
    *key = snap->slots[snap->current].key;
    return AFSM_OK;
}

afsm_status keyring_find(keyring *ring, uint16_t key_id, const uint8_t **key)
{
    snapshot *snap = atomic_load_explicit(&ring->keys, memory_order_acquire);
    int at = find_slot(snap, key_id);
    if (at >= 0) {
        *key = snap->slots[at].key;
        return AFSM_OK;
    }
    uint64_t word = atomic_load_explicit(&ring->removed[key_id / 64], memory_order_relaxed);
    return (word >> (key_id % 64)) & 1 ? AFSM_EKEYREMOVED : AFSM_ETOKENKEY;
}

afsm_status keyring_read_file(const char *path, size_t path_len, uint8_t key[AFSM_KEY_BYTES])
{
    char name[PATH_MAX];
    if (path_len == 0)
        return errdetail_set(AFSM_EKEYFILE, "key file: empty path");
    if (path_len >= sizeof(name))
        return errdetail_set(AFSM_EKEYFILE, "key file: path of %zu bytes, must be shorter than %zu", path_len,
                             sizeof(name));
    if (memchr(path, '\0', path_len) != NULL)
        return errdetail_set(AFSM_EKEYFILE, "key file: path contains a NUL byte");
    memcpy(name, path, path_len);
    name[path_len] = '\0';
    /* O_NONBLOCK: a FIFO would otherwise wait in open() for a writer before
     * fstat could refuse it; reads of a regular file ignore the flag. */
    int fd = open(name, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        int err = errno;
        return errdetail_set(AFSM_EKEYFILE, "key file %.160s: %s", name,
                             err == ENOENT    ? "does not exist"
                             : err == EACCES  ? "permission denied"
                             : err == ENOTDIR ? "a path component is not a directory"
                                              : "cannot be opened");
    }
    struct stat st;
    afsm_status status = AFSM_OK;
    /* A key others can read is a key others have: refuse it outright. So
     * is one another user owns (ssh's rule for private keys): they may
     * read it, or chmod it open, whenever they like. */
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        status = errdetail_set(AFSM_EKEYFILE, "key file %.160s: not a regular file", name);
    else if (st.st_uid != 0 && st.st_uid != geteuid())
        status = errdetail_set(AFSM_EKEYFILE,
                               "key file %.160s: owned by uid %u, must be owned by root or uid %u (this process)", name,
                               (unsigned)st.st_uid, (unsigned)geteuid());
    else if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
        status = errdetail_set(AFSM_EKEYFILE,
                               "key file %.160s: mode %04o, must not be readable or writable by group or others "
                               "(chmod 600)",
                               name, (unsigned)(st.st_mode & 07777));
    else if (st.st_size != AFSM_KEY_BYTES)
        status = errdetail_set(AFSM_EKEYFILE, "key file %.160s: %lld bytes, must be exactly %d", name,
                               (long long)st.st_size, AFSM_KEY_BYTES);
    else if (read(fd, key, AFSM_KEY_BYTES) != AFSM_KEY_BYTES)
        status = errdetail_set(AFSM_EKEYFILE, "key file %.160s: short read, must hold %d bytes", name, AFSM_KEY_BYTES);
    close(fd);
    return status;
}
