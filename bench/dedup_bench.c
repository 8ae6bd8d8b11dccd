/*
 * dedup_bench: podium's deduplication alone, the same work per record as
 * the Powertools peer of bench/peer.sh, done with podium's own code. For
 * each line of a recording it
 *
 *   1. parses the line with the strict parser (common/sjson.h) and decodes
 *      its base64 Data (common/base64.h);
 *   2. decodes the payload as the pipeline does (agg_record_decode: strict
 *      parse, checks, canonical form and its SHA-256, the payload hash);
 *   3. evaluates the key expression "uuid" and claims the key in the
 *      idempotency table with idem_claim_deferred(). A new key completes
 *      with the outcome "applied", and a repeat counts as a duplicate.
 *
 * The table is a new SQLite file (WAL, synchronous=FULL, as podium opens
 * it), and every --batch records commit in one transaction, as the
 * replay's jobs do. Leaderboards, samples, the outbox and publishing are
 * left out: `podium replay` measures the whole pipeline.
 *
 * usage: dedup_bench --db PATH [--batch N] FILE
 *
 * PATH must not exist. A payload that is not a valid record is counted
 * as rejected and claims nothing, as the pipeline dead-letters it.
 * Prints one JSON line on stdout: records, duplicates, rejected, wall and
 * CPU seconds and records per second of each. A line that is not a
 * recording line stops the run with FILE:LINE and the reason, and so
 * does an empty FILE. Exit status: 0 success, 1 failure, 2 usage error.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <time.h>

#include "aggregator/aggregator.h"
#include "common/base64.h"
#include "common/sjson.h"
#include "common/strbuf.h"
#include "store/idempotency.h"
#include "bench/bench_clock.h"

#define DEFAULT_BATCH 10000
#define MAX_BATCH     1000000
/* Members of a recording line read without building a document. */
#define LINE_MEMBERS 16
/* podium's defaults: race.max_seconds and idempotency.expiry_s. */
#define MAX_RACE_SECONDS 3600
#define EXPIRY_S         3600

struct dedup_run {
    const char *path;
    uint64_t line_no;
    uint64_t duplicates;
    uint64_t rejected;
    struct idem_table *table;
    struct idem_keyexpr *key_expr;
    struct agg_decoder *decoder;
    struct sjson_doc *doc; /* the payload's, reused */
    struct strbuf key;
    char *strings; /* decoded strings of the line */
    size_t strings_cap;
    uint8_t *data; /* decoded Data */
    size_t data_cap;
    char error[512];
};

/* Make *buf hold need bytes. Returns 0, or -1 when out of memory. */
static int reserve(void **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    void *p = realloc(*buf, need);
    if (p == NULL)
        return -1;
    *buf = p;
    *cap = need;
    return 0;
}

/* The member name of root when it is a string, or NULL. */
static const struct sjson_value *string_member(const struct sjson_value *root,
                                               const char *name)
{
    const struct sjson_value *v = sjson_object_get(root, name);
    return v != NULL && v->type == SJSON_STRING ? v : NULL;
}

/* Parse one recording line and decode its Data into run->data. Returns 0
 * and sets *len, or -1 with run->error set. */
static int read_line(struct dedup_run *run, const char *line, size_t n,
                     const char **shard_id, const char **seq, size_t *len)
{
    struct sjson_value members[LINE_MEMBERS], root;
    struct sjson_err err = {0};

    if (reserve((void **)&run->strings, &run->strings_cap, n + 1) != 0) {
        snprintf(run->error, sizeof run->error, "out of memory");
        return -1;
    }
    if (sjson_parse_flat(line, n, NULL, run->strings, members, LINE_MEMBERS,
                         &root, &err) != SJSON_OK ||
        root.type != SJSON_OBJECT || root.items == NULL) {
        snprintf(run->error, sizeof run->error,
                 "not a recording line: %s at byte %zu",
                 err.message[0] != '\0' ? err.message : "not a flat object",
                 err.offset + 1);
        return -1;
    }
    const struct sjson_value *data = string_member(&root, "Data");
    const struct sjson_value *shard = string_member(&root, "ShardId");
    const struct sjson_value *position = string_member(&root, "SequenceNumber");
    *shard_id = shard != NULL ? shard->str : "";
    *seq = position != NULL ? position->str : "";
    if (data == NULL) {
        snprintf(run->error, sizeof run->error, "the line has no string Data");
        return -1;
    }
    if (reserve((void **)&run->data, &run->data_cap,
                BASE64_DECODED_MAX(data->len)) != 0) {
        snprintf(run->error, sizeof run->error, "out of memory");
        return -1;
    }
    if (base64_decode(data->str, data->len, run->data, len) != 0) {
        snprintf(run->error, sizeof run->error, "Data is not valid base64");
        return -1;
    }
    return 0;
}

/* Deduplicate one line. Returns 0, or -1 with run->error set. */
static int dedup_line(struct dedup_run *run, const char *line, size_t n,
                      int64_t now_ms)
{
    const char *shard_id, *seq;
    size_t len;
    struct agg_record rec;
    struct agg_reject_info why;
    enum idem_result result;

    if (read_line(run, line, n, &shard_id, &seq, &len) != 0)
        return -1;
    int decoded = agg_record_decode(run->decoder, run->data, len,
                                    MAX_RACE_SECONDS, &rec, &why, &run->doc);
    if (decoded != 0 && why.reason != AGG_REJECT_NONE) {
        run->rejected++;
        return 0;
    }
    if (decoded != 0) {
        snprintf(run->error, sizeof run->error, "out of memory");
        return -1;
    }
    sb_reset(&run->key);
    if (idem_keyexpr_eval(run->key_expr, sjson_doc_root(run->doc), &run->key) !=
        1) {
        snprintf(run->error, sizeof run->error, "the payload has no uuid");
        return -1;
    }
    struct idem_claim c = {.key = run->key.data,
                           .key_len = run->key.len,
                           .hash = rec.hash,
                           .now_ms = now_ms,
                           .shard_id = shard_id,
                           .seq = seq};
    if (idem_claim_deferred(run->table, &c, &result, NULL) != 0) {
        snprintf(run->error, sizeof run->error, "claim: %s",
                 idem_errmsg(run->table));
        return -1;
    }
    if (result == IDEM_DUPLICATE) {
        run->duplicates++;
        return 0;
    }
    if (result != IDEM_NEW) {
        snprintf(run->error, sizeof run->error, "unexpected claim result %d",
                 (int)result);
        return -1;
    }
    if (idem_complete(run->table, run->key.data, run->key.len, "applied",
                      now_ms) != 0) {
        snprintf(run->error, sizeof run->error, "complete: %s",
                 idem_errmsg(run->table));
        return -1;
    }
    return 0;
}

/* Deduplicate every line of f, committing every batch lines. Returns 0,
 * or -1 with run->error set. */
static int dedup_file(struct dedup_run *run, FILE *f, int64_t batch)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int64_t in_batch = 0;
    /* One fixed stream time, so that no key expires during the run. */
    const int64_t now_ms = 1767225600000;
    int rc = 0;

    while (rc == 0 && (n = getline(&line, &cap, f)) > 0) {
        run->line_no++;
        if (in_batch == 0 && idem_begin(run->table) != 0) {
            snprintf(run->error, sizeof run->error, "begin: %s",
                     idem_errmsg(run->table));
            rc = -1;
            break;
        }
        rc = dedup_line(run, line, (size_t)n, now_ms);
        if (rc == 0 && ++in_batch == batch) {
            in_batch = 0;
            if (idem_commit(run->table) != 0) {
                snprintf(run->error, sizeof run->error, "commit: %s",
                         idem_errmsg(run->table));
                rc = -1;
            }
        }
    }
    if (rc == 0 && in_batch > 0 && idem_commit(run->table) != 0) {
        snprintf(run->error, sizeof run->error, "commit: %s",
                 idem_errmsg(run->table));
        rc = -1;
    }
    if (rc == 0 && run->line_no == 0) {
        snprintf(run->error, sizeof run->error,
                 "the file has no lines; pass a recording of podium "
                 "simulate --out");
        rc = -1;
    }
    if (rc == 0 && ferror(f)) {
        snprintf(run->error, sizeof run->error, "read failed: %s",
                 strerror(errno));
        rc = -1;
    }
    free(line);
    return rc;
}

/* Remove the database that a failed run made, with its WAL files. */
static void remove_database(const char *db)
{
    static const char *const suffixes[] = {"", "-wal", "-shm"};
    char path[4096];

    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        if (snprintf(path, sizeof path, "%s%s", db, suffixes[i]) <
            (int)sizeof path)
            unlink(path);
    }
}

/* Print what was wrong with the arguments and the usage. Returns 2. */
static int usage(const char *problem)
{
    fprintf(stderr,
            "dedup_bench: %s\n"
            "usage: dedup_bench --db PATH [--batch N] FILE\n"
            "  --db PATH   database file to create; must not exist\n"
            "  --batch N   records per transaction, 1 to %d (default %d)\n"
            "  FILE        a recording, as podium simulate --out writes it\n",
            problem, MAX_BATCH, DEFAULT_BATCH);
    return 2;
}

static int open_run(struct dedup_run *run, const char *db)
{
    static const uint8_t owner[IDEM_OWNER_LEN] = {'d', 'e', 'd', 'u', 'p'};
    struct idem_options opts = {.expiry_s = EXPIRY_S, .cache_size = 1024};
    char err[256];

    sb_init(&run->key, IDEM_MAX_KEY);
    run->decoder = agg_decoder_new();
    if (run->decoder == NULL) {
        fputs("dedup_bench: out of memory\n", stderr);
        return -1;
    }
    if (idem_keyexpr_compile("uuid", &run->key_expr, err, sizeof err) != 0 ||
        idem_open_path(db, &opts, owner, &run->table, err, sizeof err) != 0) {
        fprintf(stderr,
                "dedup_bench: %s; check that the folder of --db exists and "
                "is writable\n",
                err);
        return -1;
    }
    return 0;
}

static void close_run(struct dedup_run *run)
{
    idem_close(run->table);
    idem_keyexpr_free(run->key_expr);
    agg_decoder_free(run->decoder);
    sjson_doc_free(run->doc);
    sb_free(&run->key);
    free(run->strings);
    free(run->data);
}

int main(int argc, char **argv)
{
    struct dedup_run run = {0};
    const char *db = NULL;
    int64_t batch = DEFAULT_BATCH;
    int i = 1;

    for (; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
        if (strcmp(argv[i], "--db") == 0) {
            db = argv[i + 1];
        } else if (strcmp(argv[i], "--batch") == 0) {
            char *end;
            errno = 0;
            long long v = strtoll(argv[i + 1], &end, 10);
            if (errno != 0 || *end != '\0' || v < 1 || v > MAX_BATCH) {
                fprintf(stderr,
                        "dedup_bench: invalid --batch \"%s\": expected an "
                        "integer from 1 to %d\n",
                        argv[i + 1], MAX_BATCH);
                return 2;
            }
            batch = v;
        } else {
            fprintf(stderr, "dedup_bench: unknown option \"%s\"\n", argv[i]);
            return usage("expected --db or --batch");
        }
    }
    if (db == NULL)
        return usage("missing --db PATH");
    if (i + 1 != argc)
        return usage(i == argc ? "missing FILE" : "more than one FILE");
    struct stat st;
    if (stat(db, &st) == 0) {
        fprintf(stderr,
                "dedup_bench: %s already exists; remove it or pass a new "
                "path, so that every key starts new\n",
                db);
        return 2;
    }
    run.path = argv[i];
    FILE *f = fopen(run.path, "r");
    if (f == NULL) {
        fprintf(stderr, "dedup_bench: cannot read %s: %s; check the path\n",
                run.path, strerror(errno));
        return 1;
    }
    if (open_run(&run, db) != 0) {
        fclose(f);
        close_run(&run);
        return 1;
    }

    double wall_start = clock_seconds(CLOCK_MONOTONIC);
    double cpu_start = clock_seconds(CLOCK_PROCESS_CPUTIME_ID);
    int rc = dedup_file(&run, f, batch);
    double wall = clock_seconds(CLOCK_MONOTONIC) - wall_start;
    double cpu = clock_seconds(CLOCK_PROCESS_CPUTIME_ID) - cpu_start;
    fclose(f);
    close_run(&run);
    if (rc != 0) {
        fprintf(stderr, "dedup_bench: %s:%" PRIu64 ": %s\n", run.path,
                run.line_no, run.error);
        remove_database(db);
        return 1;
    }
    printf("{\"bench\":\"dedup\",\"records\":%" PRIu64
           ",\"duplicates\":%" PRIu64 ",\"rejected\":%" PRIu64
           ",\"batch\":%" PRId64 ",\"wall_s\":%.4f,\"cpu_s\":%.4f,"
           "\"records_per_wall_s\":%.0f,\"records_per_cpu_s\":%.0f}\n",
           run.line_no, run.duplicates, run.rejected, batch, wall, cpu,
           per_second(run.line_no, wall), per_second(run.line_no, cpu));
    return 0;
}
