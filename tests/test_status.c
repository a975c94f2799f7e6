/*
 * test_status.c: status names and descriptions, state names, version.
 *
 * The expected names come from stringifying the macros themselves, so a
 * code whose table entry is missing, misspelt or filed under the wrong
 * number fails here.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "afsm.h"

struct code {
    afsm_status status;
    const char *name;
};

/* Kept on one line: clang-format would split the braces of the macro. */
/* clang-format off */
#define CODE(c) {c, #c}
/* clang-format on */
static const struct code codes[] = {
    CODE(AFSM_OK),          CODE(AFSM_ENULL),        CODE(AFSM_EVERSION),     CODE(AFSM_EINVAL),
    CODE(AFSM_ETOOLONG),    CODE(AFSM_EUUID),        CODE(AFSM_EIP),          CODE(AFSM_ENOMEM),
    CODE(AFSM_ENOTFOUND),   CODE(AFSM_EEXPIRED),     CODE(AFSM_EEXISTS),      CODE(AFSM_ETRANSITION),
    CODE(AFSM_ECLOSED),     CODE(AFSM_ELIMIT),       CODE(AFSM_EBUFFER),      CODE(AFSM_EBUSY),
    CODE(AFSM_ETOKEN),      CODE(AFSM_ETOKENKEY),    CODE(AFSM_EREVOKED),     CODE(AFSM_EIPMISMATCH),
    CODE(AFSM_EKEYFILE),    CODE(AFSM_EUNAVAILABLE), CODE(AFSM_EINTERNAL),    CODE(AFSM_ETOKENFORMAT),
    CODE(AFSM_EKEYREMOVED), CODE(AFSM_EKEYEXISTS),   CODE(AFSM_EKEYNOTFOUND), CODE(AFSM_EKEYINUSE),
};
#define CODE_COUNT (sizeof codes / sizeof codes[0])

static void test_names_match_macros(void **state)
{
    (void)state;
    for (size_t i = 0; i < CODE_COUNT; i++)
        assert_string_equal(afsm_status_name(codes[i].status), codes[i].name);
}

static void test_codes_are_contiguous(void **state)
{
    (void)state;
    /* The list above covers 0 down to AFSM_EKEYINUSE without a gap, so a new
     * code appended to afsm.h shows up here as AFSM_UNKNOWN until named. */
    assert_int_equal(CODE_COUNT, 1 - AFSM_EKEYINUSE);
    for (size_t i = 0; i < CODE_COUNT; i++)
        assert_int_equal(codes[i].status, -(int)i);
}

static void test_descriptions(void **state)
{
    (void)state;
    for (size_t i = 0; i < CODE_COUNT; i++) {
        const char *description = afsm_strerror(codes[i].status);
        assert_non_null(description);
        assert_true(strlen(description) > 0);
        assert_string_not_equal(description, "unknown status");
        /* Short lowercase English, no trailing period. */
        assert_true(strlen(description) < 64);
        for (const char *p = description; *p; p++)
            assert_false(isupper((unsigned char)*p));
        assert_int_not_equal(description[strlen(description) - 1], '.');
    }
    assert_string_equal(afsm_strerror(AFSM_ENOTFOUND), "session not found");
}

static void test_all_distinct(void **state)
{
    (void)state;
    for (size_t i = 0; i < CODE_COUNT; i++) {
        for (size_t j = i + 1; j < CODE_COUNT; j++) {
            assert_string_not_equal(afsm_status_name(codes[i].status), afsm_status_name(codes[j].status));
            assert_string_not_equal(afsm_strerror(codes[i].status), afsm_strerror(codes[j].status));
        }
    }
}

static void test_unknown_codes(void **state)
{
    (void)state;
    const afsm_status unknown[] = {1, 2, 100, AFSM_EKEYINUSE - 1, -100, INT_MIN, INT_MIN + 1, INT_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        assert_string_equal(afsm_status_name(unknown[i]), "AFSM_UNKNOWN");
        assert_string_equal(afsm_strerror(unknown[i]), "unknown status");
    }
}

static void test_version(void **state)
{
    (void)state;
    assert_string_equal(afsm_version(), AFSM_VERSION);
    char built[32];
    snprintf(built, sizeof built, "%d.%d.%d", AFSM_VERSION_MAJOR, AFSM_VERSION_MINOR, AFSM_VERSION_PATCH);
    assert_string_equal(afsm_version(), built);
}

static void test_state_names(void **state)
{
    (void)state;
    assert_string_equal(afsm_state_name(AFSM_STATE_ANY), "any");
    assert_string_equal(afsm_state_name(AFSM_STATE_CONNECTING), "connecting");
    assert_string_equal(afsm_state_name(AFSM_STATE_ACTIVE), "active");
    assert_string_equal(afsm_state_name(AFSM_STATE_IDLE), "idle");
    assert_string_equal(afsm_state_name(AFSM_STATE_DISCONNECTING), "disconnecting");
    assert_string_equal(afsm_state_name(AFSM_STATE_CLOSED), "closed");
    const int unknown[] = {-1, AFSM_STATE_COUNT, 7, 100, INT_MIN, INT_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
        assert_string_equal(afsm_state_name(unknown[i]), "unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_match_macros), cmocka_unit_test(test_codes_are_contiguous),
        cmocka_unit_test(test_descriptions),       cmocka_unit_test(test_all_distinct),
        cmocka_unit_test(test_unknown_codes),      cmocka_unit_test(test_version),
        cmocka_unit_test(test_state_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
