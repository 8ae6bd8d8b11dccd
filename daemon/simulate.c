/*
 * `podium simulate`: riders on exercise bikes, the way the Alleycat sample
 * simulator plays them, plus what it lacks (a uuid on every message, seeds
 * for repeatable runs, duplicate puts).
 *
 * Each rider gets a permanent cadence range inside 30..90 and a resistance
 * range inside 33..86, and for the race a narrower range inside those. The
 * value at second s rises linearly from the race minimum to the race
 * maximum over the race, in hundredths. Every rider sends one message per
 * second; the last second carries event "final". Riders are spread over the
 * classes in turn and each class rides its own race. A duplicate is the same
 * bytes put again with the same partition key a second later, as a producer
 * retry would do.
 *
 * Faults, each a seeded fraction, for testing the paths that handle them:
 * - malformed: the record is not valid telemetry: not JSON (cut in half),
 *   invalid UTF-8 in the name, racerId missing, or cadence out of range,
 *   one of them by a seeded choice;
 * - late: the record is held back and put after the records of
 *   race.allowed_lateness_s + 3 seconds later, so its second is already
 *   published when it arrives;
 * - skew: a rider whose device clock is off by a seeded whole number of
 *   seconds from -max to 2 x max, where max is race.max_future_skew_s, so
 *   about a third of them are ahead by more than max and quarantined.
 * Malformed and late records are drawn only among riders with a correct
 * clock and are never sent twice, so every fault is counted once. The
 * faults draw from their own random sequence, so a seed without faults
 * writes the same records as before they existed.
 *
 * Output goes to a stream (PutRecords, at most 500 records a call, failed
 * entries retried) or to a file in the recording format: one JSON object a
 * line with the Kinesis field names, Data in base64. A file may spread the
 * records over --shards shards by partition key.
 */
#include "daemon/daemon.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/aws.h"
#include "common/base64.h"
#include "common/log.h"
#include "common/sjson.h"
#include "common/strbuf.h"

#define SIM_MAX_RACERS  100000
#define SIM_MAX_CLASSES 999
#define SIM_MAX_SECONDS 86400
#define SIM_MAX_SHARDS  64
/* Seconds a late record is held back beyond race.allowed_lateness_s. */
#define SIM_LATE_EXTRA_S 3
/* How long to wait for a stream to become ACTIVE: 60 x 0.5 s. */
#define SIM_MAX_WAITS    60
#define SIM_WAIT_STEP_MS 500

static const char *const rider_names[] = {
    "Ada",   "Bo",   "Carmen", "Dev",  "Eun",   "Femi",  "Gus",   "Hana",
    "Ivo",   "Jia",  "Kofi",   "Lena", "Mateo", "Nia",   "Oskar", "Priya",
    "Quinn", "Rosa", "Sami",   "Tove", "Uma",   "Vik",   "Wen",   "Xavi",
    "Yara",  "Zeno", "Ayla",   "Bram", "Cleo",  "Dario", "Elif",  "Finn",
    "Greta", "Hugo", "Inés",   "Joon", "Kaia",  "Luca",  "Mira",  "Nils",
    "Olu",   "Pia",  "Rafa",   "Sora", "Teo",   "Una",   "Vera",  "Wim",
    "Yusuf", "Zoe",
};

struct sim_options {
    int64_t racers;
    int64_t seconds;
    int64_t classes;
    uint64_t seed;
    double duplicates;
    double malformed;
    double late;
    double skew;
    int64_t shards; /* shards of a file; 1 for a stream */
    const char *out_file;
    const char *stream;
    int64_t start_ms;
    bool realtime;
};

struct rider {
    int64_t racer_id;
    int64_t class_no;
    int64_t race_id;
    const char *name;
    int64_t cadence_min; /* race range, whole units */
    int64_t cadence_max;
    int64_t resistance_min;
    int64_t resistance_max;
    int64_t clock_offset_ms; /* device clock minus true time (--skew) */
};

/* Kinds of --malformed records, picked by the fault sequence. */
enum sim_malformed {
    SIM_NOT_JSON,
    SIM_INVALID_UTF8,
    SIM_MISSING_FIELD,
    SIM_VALUE_RANGE,
    SIM_MALFORMED_KINDS
};

/* The dead-letter reason of each kind, as the aggregator names it. */
static const char *const malformed_names[SIM_MALFORMED_KINDS] = {
    "not_json", "invalid_utf8", "missing_field", "value_range"};

struct sim_record {
    char *data;
    size_t len;
    char partition_key[16];
    int64_t device_ts_ms;   /* as the rider's device shows it */
    int64_t true_ts_ms;     /* without the device's clock offset */
    int64_t release_second; /* late: put after this second; else 0 */
};

/* ---- deterministic randomness (splitmix64) ----------------------- */

struct rng {
    uint64_t state;
};

static uint64_t rng_next(struct rng *r)
{
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform integer in lo..hi inclusive. */
static int64_t rng_range(struct rng *r, int64_t lo, int64_t hi)
{
    uint64_t span = (uint64_t)(hi - lo) + 1;
    return lo + (int64_t)(rng_next(r) % span);
}

static bool rng_chance(struct rng *r, double p)
{
    return (double)(rng_next(r) >> 11) * 0x1.0p-53 < p;
}

static void rng_uuid(struct rng *r, char out[37])
{
    uint8_t b[16];
    uint64_t a = rng_next(r), c = rng_next(r);
    memcpy(b, &a, 8);
    memcpy(b + 8, &c, 8);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    snprintf(out, 37,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10],
             b[11], b[12], b[13], b[14], b[15]);
}

/* ---- riders and records ----------------------------------------- */

static void make_rider(struct rng *r, const struct sim_options *o,
                       int64_t index, struct rider *out)
{
    int64_t cmin = rng_range(r, 30, 90), cmax = rng_range(r, cmin, 90);
    int64_t rmin = rng_range(r, 33, 86), rmax = rng_range(r, rmin, 86);

    out->racer_id = 100 + index;
    out->class_no = 1 + index % o->classes;
    out->race_id = o->start_ms / 300000 * 1000 + out->class_no;
    out->name =
        rider_names[rng_next(r) % (sizeof rider_names / sizeof rider_names[0])];
    out->cadence_min = rng_range(r, cmin, cmax);
    out->cadence_max = rng_range(r, out->cadence_min, cmax);
    out->resistance_min = rng_range(r, rmin, rmax);
    out->resistance_max = rng_range(r, out->resistance_min, rmax);
}

/* Value at second s of seconds, in hundredths, rising from lo to hi. */
static int64_t ramp(int64_t lo, int64_t hi, int64_t s, int64_t seconds)
{
    return lo * 100 + (hi - lo) * 100 * s / seconds;
}

static void put_hundredths(struct strbuf *sb, int64_t v)
{
    sb_fixed4(sb, v * 100);
}

static int make_record(struct rng *r, const struct sim_options *o,
                       const struct rider *rd, int64_t second,
                       struct sim_record *out)
{
    struct strbuf sb;
    char uuid[37];

    rng_uuid(r, uuid);
    out->true_ts_ms = o->start_ms + second * 1000 + rng_range(r, 0, 199);
    out->device_ts_ms = out->true_ts_ms + rd->clock_offset_ms;
    out->release_second = 0;
    snprintf(out->partition_key, sizeof out->partition_key, "%" PRId64,
             rng_range(r, 0, 99999999));

    sb_init(&sb, 4096);
    sb_printf(&sb,
              "{\"uuid\":\"%s\",\"event\":\"%s\",\"deviceTimestamp\":%" PRId64
              ",\"second\":%" PRId64 ",\"raceId\":%" PRId64
              ",\"name\":\"%s\",\"racerId\":%" PRId64 ",\"classId\":%" PRId64
              ",\"cadence\":",
              uuid, second == o->seconds ? "final" : "update",
              out->device_ts_ms, second, rd->race_id, rd->name, rd->racer_id,
              rd->class_no);
    put_hundredths(&sb,
                   ramp(rd->cadence_min, rd->cadence_max, second, o->seconds));
    sb_puts(&sb, ",\"resistance\":");
    put_hundredths(
        &sb, ramp(rd->resistance_min, rd->resistance_max, second, o->seconds));
    sb_putc(&sb, '}');
    if (sb_error(&sb) != 0) {
        sb_free(&sb);
        return -1;
    }
    out->data = sb_take(&sb, &out->len);
    return 0;
}

/* ---- faults --------------------------------------------------------- */

/* Replace len bytes at offset of rec->data with text. Returns 0 or -1 when
 * out of memory. */
static int splice(struct sim_record *rec, size_t offset, size_t len,
                  const char *text, size_t text_len)
{
    size_t new_len = rec->len - len + text_len;
    char *data = malloc(new_len + 1);
    if (data == NULL)
        return -1;
    memcpy(data, rec->data, offset);
    memcpy(data + offset, text, text_len);
    memcpy(data + offset + text_len, rec->data + offset + len,
           rec->len - offset - len);
    data[new_len] = '\0';
    free(rec->data);
    rec->data = data;
    rec->len = new_len;
    return 0;
}

/* The offset just past "name": in rec, which make_record() always writes. */
static size_t field_value_offset(const struct sim_record *rec, const char *name)
{
    const char *p = strstr(rec->data, name);
    return p == NULL ? rec->len : (size_t)(p - rec->data) + strlen(name);
}

/* Turn rec into a record of the given malformed kind. Returns 0 or -1 when
 * out of memory. */
static int make_malformed(struct sim_record *rec, enum sim_malformed kind)
{
    size_t at, end;
    switch (kind) {
    case SIM_NOT_JSON:
        rec->len /= 2;
        rec->data[rec->len] = '\0';
        return 0;
    case SIM_INVALID_UTF8:
        /* 0xff never occurs in UTF-8. */
        at = field_value_offset(rec, "\"name\":\"");
        return splice(rec, at, 1, "\xff", 1);
    case SIM_MISSING_FIELD:
        at = field_value_offset(rec, ",\"racerId\":");
        end = at + strcspn(rec->data + at, ",");
        at -= strlen(",\"racerId\":");
        return splice(rec, at, end - at, "", 0);
    case SIM_VALUE_RANGE:
        at = field_value_offset(rec, "\"cadence\":");
        end = at + strcspn(rec->data + at, ",");
        return splice(rec, at, end - at, "1234.5", 6);
    default:
        return -1;
    }
}

/* ---- the run: records second by second -------------------------- */

struct sim_state {
    struct sim_options opts;
    struct rng rng;
    struct rng fault_rng; /* --malformed, --late and --skew only */
    struct rider *riders;
    int64_t next_second;        /* next second to generate */
    struct sim_record *retries; /* duplicates to put after this second */
    size_t retry_count;
    size_t retry_cap;
    struct sim_record *held; /* late records, in the order generated */
    size_t held_count;
    size_t held_cap;
    int64_t late_delay_s;      /* race.allowed_lateness_s + SIM_LATE_EXTRA_S */
    int64_t max_future_skew_s; /* race.max_future_skew_s */
    uint64_t records;
    uint64_t duplicates;
    uint64_t malformed[SIM_MALFORMED_KINDS];
    uint64_t late;
    uint64_t skewed_riders;
    uint64_t skewed_beyond_limit; /* records ahead by more than the limit */

    /* file output */
    FILE *out;
    uint64_t sequence;
    int64_t last_arrival_ms;
    char shard_id[32];

    /* stream output */
    uv_loop_t loop;
    uv_timer_t feeder;
    struct aws_client *kinesis; /* DescribeStreamSummary while waiting */
    int waits;                  /* DescribeStreamSummary calls so far */
    bool feeding;               /* the stream is ACTIVE: feeder runs */
    struct httpc *http;
    struct kinesis_putter *putter;
    struct aws_endpoint endpoint;
    struct aws_credentials creds;
    int64_t wall_start_ms;
    const char *error;
    int exit_code;
};

static int emit_file(struct sim_state *st, const struct sim_record *rec)
{
    size_t b64_len = BASE64_ENCODED_LEN(rec->len);
    char *b64 = malloc(b64_len + 1);
    if (b64 == NULL)
        return -1;
    base64_encode((const uint8_t *)rec->data, rec->len, b64);

    /* Arrival follows the true time by a small delay and, like a real
     * shard's, never goes backwards, here across all shards of the file. A
     * late record gets a millisecond of its own after the records it was
     * held behind. */
    int64_t arrival = rec->true_ts_ms + 150;
    if (arrival < st->last_arrival_ms)
        arrival = st->last_arrival_ms;
    if (rec->release_second > 0 && arrival == st->last_arrival_ms)
        arrival++;
    st->last_arrival_ms = arrival;
    st->sequence++;
    /* FNV-1a of the partition key picks the shard. Kinesis maps the MD5
     * of the key to hash key ranges instead. */
    uint32_t hash = 2166136261u;
    for (const char *p = rec->partition_key; *p; p++)
        hash = (hash ^ (uint8_t)*p) * 16777619u;
    snprintf(st->shard_id, sizeof st->shard_id, "shardId-%012" PRIu32,
             st->opts.shards > 1 ? hash % (uint32_t)st->opts.shards : 0);
    int rc = fprintf(st->out,
                     "{\"ShardId\":\"%s\","
                     "\"SequenceNumber\":\"49%054" PRIu64 "\","
                     "\"ApproximateArrivalTimestamp\":%" PRId64 ".%03" PRId64
                     ",\"PartitionKey\":\"%s\","
                     "\"Data\":\"%s\"}\n",
                     st->shard_id, st->sequence, arrival / 1000, arrival % 1000,
                     rec->partition_key, b64);
    free(b64);
    return rc < 0 ? -1 : 0;
}

static int emit(struct sim_state *st, const struct sim_record *rec)
{
    st->records++;
    if (st->out != NULL)
        return emit_file(st, rec);
    return kinesis_putter_add(st->putter, rec->data, rec->len,
                              rec->partition_key);
}

/* Append rec (taking its data) to a list. Returns 0 or -1 when out of
 * memory. */
static int keep_record(struct sim_record **items, size_t *count, size_t *cap,
                       struct sim_record *rec)
{
    if (*count == *cap) {
        size_t new_cap = *cap ? *cap * 2 : 64;
        struct sim_record *p = realloc(*items, new_cap * sizeof *p);
        if (p == NULL)
            return -1;
        *items = p;
        *cap = new_cap;
    }
    (*items)[(*count)++] = *rec;
    return 0;
}

static int keep_retry(struct sim_state *st, struct sim_record *rec)
{
    return keep_record(&st->retries, &st->retry_count, &st->retry_cap, rec);
}

/* Emit the late records due after second, keeping the others in order. */
static int release_held(struct sim_state *st, int64_t second)
{
    int rc = 0;
    size_t kept = 0;
    for (size_t i = 0; i < st->held_count; i++) {
        struct sim_record *rec = &st->held[i];
        if (rec->release_second > second) {
            st->held[kept++] = *rec;
            continue;
        }
        if (rc == 0)
            rc = emit(st, rec);
        free(rec->data);
    }
    st->held_count = kept;
    return rc;
}

/*
 * Apply the faults to a new record of rider rd at second: it may become
 * malformed, or be held back as late. *duplicate is cleared for both, so
 * that each fault is counted once. Returns 0 or -1 when out of memory.
 */
static int apply_faults(struct sim_state *st, const struct rider *rd,
                        int64_t second, struct sim_record *rec, bool *duplicate)
{
    const struct sim_options *o = &st->opts;
    if (rd->clock_offset_ms > st->max_future_skew_s * 1000)
        st->skewed_beyond_limit++;
    if (rd->clock_offset_ms != 0)
        return 0;
    if (o->malformed > 0 && rng_chance(&st->fault_rng, o->malformed)) {
        enum sim_malformed kind = (enum sim_malformed)rng_range(
            &st->fault_rng, 0, SIM_MALFORMED_KINDS - 1);
        st->malformed[kind]++;
        *duplicate = false;
        return make_malformed(rec, kind);
    }
    if (o->late > 0 && second + st->late_delay_s <= o->seconds &&
        rng_chance(&st->fault_rng, o->late)) {
        rec->release_second = second + st->late_delay_s;
        st->late++;
        *duplicate = false;
    }
    return 0;
}

/* Give a seeded fraction of the riders a device clock that is off. */
static void skew_clocks(struct sim_state *st)
{
    int64_t max = st->max_future_skew_s > 0 ? st->max_future_skew_s : 1;
    if (st->opts.skew <= 0)
        return;
    for (int64_t i = 0; i < st->opts.racers; i++) {
        if (!rng_chance(&st->fault_rng, st->opts.skew))
            continue;
        /* Whole seconds from -max to 2 x max, without 0. */
        int64_t offset_s = rng_range(&st->fault_rng, -max, 2 * max - 1);
        if (offset_s >= 0)
            offset_s++;
        st->riders[i].clock_offset_ms = offset_s * 1000;
        st->skewed_riders++;
    }
}

/*
 * Warn when --late or --malformed cannot give about the fraction asked
 * for: late records come only from seconds 1 to seconds - late_delay_s,
 * and both come only from riders with a correct clock.
 */
static void warn_fault_limits(const struct sim_state *st)
{
    const struct sim_options *o = &st->opts;
    int64_t late_seconds =
        o->seconds > st->late_delay_s ? o->seconds - st->late_delay_s : 0;
    double clock_share =
        (double)(o->racers - (int64_t)st->skewed_riders) / (double)o->racers;
    double window_share = (double)late_seconds / (double)o->seconds;

    if (o->late > 0 && late_seconds == 0) {
        fprintf(stderr,
                "podium simulate: warning: --late %g gives no late records: a "
                "late record is put %" PRId64 " s after its second "
                "(race.allowed_lateness_s + %d), so only seconds 1 to "
                "--seconds minus %" PRId64 " can have one, and --seconds is "
                "%" PRId64 "; pass --seconds %" PRId64 " or more\n",
                o->late, st->late_delay_s, SIM_LATE_EXTRA_S, st->late_delay_s,
                o->seconds, st->late_delay_s + 1);
    } else if (o->late > 0 && window_share < 0.9) {
        fprintf(stderr,
                "podium simulate: warning: --late %g applies to seconds 1 to "
                "%" PRId64 " of %" PRId64 " only, because a late record is "
                "put %" PRId64 " s after its second (race.allowed_lateness_s "
                "+ %d), so expect about %.0f%% of the late records asked "
                "for; pass --seconds %" PRId64 " or more for 90%%\n",
                o->late, late_seconds, o->seconds, st->late_delay_s,
                SIM_LATE_EXTRA_S, window_share * 100, st->late_delay_s * 10);
    }
    if ((o->late > 0 || o->malformed > 0) && clock_share < 0.9)
        fprintf(stderr,
                "podium simulate: warning: --late and --malformed apply only "
                "to the %" PRId64 " of %" PRId64 " riders whose clock is "
                "correct (--skew %g), so expect about %.0f%% of the late and "
                "malformed records asked for; lower --skew for more\n",
                o->racers - (int64_t)st->skewed_riders, o->racers, o->skew,
                clock_share * 100);
}

/* Emit the duplicates held back from the previous second. */
static int flush_retries(struct sim_state *st)
{
    int rc = 0;
    for (size_t i = 0; i < st->retry_count; i++) {
        if (rc == 0)
            rc = emit(st, &st->retries[i]);
        st->duplicates++;
        free(st->retries[i].data);
    }
    st->retry_count = 0;
    return rc;
}

/* Generate and emit every rider's record of the next second. */
static int emit_second(struct sim_state *st)
{
    int64_t second = st->next_second++;
    struct sim_record *previous = NULL;
    size_t previous_count = st->retry_count;

    /* Duplicates of the previous second go out after this second's
     * records, so swap them aside first. */
    previous = st->retries;
    st->retries = NULL;
    st->retry_count = st->retry_cap = 0;

    int rc = 0;
    for (int64_t i = 0; i < st->opts.racers && rc == 0; i++) {
        struct sim_record rec;
        rc = make_record(&st->rng, &st->opts, &st->riders[i], second, &rec);
        if (rc != 0)
            break;
        /* Drawn before the faults so that they leave this sequence as it
         * is without them. */
        bool duplicate = rng_chance(&st->rng, st->opts.duplicates);
        rc = apply_faults(st, &st->riders[i], second, &rec, &duplicate);
        if (rc == 0 && rec.release_second > 0) {
            rc = keep_record(&st->held, &st->held_count, &st->held_cap, &rec);
            if (rc != 0)
                free(rec.data);
            continue;
        }
        if (rc == 0)
            rc = emit(st, &rec);
        if (rc == 0 && duplicate)
            rc = keep_retry(st, &rec);
        else
            free(rec.data);
    }
    for (size_t i = 0; i < previous_count; i++) {
        if (rc == 0)
            rc = emit(st, &previous[i]);
        st->duplicates++;
        free(previous[i].data);
    }
    free(previous);
    if (rc == 0)
        rc = release_held(st, second);
    return rc;
}

static bool all_generated(const struct sim_state *st)
{
    return st->next_second > st->opts.seconds;
}

/* ---- file output -------------------------------------------------- */

static int run_to_file(struct sim_state *st)
{
    bool to_stdout = strcmp(st->opts.out_file, "-") == 0;
    st->out = to_stdout ? stdout : fopen(st->opts.out_file, "w");
    if (st->out == NULL) {
        fprintf(stderr, "podium simulate: failed to open %s: %s\n",
                st->opts.out_file, strerror(errno));
        return 1;
    }
    int rc = 0;
    while (rc == 0 && !all_generated(st))
        rc = emit_second(st);
    if (rc == 0)
        rc = flush_retries(st);
    if (rc == 0)
        rc = release_held(st, INT64_MAX);
    if (fflush(st->out) != 0 || (!to_stdout && fclose(st->out) != 0))
        rc = -1;
    if (rc != 0) {
        fprintf(stderr, "podium simulate: failed to write %s: %s\n",
                st->opts.out_file, strerror(errno));
        return 1;
    }
    return 0;
}

/* ---- stream output ------------------------------------------------ */

static void on_put_done(void *arg, const char *error)
{
    struct sim_state *st = arg;
    if (error != NULL) {
        fprintf(stderr, "podium simulate: failed to put records: %s\n", error);
        st->exit_code = 1;
    }
    uv_close((uv_handle_t *)&st->feeder, NULL);
    httpc_close(st->http, NULL, NULL);
    st->http = NULL;
}

/* Feed seconds into the putter; with --realtime, second s goes out s
 * seconds after the start. */
static void on_feed(uv_timer_t *timer)
{
    struct sim_state *st = timer->data;
    int64_t now = log_now_ms();

    if (!st->feeding)
        return;

    /* One second at a time, as riders' devices send them: the next second
     * goes out once the putter has handed over the previous one, so
     * arrival times follow the race clock across shards. */
    while (!all_generated(st) && kinesis_putter_pending(st->putter) == 0) {
        if (st->opts.realtime &&
            now < st->wall_start_ms + (st->next_second - 1) * 1000)
            return;
        if (emit_second(st) != 0) {
            st->exit_code = 1;
            break;
        }
        kinesis_putter_flush(st->putter);
    }
    if (!all_generated(st) && st->exit_code == 0)
        return;
    uv_timer_stop(timer);
    if (flush_retries(st) != 0 || release_held(st, INT64_MAX) != 0)
        st->exit_code = 1;
    kinesis_putter_finish(st->putter, on_put_done, st);
}

/*
 * StreamStatus from a DescribeStreamSummary reply into buf, or "" when the
 * reply has none.
 */
static void stream_status(const char *body, size_t len, char *buf,
                          size_t buf_len)
{
    struct sjson_doc *doc = NULL;
    buf[0] = '\0';
    if (sjson_parse(body, len, NULL, &doc, NULL) != 0)
        return;
    const struct sjson_value *summary =
        sjson_object_get(sjson_doc_root(doc), "StreamDescriptionSummary");
    const struct sjson_value *status =
        summary ? sjson_object_get(summary, "StreamStatus") : NULL;
    if (status != NULL && status->type == SJSON_STRING)
        snprintf(buf, buf_len, "%s", status->str);
    sjson_doc_free(doc);
}

static void describe_stream(struct sim_state *st);

static void on_describe_retry(uv_timer_t *timer)
{
    describe_stream(timer->data);
}

/* Records can be put once the stream is ACTIVE (or UPDATING); right after
 * CreateStream it is CREATING, or not found yet, for a moment. */
static void on_describe(void *arg, const struct aws_reply *reply)
{
    struct sim_state *st = arg;
    char status[32] = "";

    if (reply->transport == HTTPC_OK && reply->status == 200)
        stream_status(reply->body, reply->body_len, status, sizeof status);
    if (strcmp(status, "ACTIVE") == 0 || strcmp(status, "UPDATING") == 0) {
        st->feeding = true;
        uv_timer_start(&st->feeder, on_feed, 0, 5);
        return;
    }
    if (++st->waits < SIM_MAX_WAITS) {
        uv_timer_start(&st->feeder, on_describe_retry, SIM_WAIT_STEP_MS, 0);
        return;
    }
    fprintf(stderr,
            "podium simulate: stream \"%s\" is not ACTIVE after %d s (%s); "
            "create it first, or check stream.name and kinesis.endpoint\n",
            st->opts.stream, SIM_MAX_WAITS * SIM_WAIT_STEP_MS / 1000,
            status[0]                      ? status
            : reply->error_type            ? reply->error_type
            : reply->transport != HTTPC_OK ? reply->transport_text
                                           : "no status");
    st->exit_code = 1;
    kinesis_putter_finish(st->putter, on_put_done, st);
}

static void describe_stream(struct sim_state *st)
{
    struct strbuf body;
    sb_init(&body, 1024);
    sb_puts(&body, "{\"StreamName\":");
    sb_json_string(&body, st->opts.stream, strlen(st->opts.stream));
    sb_putc(&body, '}');
    if (sb_error(&body) != 0 ||
        aws_json_call(st->kinesis, "DescribeStreamSummary", body.data, body.len,
                      5000, 65536, on_describe, st) == NULL) {
        fprintf(stderr, "podium simulate: failed to send "
                        "DescribeStreamSummary\n");
        st->exit_code = 1;
        kinesis_putter_finish(st->putter, on_put_done, st);
    }
    sb_free(&body);
}

static int run_to_stream(struct sim_state *st, struct podium_config *cfg)
{
    char err[512];
    if (aws_endpoint_init(&st->endpoint, cfg->kinesis_endpoint, cfg->region,
                          "kinesis", err, sizeof err) != 0) {
        fprintf(stderr, "podium simulate: invalid kinesis.endpoint: %s\n", err);
        return 2;
    }
    uv_loop_init(&st->loop);
    int rc =
        daemon_credentials_open(&st->loop, cfg, "podium simulate", &st->creds);
    if (rc != 0) {
        uv_loop_close(&st->loop);
        aws_endpoint_clear(&st->endpoint);
        return rc;
    }
    if (httpc_new(&st->loop, &st->http) != 0)
        return 1;
    st->putter =
        kinesis_putter_new(&st->loop, st->http, &st->endpoint, &st->creds,
                           st->opts.stream, cfg->request_timeout_ms);
    if (st->putter == NULL)
        return 1;
    st->kinesis = aws_client_new(st->http, &st->endpoint, &st->creds,
                                 "Kinesis_20131202", NULL);
    if (st->kinesis == NULL)
        return 1;
    st->wall_start_ms = log_now_ms();
    uv_timer_init(&st->loop, &st->feeder);
    st->feeder.data = st;
    describe_stream(st);
    uv_run(&st->loop, UV_RUN_DEFAULT);

    aws_client_free(st->kinesis);
    kinesis_putter_free(st->putter);
    daemon_credentials_close(&st->creds, NULL, NULL);
    uv_run(&st->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&st->loop) != 0)
        fprintf(stderr, "podium simulate: handles left open at exit\n");
    aws_endpoint_clear(&st->endpoint);
    aws_credentials_clear(&st->creds);
    return st->exit_code;
}

/* ---- options ------------------------------------------------------ */

static void simulate_usage(FILE *out)
{
    fputs("usage: podium simulate (--stream NAME | --out FILE) [options]\n"
          "\n"
          "  --racers N        riders (default 1000, up to 100000)\n"
          "  --seconds N       race length in seconds (default 300)\n"
          "  --classes N       classes; each class rides its own race "
          "(default 6)\n"
          "  --seed N          seed for repeatable runs (default 1)\n"
          "  --duplicates F    chance 0..1 that a message is put twice, "
          "unless\n"
          "                    it is malformed or late (default 0)\n"
          "  --malformed F     chance 0..1 that a message of a rider with a\n"
          "                    correct clock is not valid telemetry "
          "(default 0)\n"
          "  --late F          chance 0..1 that a message of a rider with a\n"
          "                    correct clock, not malformed, is put after its\n"
          "                    second was published; only seconds 1 to\n"
          "                    --seconds minus (race.allowed_lateness_s + 3)\n"
          "                    can have late messages, so a short race gets\n"
          "                    fewer or none, with a warning (default 0)\n"
          "  --skew F          fraction 0..1 of riders whose device clock is "
          "off,\n"
          "                    some beyond race.max_future_skew_s (default "
          "0)\n"
          "  --start-ms MS     device time of second 0, ms since the epoch\n"
          "                    (default: now)\n"
          "  --realtime        put second s at s seconds after the start\n"
          "  --stream NAME     put to this Kinesis stream (kinesis.endpoint)\n"
          "  --out FILE        write the recording format ('-' = standard "
          "output)\n"
          "  --shards N        shards of the --out file, 1..64 (default 1)\n"
          "  --config FILE, --set KEY=VALUE   as for podium run\n",
          out);
}

static int parse_int(const char *name, const char *text, int64_t lo, int64_t hi,
                     int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr,
                "podium simulate: invalid value for --%s: \"%s\" (expected "
                "an integer from %" PRId64 " to %" PRId64 ")\n",
                name, text, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_fraction(const char *name, const char *text, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno != 0 || end == text || *end != '\0' || !(v >= 0 && v <= 1)) {
        fprintf(stderr,
                "podium simulate: invalid value for --%s: \"%s\" (expected "
                "a fraction from 0 to 1)\n",
                name, text);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_sim_option(int opt, const char *arg, struct sim_options *o,
                            struct common_opts *common)
{
    int64_t v;
    switch (opt) {
    case 'r':
        return parse_int("racers", arg, 1, SIM_MAX_RACERS, &o->racers);
    case 'S':
        return parse_int("seconds", arg, 1, SIM_MAX_SECONDS, &o->seconds);
    case 'C':
        return parse_int("classes", arg, 1, SIM_MAX_CLASSES, &o->classes);
    case 'e':
        if (parse_int("seed", arg, 0, INT64_MAX, &v) != 0)
            return -1;
        o->seed = (uint64_t)v;
        return 0;
    case 'd':
        return parse_fraction("duplicates", arg, &o->duplicates);
    case 'm':
        return parse_fraction("malformed", arg, &o->malformed);
    case 'L':
        return parse_fraction("late", arg, &o->late);
    case 'k':
        return parse_fraction("skew", arg, &o->skew);
    case 'H':
        return parse_int("shards", arg, 1, SIM_MAX_SHARDS, &o->shards);
    case 't':
        return parse_int("start-ms", arg, 0, 253402300799999, &o->start_ms);
    case 'R':
        o->realtime = true;
        return 0;
    case 'o':
        o->out_file = arg;
        return 0;
    case 'n':
        o->stream = arg;
        return 0;
    case 'c':
        common->config_file = arg;
        return 0;
    case 's':
        return common_opts_add_set(common, arg);
    }
    return -1;
}

static int parse_sim_args(int argc, char **argv, struct sim_options *o,
                          struct common_opts *common)
{
    static const struct option longopts[] = {
        {"racers", required_argument, NULL, 'r'},
        {"seconds", required_argument, NULL, 'S'},
        {"classes", required_argument, NULL, 'C'},
        {"seed", required_argument, NULL, 'e'},
        {"duplicates", required_argument, NULL, 'd'},
        {"malformed", required_argument, NULL, 'm'},
        {"late", required_argument, NULL, 'L'},
        {"skew", required_argument, NULL, 'k'},
        {"shards", required_argument, NULL, 'H'},
        {"start-ms", required_argument, NULL, 't'},
        {"realtime", no_argument, NULL, 'R'},
        {"out", required_argument, NULL, 'o'},
        {"stream", required_argument, NULL, 'n'},
        {"config", required_argument, NULL, 'c'},
        {"set", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        if (opt == 'h') {
            simulate_usage(stdout);
            return 1;
        }
        if (opt == '?' || parse_sim_option(opt, optarg, o, common) != 0)
            return -1;
    }
    if (optind < argc || (o->out_file == NULL) == (o->stream == NULL)) {
        fprintf(stderr, "podium simulate: give exactly one of --stream NAME "
                        "and --out FILE\n");
        return -1;
    }
    if (o->stream != NULL && o->shards != 1) {
        fprintf(stderr, "podium simulate: --shards applies to --out only; "
                        "the shards of a stream are set when it is "
                        "created\n");
        return -1;
    }
    return 0;
}

/* Print what was generated as one JSON line: on standard output, or on
 * standard error when the records themselves go to standard output. */
static void print_summary(const struct sim_state *st)
{
    FILE *out = st->opts.out_file != NULL && strcmp(st->opts.out_file, "-") == 0
                    ? stderr
                    : stdout;
    fprintf(out, "{\"records\":%" PRIu64 ",\"duplicates\":%" PRIu64,
            st->records, st->duplicates);
    fprintf(out, ",\"malformed\":{");
    for (int i = 0; i < SIM_MALFORMED_KINDS; i++)
        fprintf(out, "%s\"%s\":%" PRIu64, i > 0 ? "," : "", malformed_names[i],
                st->malformed[i]);
    fprintf(out,
            "},\"late\":%" PRIu64 ",\"skewed_riders\":%" PRIu64
            ",\"skewed_beyond_limit\":%" PRIu64,
            st->late, st->skewed_riders, st->skewed_beyond_limit);
    fprintf(out,
            ",\"racers\":%" PRId64 ",\"seconds\":%" PRId64
            ",\"start_ms\":%" PRId64 ",\"races\":[",
            st->opts.racers, st->opts.seconds, st->opts.start_ms);
    for (int64_t c = 1; c <= st->opts.classes && c <= st->opts.racers; c++)
        fprintf(out, "%s%" PRId64, c > 1 ? "," : "",
                st->opts.start_ms / 300000 * 1000 + c);
    fprintf(out, "]}\n");
}

int cmd_simulate(int argc, char **argv)
{
    struct sim_state *st = calloc(1, sizeof *st);
    struct common_opts common = {0};
    struct podium_config cfg;
    int rc;

    if (st == NULL)
        return 1;
    st->opts = (struct sim_options){
        .racers = 1000,
        .seconds = 300,
        .classes = 6,
        .seed = 1,
        .shards = 1,
        .start_ms = log_now_ms() / 1000 * 1000,
    };
    rc = parse_sim_args(argc, argv, &st->opts, &common);
    if (rc != 0) {
        free(common.sets);
        free(st);
        return rc > 0 ? 0 : 2;
    }
    rc = load_config(&common, &cfg);
    free(common.sets);
    if (rc != 0) {
        free(st);
        return rc;
    }
    log_set_level((enum log_level)cfg.log_level);
    st->rng.state = st->opts.seed;
    st->fault_rng.state = st->opts.seed ^ 0x6a09e667f3bcc909ULL;
    st->late_delay_s = (int64_t)cfg.allowed_lateness_s + SIM_LATE_EXTRA_S;
    st->max_future_skew_s = cfg.max_future_skew_s;
    st->next_second = 1;
    st->riders = calloc((size_t)st->opts.racers, sizeof *st->riders);
    if (st->riders == NULL) {
        rc = 1;
        goto out;
    }
    for (int64_t i = 0; i < st->opts.racers; i++)
        make_rider(&st->rng, &st->opts, i, &st->riders[i]);
    skew_clocks(st);
    warn_fault_limits(st);

    rc = st->opts.out_file != NULL ? run_to_file(st) : run_to_stream(st, &cfg);
    if (rc == 0)
        print_summary(st);
out:
    for (size_t i = 0; i < st->retry_count; i++)
        free(st->retries[i].data);
    free(st->retries);
    for (size_t i = 0; i < st->held_count; i++)
        free(st->held[i].data);
    free(st->held);
    free(st->riders);
    free(st);
    cfg_free(&cfg);
    return rc;
}
