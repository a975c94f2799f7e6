/* table_grow.h: a C fixture for table_grow_bench.cc (the engine's table
 * header is C11 atomics, which C++ cannot include). */
#ifndef AFSM_BENCH_TABLE_GROW_H
#define AFSM_BENCH_TABLE_GROW_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct table_grow table_grow;

/* Records for `keys` keys (256 bytes each, never read by the fixture
 * after this), in a random insertion order. NULL when out of memory, or
 * for 0 keys or more than memory can address. */
table_grow *table_grow_new(size_t keys);
/* A fresh table holding the first `count` keys of the order. */
bool table_grow_fill(table_grow *g, size_t count);
/* Inserts the index-th key of the order into the filled table; false if
 * there is none, index is past the keys, or the insert fails. */
bool table_grow_insert(table_grow *g, size_t index);
void table_grow_free(table_grow *g);

#ifdef __cplusplus
}
#endif

#endif
