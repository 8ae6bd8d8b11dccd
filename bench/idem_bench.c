/*
 * idem_bench: cost per record of the idempotency table against its size.
 *
 * Prefills a fresh database with N completed rows keyed by random UUID v4
 * text and reopens it, timing the in-memory index rebuild. Then it measures
 * M new records (claim + complete, committed every B records), M/10
 * duplicate claims of live keys, and the expiry of as many old rows as
 * were added. The table therefore keeps its size while it is measured.
 *
 * Prints one JSON line on stdout and a summary on stderr. Exit status: 0
 * success, 1 runtime failure, 2 usage error.
 *
 * Arrival times: prefilled row i arrives at T0 + i * W / N ms, where W is
 * the expiry window (--expiry-s) in ms, and measured record j arrives at
 * T0 + (N + j) * W / N ms. The rows therefore cover exactly one window at
 * the start of the measurement, and each measured batch expires about as
 * many prefilled rows as it adds.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "store/idempotency.h"

/* 2023-11-14T22:13:20Z, so the expiry seconds look like real ones. */
#define ARRIVAL_T0_MS        INT64_C(1700000000000)
#define PREFILL_TXN_ROWS     100000
#define PROGRESS_INTERVAL_NS INT64_C(5000000000)
#define EXPIRE_CALLS_MAX     64
#define UUID_TEXT_LEN        36
#define MAX_COUNT            UINT64_C(1000000000)
#define MAX_EXPIRY_S         INT64_C(10000000)
#define SHARD_ID             "shardId-000000000000"
#define OUTCOME              "applied"

struct bench_options {
    const char *db_path;
    uint64_t prefill;
    uint64_t measure;
    uint64_t batch;
    uint64_t cache;
    int64_t expiry_s;
    uint64_t seed;
    bool deferred; /* claim new records with idem_claim_deferred() */
};

/* Counters of /proc/self/io that the measurement reports. */
struct io_counters {
    uint64_t wchar;       /* bytes passed to write() and friends */
    uint64_t write_bytes; /* bytes the kernel accounts to the storage layer */
};

struct bench_results {
    uint64_t rows_before;
    uint64_t rows_after;
    double prefill_s;
    double rebuild_s;
    struct idem_stats stats_after_rebuild;
    struct idem_stats stats_after_measure;
    uint64_t new_ns;       /* begin + claims + completes + commit */
    uint64_t new_cpu_ns;   /* user + system CPU of the same spans */
    uint64_t batch_count;  /* batches of new records */
    uint64_t batch_p50_ns; /* per record, over the batches */
    uint64_t batch_p99_ns; /* per record, over the batches */
    uint64_t batch_max_ns; /* per record, over the batches */
    struct io_counters io_new;
    uint64_t expired_rows;
    uint64_t expire_ns; /* begin + expire steps + commit */
    struct io_counters io_expire;
    uint64_t dup_count;
    uint64_t dup_ns; /* begin + claims + commit */
    struct io_counters io_dup;
    uint64_t db_bytes;
    uint64_t wal_bytes;
    unsigned page_size;
    uint32_t sqlite_version_number; /* from the database header */
    long peak_rss_kb;
};

/* ---- clocks and counters ------------------------------------------- */

static int64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Read wchar and write_bytes of this process. Returns 0, or -1 when
 * /proc/self/io is unreadable (a kernel without task I/O accounting). */
static int read_io_counters(struct io_counters *out)
{
    FILE *f = fopen("/proc/self/io", "r");
    char name[64];
    unsigned long long value;
    int found = 0;

    if (f == NULL)
        return -1;
    memset(out, 0, sizeof *out);
    while (found < 2 && fscanf(f, "%63[^:]: %llu\n", name, &value) == 2) {
        if (strcmp(name, "wchar") == 0) {
            out->wchar = value;
            found++;
        } else if (strcmp(name, "write_bytes") == 0) {
            out->write_bytes = value;
            found++;
        }
    }
    fclose(f);
    return found == 2 ? 0 : -1;
}

static void io_counters_add_delta(struct io_counters *sum,
                                  const struct io_counters *before,
                                  const struct io_counters *after)
{
    sum->wchar += after->wchar - before->wchar;
    sum->write_bytes += after->write_bytes - before->write_bytes;
}

/* Read the counters or exit, because a measurement without the bytes
 * written is incomplete. */
static void read_io_counters_or_exit(struct io_counters *out)
{
    if (read_io_counters(out) != 0) {
        fprintf(stderr, "idem_bench: failed to read wchar and write_bytes "
                        "from /proc/self/io\n");
        exit(1);
    }
}

/* ---- deterministic keys and payloads ------------------------------- */

#define GOLDEN_GAMMA UINT64_C(0x9e3779b97f4a7c15)

/* splitmix64: advances *state and returns the next output. */
static uint64_t splitmix64_next(uint64_t *state)
{
    uint64_t z = (*state += GOLDEN_GAMMA);
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/*
 * Write the UUID v4 text of record index (36 characters and a NUL). The
 * 128 bits come from splitmix64 started at a point that depends on seed and
 * index alone, so any record's key can be rebuilt without storing it.
 */
static void make_key(uint64_t seed, uint64_t index, char out[37])
{
    uint64_t state = seed + index * 4 * GOLDEN_GAMMA;
    uint64_t hi = splitmix64_next(&state);
    uint64_t lo = splitmix64_next(&state);

    hi = (hi & ~UINT64_C(0xf000)) | UINT64_C(0x4000);       /* version 4 */
    lo = (lo & ~(UINT64_C(3) << 62)) | (UINT64_C(2) << 62); /* RFC 4122 */
    snprintf(out, 37,
             "%08" PRIx64 "-%04" PRIx64 "-%04" PRIx64 "-%04" PRIx64
             "-%012" PRIx64,
             hi >> 32, (hi >> 16) & 0xffff, hi & 0xffff, lo >> 48,
             lo & UINT64_C(0xffffffffffff));
}

/* Write a payload hash for record index: SHA-256-sized, deterministic. */
static void make_hash(uint64_t seed, uint64_t index, uint8_t out[IDEM_HASH_LEN])
{
    uint64_t state = seed + index * 4 * GOLDEN_GAMMA + 2 * GOLDEN_GAMMA;

    for (size_t i = 0; i < IDEM_HASH_LEN; i += 8) {
        uint64_t word = splitmix64_next(&state);
        memcpy(out + i, &word, 8);
    }
}

/* Arrival time of record index, in ms (see the file comment). */
static int64_t arrival_ms(const struct bench_options *o, uint64_t index)
{
    uint64_t window_ms = (uint64_t)o->expiry_s * 1000;
    return ARRIVAL_T0_MS + (int64_t)(index * window_ms / o->prefill);
}

/* A claim for record index with the fields podium fills from Kinesis. The
 * caller's key, hash and seq buffers must outlive the claim. */
struct record_buffers {
    char key[UUID_TEXT_LEN + 1];
    uint8_t hash[IDEM_HASH_LEN];
    char seq[64];
};

static void make_claim(const struct bench_options *o, uint64_t index,
                       int64_t now_ms, struct record_buffers *buf,
                       struct idem_claim *c)
{
    make_key(o->seed, index, buf->key);
    make_hash(o->seed, index, buf->hash);
    /* Kinesis sequence numbers are 56 decimal digits. */
    snprintf(buf->seq, sizeof buf->seq, "49%054" PRIu64, index);
    c->key = buf->key;
    c->key_len = UUID_TEXT_LEN;
    c->hash = buf->hash;
    c->now_ms = now_ms;
    c->shard_id = SHARD_ID;
    c->seq = buf->seq;
    c->subseq = 0;
}

/* ---- library calls that exit on failure ---------------------------- */

static void fail(struct idem_table *t, const char *operation)
{
    fprintf(stderr, "idem_bench: %s failed: %s\n", operation, idem_errmsg(t));
    exit(1);
}

static void begin_or_exit(struct idem_table *t)
{
    if (idem_begin(t) != 0)
        fail(t, "BEGIN IMMEDIATE");
}

static void commit_or_exit(struct idem_table *t)
{
    if (idem_commit(t) != 0)
        fail(t, "COMMIT");
}

/* A record whose key, hash and claim are built before the timer starts,
 * so the times exclude the formatting of keys. claim points into buf. */
struct prepared_record {
    uint64_t index;
    struct record_buffers buf;
    struct idem_claim claim;
};

static void prepare_record(const struct bench_options *o, uint64_t index,
                           int64_t now_ms, struct prepared_record *p)
{
    p->index = index;
    make_claim(o, index, now_ms, &p->buf, &p->claim);
}

static struct prepared_record *alloc_records(uint64_t count)
{
    struct prepared_record *records = calloc(count, sizeof *records);

    if (records == NULL) {
        fprintf(stderr,
                "idem_bench: out of memory for %" PRIu64 " prepared records\n",
                count);
        exit(1);
    }
    return records;
}

/* Claim and complete a prepared record, which must be new. */
static void add_record(struct idem_table *t, const struct bench_options *o,
                       const struct prepared_record *p)
{
    enum idem_result result;
    int rc = o->deferred ? idem_claim_deferred(t, &p->claim, &result, NULL)
                         : idem_claim(t, &p->claim, &result, NULL);

    if (rc != 0)
        fail(t, o->deferred ? "idem_claim_deferred" : "idem_claim");
    if (result != IDEM_NEW) {
        fprintf(stderr,
                "idem_bench: claim of new key %s (record %" PRIu64
                ") returned %s, expected NEW\n",
                p->buf.key, p->index, idem_result_name(result));
        exit(1);
    }
    if (idem_complete(t, p->buf.key, UUID_TEXT_LEN, OUTCOME, p->claim.now_ms) !=
        0)
        fail(t, "idem_complete");
}

/* Claim a prepared record, which must be a completed row with its own
 * hash. */
static void claim_duplicate(struct idem_table *t,
                            const struct prepared_record *p)
{
    enum idem_result result;

    if (idem_claim(t, &p->claim, &result, NULL) != 0)
        fail(t, "idem_claim");
    if (result != IDEM_DUPLICATE) {
        fprintf(stderr,
                "idem_bench: claim of stored key %s (record %" PRIu64
                ") returned %s, expected DUPLICATE\n",
                p->buf.key, p->index, idem_result_name(result));
        exit(1);
    }
}

static struct idem_table *open_table_or_exit(const struct bench_options *o)
{
    struct idem_options opts = {
        .expiry_s = o->expiry_s,
        .in_progress_timeout_ms = 0,
        .cache_size = (size_t)o->cache,
    };
    uint8_t owner[IDEM_OWNER_LEN];
    uint64_t state = o->seed ^ UINT64_C(0x6f776e6572); /* "owner" */
    struct idem_table *t = NULL;
    char err[512];

    for (size_t i = 0; i < IDEM_OWNER_LEN; i += 8) {
        uint64_t word = splitmix64_next(&state);
        memcpy(owner + i, &word, 8);
    }
    if (idem_open_path(o->db_path, &opts, owner, &t, err, sizeof err) != 0) {
        fprintf(stderr, "idem_bench: failed to open %s: %s\n", o->db_path, err);
        exit(1);
    }
    return t;
}

/* ---- phases -------------------------------------------------------- */

/* Add records [0, N) in transactions of PREFILL_TXN_ROWS rows. */
static void prefill(struct idem_table *t, const struct bench_options *o)
{
    int64_t start = monotonic_ns();
    int64_t last_progress = start;
    uint64_t index = 0;

    while (index < o->prefill) {
        uint64_t end = index + PREFILL_TXN_ROWS;
        if (end > o->prefill)
            end = o->prefill;
        begin_or_exit(t);
        for (; index < end; index++) {
            struct prepared_record record;
            prepare_record(o, index, arrival_ms(o, index), &record);
            add_record(t, o, &record);
        }
        commit_or_exit(t);

        int64_t now = monotonic_ns();
        if (now - last_progress >= PROGRESS_INTERVAL_NS ||
            index == o->prefill) {
            double elapsed = (double)(now - start) / 1e9;
            fprintf(stderr,
                    "prefill: %" PRIu64 "/%" PRIu64
                    " rows, %.0f s, %.0f rows/s\n",
                    index, o->prefill, elapsed, (double)index / elapsed);
            last_progress = now;
        }
    }
}

/* Delete the rows expired at now_ms in one transaction, in steps of at
 * most batch rows. Returns the number deleted. */
static uint64_t expire_rows(struct idem_table *t, const struct bench_options *o,
                            int64_t now_ms)
{
    uint64_t total = 0;

    begin_or_exit(t);
    for (int call = 0; call < EXPIRE_CALLS_MAX; call++) {
        size_t deleted = 0;
        if (idem_expire_step(t, now_ms, (size_t)o->batch, &deleted) != 0)
            fail(t, "idem_expire_step");
        total += deleted;
        if (deleted < o->batch)
            break;
    }
    commit_or_exit(t);
    return total;
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a;
    uint64_t y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Store the median, 99th percentile and maximum of per-record batch
 * times. Sorts batch_ns. */
static void summarize_batches(uint64_t *batch_ns, uint64_t count,
                              struct bench_results *r)
{
    qsort(batch_ns, count, sizeof *batch_ns, compare_u64);
    /* Nearest rank: the smallest time at or above p percent of batches. */
    r->batch_p50_ns = batch_ns[(count * 50 + 99) / 100 - 1];
    r->batch_p99_ns = batch_ns[(count * 99 + 99) / 100 - 1];
    r->batch_max_ns = batch_ns[count - 1];
}

/*
 * Add the count prepared records in one transaction, then delete the rows
 * that expired by the last arrival in a transaction of its own, so the two
 * costs are timed apart. Returns the time of the first transaction in ns.
 */
static uint64_t measure_batch(struct idem_table *t,
                              const struct bench_options *o,
                              const struct prepared_record *records,
                              uint64_t count, struct bench_results *r)
{
    struct io_counters io0, io1, io2;

    read_io_counters_or_exit(&io0);
    int64_t cpu0 = cpu_ns();
    int64_t t0 = monotonic_ns();
    begin_or_exit(t);
    for (uint64_t i = 0; i < count; i++)
        add_record(t, o, &records[i]);
    commit_or_exit(t);
    int64_t t1 = monotonic_ns();
    int64_t cpu1 = cpu_ns();
    read_io_counters_or_exit(&io1);

    int64_t t2 = monotonic_ns();
    r->expired_rows += expire_rows(t, o, records[count - 1].claim.now_ms);
    int64_t t3 = monotonic_ns();
    read_io_counters_or_exit(&io2);

    r->new_ns += (uint64_t)(t1 - t0);
    r->new_cpu_ns += (uint64_t)(cpu1 - cpu0);
    r->expire_ns += (uint64_t)(t3 - t2);
    io_counters_add_delta(&r->io_new, &io0, &io1);
    io_counters_add_delta(&r->io_expire, &io1, &io2);
    return (uint64_t)(t1 - t0);
}

/* Add records [N, N + M) in batches of B and expire as many old rows. */
static void measure_new(struct idem_table *t, const struct bench_options *o,
                        struct bench_results *r)
{
    uint64_t batches = (o->measure + o->batch - 1) / o->batch;
    uint64_t *batch_ns = calloc(batches, sizeof *batch_ns);
    struct prepared_record *records = alloc_records(o->batch);
    int64_t last_progress = monotonic_ns();
    uint64_t done = 0;

    if (batch_ns == NULL) {
        fprintf(stderr,
                "idem_bench: out of memory for %" PRIu64 " batch times\n",
                batches);
        exit(1);
    }
    for (uint64_t b = 0; b < batches; b++) {
        uint64_t count =
            o->measure - done < o->batch ? o->measure - done : o->batch;
        for (uint64_t i = 0; i < count; i++) {
            uint64_t index = o->prefill + done + i;
            prepare_record(o, index, arrival_ms(o, index), &records[i]);
        }
        batch_ns[b] = measure_batch(t, o, records, count, r) / count;
        done += count;

        int64_t now = monotonic_ns();
        if (now - last_progress >= PROGRESS_INTERVAL_NS || b + 1 == batches) {
            fprintf(stderr, "measure: %" PRIu64 "/%" PRIu64 " records\n", done,
                    o->measure);
            last_progress = now;
        }
    }
    r->batch_count = batches;
    summarize_batches(batch_ns, batches, r);
    free(records);
    free(batch_ns);
}

/* xoshiro256**, for the choice of duplicate keys. */
struct xoshiro256 {
    uint64_t s[4];
};

static uint64_t rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro256_next(struct xoshiro256 *g)
{
    uint64_t result = rotl64(g->s[1] * 5, 7) * 9;
    uint64_t t = g->s[1] << 17;

    g->s[2] ^= g->s[0];
    g->s[3] ^= g->s[1];
    g->s[1] ^= g->s[2];
    g->s[0] ^= g->s[3];
    g->s[2] ^= t;
    g->s[3] = rotl64(g->s[3], 45);
    return result;
}

/*
 * Claim M/10 keys chosen uniformly among the rows still live at the end of
 * the measurement, each of which must be a DUPLICATE. Rows arrive at N/S
 * rows per second, so the rows from M on are less than one window old. A
 * margin of two seconds of rows covers the rounding of expiry times to
 * whole seconds.
 */
static void measure_duplicates(struct idem_table *t,
                               const struct bench_options *o,
                               struct bench_results *r)
{
    uint64_t end_index = o->prefill + o->measure;
    uint64_t first_live =
        o->measure + 2 * (o->prefill / (uint64_t)o->expiry_s) + 2;
    int64_t now_ms = arrival_ms(o, end_index - 1);
    uint64_t seed_state = o->seed ^ UINT64_C(0x6475706c) /* "dupl" */;
    struct xoshiro256 g;
    struct io_counters io0, io1;

    r->dup_count = o->measure / 10;
    if (r->dup_count == 0)
        return;
    if (first_live >= end_index) {
        fprintf(stderr,
                "idem_bench: no live rows to look up as duplicates: the "
                "prefill of %" PRIu64
                " rows is too small for --expiry-s %" PRId64
                "; use a larger --prefill\n",
                o->prefill, o->expiry_s);
        exit(1);
    }
    for (int i = 0; i < 4; i++)
        g.s[i] = splitmix64_next(&seed_state);

    struct prepared_record *records = alloc_records(o->batch);
    uint64_t span = end_index - first_live;
    read_io_counters_or_exit(&io0);
    for (uint64_t done = 0; done < r->dup_count;) {
        uint64_t count =
            r->dup_count - done < o->batch ? r->dup_count - done : o->batch;
        for (uint64_t i = 0; i < count; i++) {
            uint64_t index = first_live + xoshiro256_next(&g) % span;
            prepare_record(o, index, now_ms, &records[i]);
        }

        int64_t t0 = monotonic_ns();
        begin_or_exit(t);
        for (uint64_t i = 0; i < count; i++)
            claim_duplicate(t, &records[i]);
        commit_or_exit(t);
        r->dup_ns += (uint64_t)(monotonic_ns() - t0);
        done += count;
    }
    free(records);
    read_io_counters_or_exit(&io1);
    io_counters_add_delta(&r->io_dup, &io0, &io1);
}

/* ---- files --------------------------------------------------------- */

static uint64_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/*
 * Read the page size and the SQLITE_VERSION_NUMBER of the library that last
 * wrote the database from its 100-byte header (offsets 16 and 96 of the
 * SQLite file format), since only store/ may call SQLite itself. Returns 0
 * or -1.
 */
static int read_db_header(const char *path, unsigned *page_size,
                          uint32_t *version_number)
{
    unsigned char h[100];
    FILE *f = fopen(path, "rb");
    size_t n;

    if (f == NULL)
        return -1;
    n = fread(h, 1, sizeof h, f);
    fclose(f);
    if (n != sizeof h || memcmp(h, "SQLite format 3", 16) != 0)
        return -1;
    *page_size = (unsigned)h[16] << 8 | h[17];
    if (*page_size == 1)
        *page_size = 65536;
    *version_number = (uint32_t)h[96] << 24 | (uint32_t)h[97] << 16 |
                      (uint32_t)h[98] << 8 | h[99];
    return 0;
}

/* ---- report -------------------------------------------------------- */

static double per(uint64_t total, uint64_t count)
{
    return count == 0 ? 0.0 : (double)total / (double)count;
}

static void print_json(const struct bench_options *o,
                       const struct bench_results *r)
{
    const struct idem_stats *s = &r->stats_after_rebuild;

    printf("{\"bench\":\"idem\",\"seed\":%" PRIu64 ",\"prefill\":%" PRIu64
           ",\"measure\":%" PRIu64 ",\"batch\":%" PRIu64 ",\"cache\":%" PRIu64
           ",\"expiry_s\":%" PRId64 ",\"deferred\":%s",
           o->seed, o->prefill, o->measure, o->batch, o->cache, o->expiry_s,
           o->deferred ? "true" : "false");
    printf(",\"rows_before\":%" PRIu64 ",\"rows_after\":%" PRIu64
           ",\"prefill_s\":%.3f,\"prefill_rows_per_s\":%.0f"
           ",\"rebuild_s\":%.3f,\"rebuild_rows_per_s\":%.0f",
           r->rows_before, r->rows_after, r->prefill_s,
           (double)o->prefill / r->prefill_s, r->rebuild_s,
           (double)r->rows_before / r->rebuild_s);
    printf(",\"index_bytes\":%" PRIu64 ",\"index_slots\":%" PRIu64
           ",\"index_bytes_per_row\":%.1f",
           s->index_bytes, s->index_slots, per(s->index_bytes, s->rows));
    printf(",\"new_ns_per_record\":%.0f,\"new_cpu_ns_per_record\":%.0f"
           ",\"batch_p50_ns_per_record\":%" PRIu64
           ",\"batch_p99_ns_per_record\":%" PRIu64
           ",\"batch_max_ns_per_record\":%" PRIu64,
           per(r->new_ns, o->measure), per(r->new_cpu_ns, o->measure),
           r->batch_p50_ns, r->batch_p99_ns, r->batch_max_ns);
    printf(",\"dup_lookups\":%" PRIu64 ",\"dup_ns_per_lookup\":%.0f"
           ",\"expired_rows\":%" PRIu64 ",\"expire_ns_per_row\":%.0f",
           r->dup_count, per(r->dup_ns, r->dup_count), r->expired_rows,
           per(r->expire_ns, r->expired_rows));
    printf(",\"write_bytes_per_record\":%.0f"
           ",\"write_bytes_new_per_record\":%.0f"
           ",\"write_bytes_expire_per_record\":%.0f"
           ",\"wchar_per_record\":%.0f,\"dup_write_bytes\":%" PRIu64,
           per(r->io_new.write_bytes + r->io_expire.write_bytes, o->measure),
           per(r->io_new.write_bytes, o->measure),
           per(r->io_expire.write_bytes, o->measure),
           per(r->io_new.wchar + r->io_expire.wchar, o->measure),
           r->io_dup.write_bytes);
    printf(",\"db_bytes\":%" PRIu64 ",\"wal_bytes\":%" PRIu64
           ",\"page_size\":%u,\"sqlite_version_number\":%" PRIu32
           ",\"peak_rss_kb\":%ld,\"cache_hits\":%" PRIu64
           ",\"cache_misses\":%" PRIu64 "}\n",
           r->db_bytes, r->wal_bytes, r->page_size, r->sqlite_version_number,
           r->peak_rss_kb, r->stats_after_measure.cache_hits,
           r->stats_after_measure.cache_misses);
}

static void print_summary(const struct bench_options *o,
                          const struct bench_results *r)
{
    const struct idem_stats *s = &r->stats_after_rebuild;

    fprintf(stderr,
            "rows before %" PRIu64 ", after %" PRIu64 " (%" PRIu64
            " expired rows deleted)\n",
            r->rows_before, r->rows_after, r->expired_rows);
    fprintf(stderr,
            "new record (%s, commit every %" PRIu64
            "): %.0f ns, CPU %.0f ns; per batch p50 %" PRIu64 " p99 %" PRIu64
            " max %" PRIu64 " ns/record\n",
            o->deferred ? "deferred claim + complete" : "claim + complete",
            o->batch, per(r->new_ns, o->measure),
            per(r->new_cpu_ns, o->measure), r->batch_p50_ns, r->batch_p99_ns,
            r->batch_max_ns);
    fprintf(stderr, "duplicate claim: %.0f ns (%" PRIu64 " claims)\n",
            per(r->dup_ns, r->dup_count), r->dup_count);
    fprintf(stderr, "expired row deleted: %.0f ns\n",
            per(r->expire_ns, r->expired_rows));
    fprintf(stderr,
            "written per new record: %.0f bytes to storage (%.0f by "
            "the records, %.0f by expiry), %.0f bytes through write()\n",
            per(r->io_new.write_bytes + r->io_expire.write_bytes, o->measure),
            per(r->io_new.write_bytes, o->measure),
            per(r->io_expire.write_bytes, o->measure),
            per(r->io_new.wchar + r->io_expire.wchar, o->measure));
    fprintf(stderr,
            "database %" PRIu64 " bytes, WAL %" PRIu64 " bytes, page size %u\n",
            r->db_bytes, r->wal_bytes, r->page_size);
    fprintf(stderr,
            "index rebuild: %.3f s, %.0f rows/s; index %" PRIu64
            " bytes, %.1f bytes/row\n",
            r->rebuild_s, (double)r->rows_before / r->rebuild_s, s->index_bytes,
            per(s->index_bytes, s->rows));
    fprintf(stderr,
            "peak RSS %ld KiB; cache hits %" PRIu64 ", misses %" PRIu64 "\n",
            r->peak_rss_kb, r->stats_after_measure.cache_hits,
            r->stats_after_measure.cache_misses);
}

/* ---- options ------------------------------------------------------- */

static void usage(FILE *out)
{
    fputs("usage: idem_bench --db PATH --prefill N --measure M --batch B\n"
          "                  [--cache C] [--expiry-s S] [--seed SEED]"
          " [--deferred]\n"
          "\n"
          "  --db PATH      database file to create; must not exist\n"
          "  --prefill N    rows stored before the measurement (>= 1)\n"
          "  --measure M    new records measured\n"
          "  --batch B      records per transaction while measuring\n"
          "  --cache C      LRU cache entries of the table (default 0, "
          "off)\n"
          "  --expiry-s S   how long a key is remembered, in seconds, >= 10 "
          "(default 3600)\n"
          "  --seed SEED    seed of the keys and of the duplicate choice "
          "(default 1)\n"
          "  --deferred     claim new records with idem_claim_deferred(), "
          "so each\n"
          "                 completion inserts its row COMPLETED\n",
          out);
}

/* Parse text as a decimal count in [min, max]. Returns 0, or prints the
 * error naming option and returns -1. */
static int parse_count(const char *option, const char *text, uint64_t min,
                       uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long value;

    errno = 0;
    value = strtoull(text, &end, 10);
    if (text[0] < '0' || text[0] > '9' || *end != '\0' || errno != 0 ||
        value < min || value > max) {
        fprintf(stderr,
                "idem_bench: invalid %s '%s': expected an integer from "
                "%" PRIu64 " to %" PRIu64 "\n",
                option, text, min, max);
        return -1;
    }
    *out = value;
    return 0;
}

/* Parse one option into o. Returns 0 or -1. */
static int parse_option(int opt, const char *arg, struct bench_options *o)
{
    uint64_t expiry_s;

    switch (opt) {
    case 'd':
        o->db_path = arg;
        return 0;
    case 'p':
        return parse_count("--prefill", arg, 1, MAX_COUNT, &o->prefill);
    case 'm':
        return parse_count("--measure", arg, 1, MAX_COUNT, &o->measure);
    case 'b':
        return parse_count("--batch", arg, 1, 1000000, &o->batch);
    case 'c':
        return parse_count("--cache", arg, 0, 100000000, &o->cache);
    case 'e':
        if (parse_count("--expiry-s", arg, 10, MAX_EXPIRY_S, &expiry_s) != 0)
            return -1;
        o->expiry_s = (int64_t)expiry_s;
        return 0;
    case 's':
        return parse_count("--seed", arg, 0, UINT64_MAX, &o->seed);
    case 'f':
        o->deferred = true;
        return 0;
    default:
        return -1;
    }
}

/* Parse argv into o. Returns 0, 1 after --help, or 2 on a usage error. */
static int parse_args(int argc, char **argv, struct bench_options *o)
{
    static const struct option longopts[] = {
        {"db", required_argument, NULL, 'd'},
        {"prefill", required_argument, NULL, 'p'},
        {"measure", required_argument, NULL, 'm'},
        {"batch", required_argument, NULL, 'b'},
        {"cache", required_argument, NULL, 'c'},
        {"expiry-s", required_argument, NULL, 'e'},
        {"seed", required_argument, NULL, 's'},
        {"deferred", no_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;

    *o = (struct bench_options){.expiry_s = 3600, .seed = 1};
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        if (opt == 'h') {
            usage(stdout);
            return 1;
        }
        if (opt == '?' || parse_option(opt, optarg, o) != 0) {
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc || o->db_path == NULL || o->prefill == 0 ||
        o->measure == 0 || o->batch == 0) {
        fprintf(stderr, "idem_bench: --db, --prefill, --measure and "
                        "--batch are required\n");
        usage(stderr);
        return 2;
    }
    return 0;
}

/* ---- main ---------------------------------------------------------- */

/* Reject an existing database or WAL file: the prefill needs an empty
 * table, and a stale WAL would be replayed into the new database. */
static int check_fresh_path(const char *path)
{
    char wal[4096];
    struct stat st;

    snprintf(wal, sizeof wal, "%s-wal", path);
    if (stat(path, &st) == 0 || stat(wal, &st) == 0) {
        fprintf(stderr,
                "idem_bench: %s or its WAL already exists; remove it or "
                "choose another --db path\n",
                path);
        return -1;
    }
    return 0;
}

/* Close the table after the prefill and open it again, timing the open,
 * which rebuilds the in-memory index from every row. */
static struct idem_table *reopen_table(struct idem_table *t,
                                       const struct bench_options *o,
                                       struct bench_results *r)
{
    idem_close(t);
    int64_t t0 = monotonic_ns();
    t = open_table_or_exit(o);
    r->rebuild_s = (double)(monotonic_ns() - t0) / 1e9;
    idem_stats(t, &r->stats_after_rebuild);
    r->rows_before = r->stats_after_rebuild.rows;
    fprintf(stderr, "reopen: %" PRIu64 " rows, index rebuilt in %.3f s\n",
            r->rows_before, r->rebuild_s);
    if (r->rows_before != o->prefill) {
        fprintf(stderr,
                "idem_bench: the table holds %" PRIu64
                " rows after the prefill, expected %" PRIu64 "\n",
                r->rows_before, o->prefill);
        exit(1);
    }
    return t;
}

static void collect_files_and_memory(struct idem_table *t,
                                     const struct bench_options *o,
                                     struct bench_results *r)
{
    char wal[4096];
    struct rusage usage;

    idem_stats(t, &r->stats_after_measure);
    r->rows_after = r->stats_after_measure.rows;
    snprintf(wal, sizeof wal, "%s-wal", o->db_path);
    r->db_bytes = file_size(o->db_path);
    r->wal_bytes = file_size(wal);
    getrusage(RUSAGE_SELF, &usage);
    r->peak_rss_kb = usage.ru_maxrss;
}

int main(int argc, char **argv)
{
    struct bench_options o;
    struct bench_results r = {0};
    struct idem_table *t;
    int rc = parse_args(argc, argv, &o);

    if (rc != 0)
        return rc == 1 ? 0 : rc;
    if ((o.prefill + o.measure) > INT64_MAX / 4 / 1000 / (uint64_t)o.expiry_s) {
        fprintf(stderr, "idem_bench: --prefill plus --measure times "
                        "--expiry-s is too large for ms arrival times\n");
        return 2;
    }
    if (check_fresh_path(o.db_path) != 0)
        return 1;

    t = open_table_or_exit(&o);
    int64_t t0 = monotonic_ns();
    prefill(t, &o);
    r.prefill_s = (double)(monotonic_ns() - t0) / 1e9;
    t = reopen_table(t, &o, &r);
    if (read_db_header(o.db_path, &r.page_size, &r.sqlite_version_number) !=
        0) {
        fprintf(stderr, "idem_bench: %s has no valid SQLite header\n",
                o.db_path);
        return 1;
    }

    measure_new(t, &o, &r);
    measure_duplicates(t, &o, &r);
    collect_files_and_memory(t, &o, &r);
    idem_close(t);

    print_json(&o, &r);
    print_summary(&o, &r);
    return 0;
}
