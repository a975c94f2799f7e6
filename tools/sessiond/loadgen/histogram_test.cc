// histogram_test.cc: Histogram's percentiles against the exact ones of the
// same data (sorted copy): never below the true value, at most 1/128 above,
// over values from nanoseconds to minutes and an exact small range.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "histogram.h"

namespace
{

int check(const std::vector<uint64_t> &values, const char *what)
{
    loadgen::Histogram h;
    for (uint64_t v : values)
        h.record(v);
    std::vector<uint64_t> sorted = values;
    std::sort(sorted.begin(), sorted.end());
    int failures = 0;
    if (h.count() != values.size()) {
        std::printf("%s: count %llu, want %zu\n", what, static_cast<unsigned long long>(h.count()), values.size());
        ++failures;
    }
    if (h.max() != sorted.back()) {
        std::printf("%s: max %llu, want %llu\n", what, static_cast<unsigned long long>(h.max()),
                    static_cast<unsigned long long>(sorted.back()));
        ++failures;
    }
    for (double q : {0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0}) {
        size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
        uint64_t exact = sorted[rank == 0 ? 0 : rank - 1];
        uint64_t got = h.quantile(q);
        double limit = static_cast<double>(exact) * (1.0 + 1.0 / loadgen::Histogram::kSub) + 1;
        if (got < exact || static_cast<double>(got) > limit) {
            std::printf("%s: q%.3f = %llu, exact %llu\n", what, q, static_cast<unsigned long long>(got),
                        static_cast<unsigned long long>(exact));
            ++failures;
        }
    }
    return failures;
}

} // namespace

int main()
{
    std::mt19937_64 rng(42);
    std::vector<uint64_t> wide, small;
    std::lognormal_distribution<double> lat(std::log(300000.0), 1.5); // around 300 us, long tail
    for (int i = 0; i < 200000; ++i)
        wide.push_back(static_cast<uint64_t>(lat(rng)) + 1);
    wide.push_back(120ull * 1000 * 1000 * 1000); // two minutes
    for (uint64_t v = 0; v < 300; ++v)
        small.push_back(v);
    int failures = check(wide, "lognormal") + check(small, "0..299");
    // Bucket edges are continuous: every value maps to a bucket whose upper
    // edge is at least the value, and the previous bucket's edge below it.
    for (uint64_t v : {1ull, 127ull, 128ull, 255ull, 256ull, 257ull, 1000003ull, ~0ull >> 1, ~0ull}) {
        size_t i = loadgen::Histogram::index(v);
        if (i >= loadgen::Histogram::kBuckets || loadgen::Histogram::upper(i) < v ||
            (i > 0 && loadgen::Histogram::upper(i - 1) >= v)) {
            std::printf("bucket of %llu is wrong (index %zu)\n", static_cast<unsigned long long>(v), i);
            ++failures;
        }
    }
    if (failures == 0)
        std::printf("ok\n");
    return failures == 0 ? 0 : 1;
}
