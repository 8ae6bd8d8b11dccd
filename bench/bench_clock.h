/* Clocks and rates shared by the benchmark programs of this folder. */
#ifndef PODIUM_BENCH_CLOCK_H
#define PODIUM_BENCH_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Read clock (CLOCK_MONOTONIC or CLOCK_PROCESS_CPUTIME_ID) in seconds. */
static inline double clock_seconds(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Count per second, or 0 when the time was too short to measure. */
static inline double per_second(uint64_t count, double seconds)
{
    return seconds > 0 ? (double)count / seconds : 0;
}

#endif
