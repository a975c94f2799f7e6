/*
 * keyring.h: an engine's token keys.
 *
 * The keys are an immutable snapshot swapped whole by writers (add, use,
 * remove: rare, serialised on a mutex) and read lock-free by token
 * validation inside an epoch section; a replaced snapshot is wiped and
 * freed through the epoch. Removed key ids are remembered, so a token under
 * a removed key is told apart from one under a key never seen.
 */
#ifndef AFSM_KEYRING_H
#define AFSM_KEYRING_H

#include <stdint.h>

#include "afsm.h"

typedef struct keyring keyring;

afsm_status keyring_open(keyring **out);
void keyring_close(keyring *ring);

/* AFSM_EKEYEXISTS, AFSM_EKEYNOTFOUND, AFSM_EKEYINUSE (remove: the current
 * key) and AFSM_ENOMEM, each with its afsm_error_detail text. */
afsm_status keyring_add(keyring *ring, uint32_t key_id, const uint8_t key[AFSM_KEY_BYTES]);
afsm_status keyring_use(keyring *ring, uint32_t key_id);
afsm_status keyring_remove(keyring *ring, uint32_t key_id);

/* Inside an epoch section; the pointers stay valid until it ends. */
/* The sealing key. AFSM_ENOTFOUND if the ring is empty. */
afsm_status keyring_current(keyring *ring, uint16_t *key_id, const uint8_t **key);
/* AFSM_OK, AFSM_ETOKENKEY (never known) or AFSM_EKEYREMOVED. */
afsm_status keyring_find(keyring *ring, uint16_t key_id, const uint8_t **key);

/* Reads a key file: exactly AFSM_KEY_BYTES bytes, a regular file that
 * neither group nor others may read or write. AFSM_EKEYFILE otherwise, with
 * a detail that tells missing, too open and wrong size apart. */
afsm_status keyring_read_file(const char *path, size_t path_len, uint8_t key[AFSM_KEY_BYTES]);

#endif
