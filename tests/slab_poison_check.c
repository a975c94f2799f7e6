/*
 * slab_poison_check.c: run by the slab_poison_clang test (tests/
 * CMakeLists.txt), which builds it and the slab with clang under
 * AddressSanitizer, as the fuzz build compiles the engine: a freed slab
 * slot must be poisoned there too (mem/slab.h), else a use after free of a
 * session record goes unreported in the fuzzers. clang-14 defines no
 * __SANITIZE_ADDRESS__; it says so only through __has_feature.
 * Exits 0 when the freed slot is poisoned and a live one is not.
 */
#include <sanitizer/asan_interface.h>
#include <stdio.h>

#include "mem/slab.h"

int main(void)
{
    slab sl;
    slab_init(&sl);
    char *live = slab_alloc(&sl);
    char *freed = slab_alloc(&sl);
    if (live == NULL || freed == NULL) {
        fprintf(stderr, "slab_alloc failed\n");
        return 1;
    }
    slab_free(&sl, freed);
    int ok = __asan_address_is_poisoned(freed + 64) && !__asan_address_is_poisoned(live + 64);
    if (!ok)
        fprintf(stderr,
                "a freed slab slot is %spoisoned, a live one %spoisoned: free slots are not poisoned in a "
                "clang AddressSanitizer build\n",
                __asan_address_is_poisoned(freed + 64) ? "" : "not ",
                __asan_address_is_poisoned(live + 64) ? "" : "not ");
    slab_free(&sl, live);
    slab_destroy(&sl);
    return ok ? 0 : 1;
}
