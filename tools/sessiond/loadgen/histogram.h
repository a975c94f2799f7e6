// histogram.h: a log-linear latency histogram (the HdrHistogram layout,
// written for loadgen).
//
// Values (nanoseconds) below 2^kSubBits have a bucket each; above, every
// power of two is split into 2^kSubBits equal buckets, so a value is known
// to within 1/2^kSubBits (0.8 %) of itself, from 1 ns to 2^64 ns, in a fixed
// 7,424 counters (58 KiB). Percentiles report the upper edge of the bucket
// that holds them: never below the true value, at most 0.8 % above.
//
// Threads: record() may run on many threads at once (relaxed atomic adds:
// each count is exact, and only the totals read after every recorder has
// stopped are used); merge and the queries run after recording ends.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace loadgen
{

class Histogram
{
  public:
    static constexpr int kSubBits = 7;
    static constexpr uint64_t kSub = uint64_t{1} << kSubBits;
    static constexpr size_t kBuckets = (65 - kSubBits) * kSub;

    Histogram() : counts_(kBuckets)
    {
    }

    static size_t index(uint64_t v)
    {
        if (v < kSub)
            return static_cast<size_t>(v);
        int msb = 63 - __builtin_clzll(v);
        int shift = msb - kSubBits;     // >= 0
        uint64_t mantissa = v >> shift; // in [kSub, 2 kSub)
        return static_cast<size_t>(shift) * kSub + mantissa;
    }
    // The largest value that falls in bucket i.
    static uint64_t upper(size_t i)
    {
        if (i < 2 * kSub)
            return i;
        uint64_t shift = i / kSub - 1;
        uint64_t mantissa = i % kSub + kSub;
        return ((mantissa + 1) << shift) - 1;
    }

    void record(uint64_t v)
    {
        counts_[index(v)].fetch_add(1, std::memory_order_relaxed);
        sum_.fetch_add(v, std::memory_order_relaxed);
        uint64_t m = max_.load(std::memory_order_relaxed);
        while (v > m && !max_.compare_exchange_weak(m, v, std::memory_order_relaxed))
            ;
    }

    uint64_t count() const
    {
        uint64_t n = 0;
        for (const auto &c : counts_)
            n += c.load(std::memory_order_relaxed);
        return n;
    }
    uint64_t max() const
    {
        return max_.load(std::memory_order_relaxed);
    }
    double mean() const
    {
        uint64_t n = count();
        return n == 0 ? 0.0 : static_cast<double>(sum_.load(std::memory_order_relaxed)) / static_cast<double>(n);
    }
    // The value at quantile q (0..1): the smallest bucket edge with at least
    // ceil(q * count) values at or below it.
    uint64_t quantile(double q) const
    {
        uint64_t n = count();
        if (n == 0)
            return 0;
        uint64_t rank = static_cast<uint64_t>(q * static_cast<double>(n) + 0.999999);
        if (rank == 0)
            rank = 1;
        uint64_t seen = 0;
        for (size_t i = 0; i < kBuckets; ++i) {
            seen += counts_[i].load(std::memory_order_relaxed);
            if (seen >= rank) {
                uint64_t u = upper(i);
                return u < max() ? u : max();
            }
        }
        return max();
    }
    // Non-empty buckets as (upper edge, count), for plots.
    std::vector<std::pair<uint64_t, uint64_t>> buckets() const
    {
        std::vector<std::pair<uint64_t, uint64_t>> out;
        for (size_t i = 0; i < kBuckets; ++i) {
            uint64_t c = counts_[i].load(std::memory_order_relaxed);
            if (c != 0)
                out.emplace_back(upper(i), c);
        }
        return out;
    }

  private:
    std::vector<std::atomic<uint64_t>> counts_;
    std::atomic<uint64_t> sum_{0};
    std::atomic<uint64_t> max_{0};
};

} // namespace loadgen
