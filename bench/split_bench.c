/*
 * split_bench: the floor of any reader of a recording. Reads FILE with
 * read(2) in blocks of 1 MiB and counts its newlines with memchr(), so
 * records per second here is how fast lines can be found at all.
 *
 * usage: split_bench FILE
 *
 * Prints one JSON line on stdout: lines, bytes, wall and CPU seconds and
 * lines per second of each. Exit status: 0 success, 1 read failure, 2 usage
 * error.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench_clock.h"

#define BLOCK_BYTES (1024 * 1024)

static uint64_t count_newlines(const char *block, size_t len)
{
    uint64_t lines = 0;
    const char *end = block + len;
    for (const char *p = block; p < end; p++) {
        p = memchr(p, '\n', (size_t)(end - p));
        if (p == NULL)
            break;
        lines++;
    }
    return lines;
}

int main(int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-') {
        fputs("usage: split_bench FILE\n", stderr);
        return 2;
    }
    const char *path = argv[1];
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        fprintf(stderr, "split_bench: failed to open %s: %s\n", path,
                strerror(errno));
        return 1;
    }
    char *block = malloc(BLOCK_BYTES);
    if (block == NULL) {
        fputs("split_bench: out of memory\n", stderr);
        close(fd);
        return 1;
    }

    double wall_start = clock_seconds(CLOCK_MONOTONIC);
    double cpu_start = clock_seconds(CLOCK_PROCESS_CPUTIME_ID);
    uint64_t lines = 0, bytes = 0;
    for (;;) {
        ssize_t n = read(fd, block, BLOCK_BYTES);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "split_bench: failed to read %s: %s\n", path,
                    strerror(errno));
            free(block);
            close(fd);
            return 1;
        }
        if (n == 0)
            break;
        bytes += (uint64_t)n;
        lines += count_newlines(block, (size_t)n);
    }
    double wall = clock_seconds(CLOCK_MONOTONIC) - wall_start;
    double cpu = clock_seconds(CLOCK_PROCESS_CPUTIME_ID) - cpu_start;
    free(block);
    close(fd);

    printf("{\"bench\":\"split\",\"lines\":%" PRIu64 ",\"bytes\":%" PRIu64
           ",\"wall_s\":%.4f,\"cpu_s\":%.4f,\"records_per_wall_s\":%.0f,"
           "\"records_per_cpu_s\":%.0f}\n",
           lines, bytes, wall, cpu, per_second(lines, wall),
           per_second(lines, cpu));
    return 0;
}
