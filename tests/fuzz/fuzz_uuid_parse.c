/*
 * fuzz_uuid_parse.c: libFuzzer target for afsm_uuid_parse / afsm_uuid_format.
 *
 * Properties checked on every input (a failure traps, so libFuzzer keeps it):
 * - the parser reads only text[0..size): it gets a heap copy of exactly size
 *   bytes with no NUL after it, so ASan flags any read beyond;
 * - it accepts exactly the canonical 8-4-4-4-12 hex form (checked against an
 *   independent spelling of the grammar) and leaves the output untouched on
 *   failure;
 * - an accepted text formats to its own lowercase spelling, and that parses
 *   back to the same bytes;
 * - any 16 bytes format to a canonical text that parses back to them.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "afsm.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond))                                                                                                   \
            __builtin_trap();                                                                                          \
    } while (0)

static int grammar_accepts(const uint8_t *data, size_t size)
{
    if (size != 36)
        return 0;
    for (size_t i = 0; i < size; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? data[i] != '-' : !isxdigit(data[i]))
            return 0;
    }
    return 1;
}

static void check_canonical(const char text[AFSM_UUID_STRING_SIZE])
{
    CHECK(strlen(text) == 36);
    for (size_t i = 0; i < 36; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash)
            CHECK(text[i] == '-');
        else
            CHECK(strchr("0123456789abcdef", text[i]) != NULL && text[i] != '\0');
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size ? size : 1);
    if (copy == NULL)
        return 0;
    memcpy(copy, data, size);

    afsm_uuid uuid;
    memset(&uuid, 0xa5, sizeof uuid);
    afsm_status status = afsm_uuid_parse(copy, size, &uuid);
    CHECK(status == AFSM_OK || status == AFSM_EUUID);
    CHECK((status == AFSM_OK) == grammar_accepts(data, size));

    if (status == AFSM_OK) {
        char text[AFSM_UUID_STRING_SIZE];
        CHECK(afsm_uuid_format(&uuid, text) == AFSM_OK);
        check_canonical(text);
        for (size_t i = 0; i < 36; i++)
            CHECK(text[i] == tolower(data[i]));
        afsm_uuid again;
        CHECK(afsm_uuid_parse(text, 36, &again) == AFSM_OK);
        CHECK(memcmp(uuid.bytes, again.bytes, 16) == 0);
    } else {
        for (size_t i = 0; i < sizeof uuid.bytes; i++)
            CHECK(uuid.bytes[i] == 0xa5);
    }
    free(copy);

    /* Binary -> text -> binary for whatever 16 bytes the input starts with. */
    if (size >= 16) {
        afsm_uuid in, back;
        char text[AFSM_UUID_STRING_SIZE];
        memcpy(in.bytes, data, 16);
        CHECK(afsm_uuid_format(&in, text) == AFSM_OK);
        check_canonical(text);
        CHECK(afsm_uuid_parse(text, 36, &back) == AFSM_OK);
        CHECK(memcmp(in.bytes, back.bytes, 16) == 0);
    }
    return 0;
}
