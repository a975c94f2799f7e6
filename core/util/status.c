/*
 * status.c: names and descriptions of the AFSM_E* status codes, state names
 * and the library version.
 *
 * Invariant: every code from AFSM_OK down to AFSM_EKEYINUSE has one entry,
 * indexed by -status; the table is const, so every function here is
 * thread-safe and returns static strings that are never NULL. A code added
 * to afsm.h needs its entry here (test_status checks each name's spelling).
 */
#include <stddef.h>

#include "afsm.h"

struct status_text {
    const char *name;
    const char *description;
};

static const struct status_text status_texts[] = {
    [-AFSM_OK] = {"AFSM_OK", "success"},
    [-AFSM_ENULL] = {"AFSM_ENULL", "a required pointer argument was null"},
    [-AFSM_EVERSION] = {"AFSM_EVERSION", "unknown struct version"},
    [-AFSM_EINVAL] = {"AFSM_EINVAL", "invalid argument"},
    [-AFSM_ETOOLONG] = {"AFSM_ETOOLONG", "string or metadata too long"},
    [-AFSM_EUUID] = {"AFSM_EUUID", "malformed or nil uuid"},
    [-AFSM_EIP] = {"AFSM_EIP", "malformed ip address"},
    [-AFSM_ENOMEM] = {"AFSM_ENOMEM", "out of memory"},
    [-AFSM_ENOTFOUND] = {"AFSM_ENOTFOUND", "session not found"},
    [-AFSM_EEXPIRED] = {"AFSM_EEXPIRED", "session expired"},
    [-AFSM_EEXISTS] = {"AFSM_EEXISTS", "connection already has a session"},
    [-AFSM_ETRANSITION] = {"AFSM_ETRANSITION", "state change not allowed"},
    [-AFSM_ECLOSED] = {"AFSM_ECLOSED", "session is closed"},
    [-AFSM_ELIMIT] = {"AFSM_ELIMIT", "user session limit reached"},
    [-AFSM_EBUFFER] = {"AFSM_EBUFFER", "buffer too small"},
    [-AFSM_EBUSY] = {"AFSM_EBUSY", "engine has pinned handles"},
    [-AFSM_ETOKEN] = {"AFSM_ETOKEN", "token failed authentication (forged or altered)"},
    [-AFSM_ETOKENKEY] = {"AFSM_ETOKENKEY", "token sealed by an unknown key"},
    [-AFSM_EREVOKED] = {"AFSM_EREVOKED", "token revoked"},
    [-AFSM_EIPMISMATCH] = {"AFSM_EIPMISMATCH", "token bound to another ip address"},
    [-AFSM_EKEYFILE] = {"AFSM_EKEYFILE", "bad key file"},
    [-AFSM_EUNAVAILABLE] = {"AFSM_EUNAVAILABLE", "store unavailable"},
    [-AFSM_EINTERNAL] = {"AFSM_EINTERNAL", "internal error"},
    [-AFSM_ETOKENFORMAT] = {"AFSM_ETOKENFORMAT", "malformed or truncated token"},
    [-AFSM_EKEYREMOVED] = {"AFSM_EKEYREMOVED", "token sealed by a removed key"},
    [-AFSM_EKEYEXISTS] = {"AFSM_EKEYEXISTS", "key id already in the key ring"},
    [-AFSM_EKEYNOTFOUND] = {"AFSM_EKEYNOTFOUND", "key id not in the key ring"},
    [-AFSM_EKEYINUSE] = {"AFSM_EKEYINUSE", "key is the current key; make another current first"},
};

#define STATUS_COUNT (sizeof status_texts / sizeof status_texts[0])

static const struct status_text *status_lookup(afsm_status status)
{
    /* Compare as a wider signed value: -INT_MIN would overflow. */
    long long index = -(long long)status;
    if (index < 0 || index >= (long long)STATUS_COUNT || status_texts[index].name == NULL)
        return NULL;
    return &status_texts[index];
}

AFSM_API const char *afsm_strerror(afsm_status status)
{
    const struct status_text *text = status_lookup(status);
    return text != NULL ? text->description : "unknown status";
}

AFSM_API const char *afsm_status_name(afsm_status status)
{
    const struct status_text *text = status_lookup(status);
    return text != NULL ? text->name : "AFSM_UNKNOWN";
}

AFSM_API const char *afsm_version(void)
{
    return AFSM_VERSION;
}

AFSM_API const char *afsm_state_name(int state)
{
    static const char *const names[AFSM_STATE_COUNT] = {
        [AFSM_STATE_ANY] = "any",   [AFSM_STATE_CONNECTING] = "connecting",       [AFSM_STATE_ACTIVE] = "active",
        [AFSM_STATE_IDLE] = "idle", [AFSM_STATE_DISCONNECTING] = "disconnecting", [AFSM_STATE_CLOSED] = "closed",
    };
    if (state < 0 || state >= AFSM_STATE_COUNT)
        return "unknown";
    return names[state];
}
