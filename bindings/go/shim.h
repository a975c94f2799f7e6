/*
 * shim.h: small C helpers between the Go binding and libafsm.
 *
 * They exist for cgo's pointer rules: Go memory handed to C must not
 * contain Go pointers, so structs that hold pointers (afsm_kv arrays,
 * afsm_create_options, afsm_update, afsm_list_filter, afsm_config) are
 * assembled here, on the C stack, from flat Go buffers passed as plain
 * arguments. Nothing here keeps a pointer after it returns, and each helper
 * costs one boundary crossing.
 */
#ifndef AFSM_GO_SHIM_H
#define AFSM_GO_SHIM_H

#include <stddef.h>
#include <stdint.h>

#include "afsm.h"

#define AFSMGO_WANT_EVENT 0x1
#define AFSMGO_WANT_LOG   0x2
#define AFSMGO_WANT_CLOCK 0x4

/* Non-zero while this thread runs one of the hooks (OnEvent, Logger,
 * Clock): Close refuses to run there, since the call that fired the hook
 * holds the gate Close would wait for. */
int afsmgo_in_callback(void);

/* Opens an engine; cb (a runtime/cgo.Handle) becomes the hooks' ctx.
 * key (key_len bytes) and key_file (key_file_len bytes) may be NULL. */
afsm_status afsmgo_open(const afsm_config *cfg, const char *server_addr, size_t server_addr_len, const uint8_t *key,
                        size_t key_len, const char *key_file, size_t key_file_len, uintptr_t cb, int want,
                        afsm_engine **out);

/* buf holds user_id | client_ip | key0 | value0 | key1 | ...; lens holds
 * 2*nkv lengths (key0, value0, ...). */
/* After a successful create, issues a token (token_flags) into
 * tok[AFSM_TOKEN_SIZE]; if that fails, the session is deleted again and
 * the token's status returned, so a create is all or nothing. */
afsm_status afsmgo_create(afsm_engine *e, const char *buf, size_t user_len, size_t ip_len, const size_t *lens,
                          size_t nkv, uint32_t port, uint64_t conn_hi, uint64_t conn_lo, uint64_t timeout_ms,
                          uint32_t token_flags, afsm_session_info *out, char *tok, size_t *tok_len);

/* afsm_token_issue (rotate == 0) or afsm_token_rotate into tok[AFSM_TOKEN_SIZE]. */
afsm_status afsmgo_token(uintptr_t e, uint64_t id_hi, uint64_t id_lo, uint32_t flags, int rotate, char *tok,
                         size_t *tok_len);

/* afsm_token_validate of buf[0..tok_len) from buf[tok_len..tok_len+ip_len)
 * (no client IP when has_ip is 0), then the metadata as for afsmgo_get. */
afsm_status afsmgo_validate(uintptr_t e, const char *buf, size_t tok_len, size_t ip_len, int has_ip,
                            afsm_session_info *out, char *md, size_t md_cap, size_t *md_len, afsm_status *md_status);

/* afsm_session_restore; buf and lens hold the metadata as for afsmgo_update. */
afsm_status afsmgo_restore(afsm_engine *e, const afsm_session_info *info, const char *buf, const size_t *lens,
                           size_t nkv);

/* Get (by session id or, with by_connection, by connection id) and, when
 * the session has metadata and md_cap suffices, its metadata in the same
 * crossing. *md_status is AFSM_OK with *md_len bytes, or the status of the
 * metadata call (AFSM_EBUFFER: *md_len is the size needed). */
afsm_status afsmgo_get(uintptr_t e, uint64_t id_hi, uint64_t id_lo, int by_connection, afsm_session_info *out, char *md,
                       size_t md_cap, size_t *md_len, afsm_status *md_status);

/* Fetches the metadata of infos[0..n) whose metadata_count is non-zero into
 * md (consecutively); offs[i]/lens[i] locate item i, statuses[i] is its
 * status (AFSM_EBUFFER: lens[i] is the size needed and nothing was written). */
void afsmgo_metadata_many(afsm_engine *e, const afsm_session_info *infos, size_t n, char *md, size_t md_cap,
                          size_t *offs, size_t *lens, afsm_status *statuses);

/* Test-only: the next n metadata reads on e (afsmgo_get, afsmgo_validate,
 * afsmgo_update, afsmgo_metadata_many) first delete their session; n = 0
 * turns that off. Returns how many of the previous setting's deletes were
 * left (0: all happened). */
int afsmgo_test_delete_before_metadata(afsm_engine *e, int n);

/* buf holds the metadata as for afsmgo_create (no user id or ip). The
 * result's metadata is fetched as for afsmgo_get: after the update, or
 * before it when the update closes (and so removes) the session. */
afsm_status afsmgo_update(afsm_engine *e, uint64_t id_hi, uint64_t id_lo, uint32_t fields, uint32_t state,
                          const char *buf, const size_t *lens, size_t nkv, const afsm_stats *stats,
                          afsm_session_info *out, char *md, size_t md_cap, size_t *md_len, afsm_status *md_status);

/* Hot paths take ids as two big-endian halves and return results by value,
 * and engine or handle pointers as integers, so the Go side passes no
 * pointer (each pointer argument costs cgo's pointer check and an
 * escape: 8 bytes allocated per call, measured). The int64_t
 * results are the remaining milliseconds (>= 0) or a negative status. */
int64_t afsmgo_heartbeat(uintptr_t e, uint64_t id_hi, uint64_t id_lo);
afsm_status afsmgo_add_stats(uintptr_t e, uint64_t id_hi, uint64_t id_lo, uint64_t packets_sent,
                             uint64_t packets_received, uint64_t bytes_sent, uint64_t bytes_received,
                             uint64_t retransmissions, uint32_t rtt_ms);
int64_t afsmgo_handle_heartbeat(uintptr_t h);
afsm_status afsmgo_handle_add_stats(uintptr_t h, uint64_t packets_sent, uint64_t packets_received, uint64_t bytes_sent,
                                    uint64_t bytes_received, uint64_t retransmissions, uint32_t rtt_ms);
afsm_status afsmgo_delete(afsm_engine *e, uint64_t id_hi, uint64_t id_lo, const char *reason, size_t reason_len);
afsm_status afsmgo_pin(afsm_engine *e, uint64_t id_hi, uint64_t id_lo, int by_connection, afsm_handle **out);

afsm_status afsmgo_list(afsm_engine *e, uint32_t state, const char *user_id, size_t user_id_len, int has_user,
                        int64_t created_after_ns, int64_t created_before_ns, const afsm_uuid *cursor, uint64_t offset,
                        uint32_t limit, afsm_session_info *out, size_t *count, uint64_t *total, afsm_uuid *next_cursor);

/* Sets version in n session infos. */
void afsmgo_info_init_many(afsm_session_info *infos, size_t n);

#endif
