/*
 * Byte-for-byte determinism of what the pipeline publishes.
 *
 * A seeded generator writes three overlapping races with duplicates,
 * validation conflicts, sample conflicts, late records inside and outside
 * race.amend_window_s, quarantined records and invalid ones. The same
 * records, with the same ApproximateArrivalTimestamps, are then delivered
 * in several ways. They come in batches of 1 and of 10000, through 1 shard
 * and through 4 shards with seeded shard choices and batch boundaries, and
 * with the pipeline closed and reopened on the same store halfway. Every
 * delivery must publish the same messages per topic in the same order,
 * count every outcome and dead letter the same, and leave the same store.
 *
 * The records reach the pipeline through the real merge (daemon/merge.c).
 * Its reader is never started, so the merge knows no shard and releases all
 * it holds at once. The driver therefore plays the reader and the
 * watermark: it hands over one batch per shard at a time, and each such
 * window ends before the first record that a full batch of its shard could
 * not contain. So no record leaves before an earlier record of another
 * shard, which is what the watermark of merge.c ensures.
 *
 * A second run gives every record the end of its 2.5 s slot as its
 * arrival time, as a producer that sends 2.5 s of records in one
 * PutRecords call would see. Each such group mixes several seconds of a
 * race, so the order inside a group decides what is late. The driver never
 * splits a group between two jobs, as merge.c ensures, and the pipeline
 * must apply each group the same way however the shards interleave it.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>
#include <uv.h>

#include "common/aws.h"
#include "common/httpc.h"
#include "common/log.h"
#include "common/strbuf.h"
#include "daemon/daemon.h"
#include "store/idempotency.h"
#include "tests/testlib.h"

/* 2026-01-01T00:00:00Z: device time of second 0 of the first race. */
#define BASE_MS 1767225600000

/* The settings of every delivery; the late policy comes on top. */
static const char *const base_settings[] = {
    "race.allowed_lateness_s=2", "race.idle_close_s=5",
    "race.max_future_skew_s=30", "race.max_second_jump=8",
    "race.amend_window_s=10",    "leaderboard.top_n=6",
};
#define COUNT_OF_SETTINGS (sizeof base_settings / sizeof base_settings[0])
#define AMEND_WINDOW_S    10
#define MAX_FUTURE_SKEW_S 30
#define MAX_SECOND_JUMP   8

/* ---- seeded randomness (splitmix64) --------------------------------- */

static uint64_t prng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in 0..n-1. */
static int64_t prng_below(uint64_t *state, int64_t n)
{
    return (int64_t)(prng_next(state) % (uint64_t)n);
}

/* ---- the generated races -------------------------------------------- */

static const struct gen_race {
    const char *id; /* as JSON */
    int offset_s;   /* device time of second 0, after BASE_MS */
    int seconds;
    bool final; /* every rider sends event "final" at the last second */
} gen_races[] = {
    {"5988085001", 0, 30, true},
    {"\"R-b\"", 7, 30, true},
    {"5988085003", 15, 24, false},
};
#define RACE_COUNT     3
#define RIDERS_IN_RACE 12

/* Riders 9 and 10 tie in race 0: as numbers 9 comes first, as text "10".
 * Race r takes the RIDERS_IN_RACE ids from position 4 r on, so riders
 * ride in up to three races and their class boards compare races. */
static const char *const rider_ids[] = {
    "9",   "10",  "\"rc-1\"", "\"rc-2\"", "101", "102", "\"rc-3\"", "\"rc-4\"",
    "103", "104", "\"rc-5\"", "\"rc-6\"", "105", "106", "\"rc-7\"", "\"rc-8\"",
    "107", "108", "\"rc-9\"", "\"rc-0\"",
};
#define RIDER_COUNT (int)(sizeof rider_ids / sizeof rider_ids[0])
#define TIE_RIDER_A 0 /* rider_ids[0] "9" */
#define TIE_RIDER_B 1 /* rider_ids[1] "10" */
#define ZERO_RIDER  7 /* sends cadence 0 and resistance 0 */
#define MOVER_RIDER 6 /* moves to class "C" from second 20 of race 1 */

static const char *const class_ids[] = {"1", "2", "\"C\""};
#define CLASS_COUNT 3

/* What a generated record is, for the expected counts. */
enum gen_kind {
    GEN_ON_TIME,
    GEN_DUPLICATE,
    GEN_LATE,       /* inside the amend window */
    GEN_TOO_LATE,   /* past the amend window */
    GEN_VALIDATION, /* a known uuid with other contents */
    GEN_KEPT,       /* sample conflict, the stored sample wins */
    GEN_REPLACED,   /* sample conflict, this record wins */
    GEN_SKEW,
    GEN_JUMP,
    GEN_NOT_JSON,
    GEN_SECOND_RANGE,
    GEN_KIND_COUNT
};

struct gen_record {
    int64_t arrival_ms;
    enum gen_kind kind;
    size_t order; /* creation order, to keep sorting stable */
    char data[512];
};

struct gen_set {
    struct gen_record *items;
    size_t count;
    size_t cap;
    size_t kinds[GEN_KIND_COUNT];
};

/* One sample of a rider as the generator plans it. */
struct gen_sample {
    int race;
    int rider; /* index into rider_ids */
    int second;
    int64_t device_ts_ms;
    int64_t arrival_ms;
    char uuid[48];
    char cadence[16];
    char resistance[16];
    const char *class_id;
    const char *event;
};

static void gen_push(struct gen_set *set, enum gen_kind kind,
                     int64_t arrival_ms, const char *data)
{
    if (set->count == set->cap) {
        set->cap = set->cap ? set->cap * 2 : 1024;
        set->items = realloc(set->items, set->cap * sizeof *set->items);
        ASSERT_TRUE(set->items != NULL);
    }
    struct gen_record *r = &set->items[set->count];
    r->arrival_ms = arrival_ms;
    r->kind = kind;
    r->order = set->count;
    ASSERT_TRUE(strlen(data) < sizeof r->data);
    memcpy(r->data, data, strlen(data) + 1);
    set->count++;
    set->kinds[kind]++;
}

static void gen_json(const struct gen_sample *s, char *buf, size_t len)
{
    int n = snprintf(
        buf, len,
        "{\"uuid\":\"%s\",\"event\":\"%s\",\"deviceTimestamp\":%" PRId64
        ",\"second\":%d,\"raceId\":%s,\"name\":\"N%d\",\"racerId\":%s,"
        "\"classId\":%s,\"cadence\":%s,\"resistance\":%s}",
        s->uuid, s->event, s->device_ts_ms, s->second, gen_races[s->race].id,
        s->rider, rider_ids[s->rider], s->class_id, s->cadence, s->resistance);
    ASSERT_TRUE(n > 0);
    ASSERT_TRUE((size_t)n < len);
}

static void gen_add(struct gen_set *set, enum gen_kind kind,
                    const struct gen_sample *s)
{
    char buf[512];
    gen_json(s, buf, sizeof buf);
    gen_push(set, kind, s->arrival_ms, buf);
}

static int64_t second_start_ms(int race, int second)
{
    return BASE_MS + (int64_t)(gen_races[race].offset_s + second) * 1000;
}

/* Values of one sample: riders 9 and 10 the same high ones every second,
 * ZERO_RIDER zeros, the others random with up to two decimals. */
static void gen_values(uint64_t *prng, int race, int rider, int second,
                       struct gen_sample *s)
{
    if (rider == TIE_RIDER_A || rider == TIE_RIDER_B) {
        snprintf(s->cadence, sizeof s->cadence, "%d.%02d",
                 100 + (race + second) % 7, (second * 37) % 100);
        snprintf(s->resistance, sizeof s->resistance, "7%d.%d", second % 10,
                 (second * 3) % 10);
    } else if (rider == ZERO_RIDER) {
        snprintf(s->cadence, sizeof s->cadence, "0");
        snprintf(s->resistance, sizeof s->resistance, "0");
    } else {
        snprintf(s->cadence, sizeof s->cadence, "%d.%02d",
                 (int)prng_below(prng, 100), (int)prng_below(prng, 100));
        snprintf(s->resistance, sizeof s->resistance, "%d.%d",
                 (int)prng_below(prng, 70), (int)prng_below(prng, 10));
    }
}

static bool is_tie_rider(int rider)
{
    return rider == TIE_RIDER_A || rider == TIE_RIDER_B;
}

/*
 * Emit one planned sample, late, too late or on time, and maybe a record
 * that repeats or contradicts it. A set gets 6 late samples here and 1
 * more after its race closed idle, plus 3 too late, 3 validation conflicts
 * and 2 kept and 2 replaced sample conflicts. About 3 % of the on-time
 * samples are sent twice.
 */
static void gen_special(struct gen_set *set, uint64_t *prng,
                        struct gen_sample *s, int *late_left,
                        int *too_late_left, int *validation_left,
                        int *conflict_left)
{
    const struct gen_race *race = &gen_races[s->race];
    bool last = s->second == race->seconds;
    char buf[512];

    /* A sample delivered 4 to 8 s late: its second is published by then
     * (allowed lateness 2 s), and the race is still within the window. */
    if (*late_left > 0 && !is_tie_rider(s->rider) && s->second >= 5 &&
        s->second <= race->seconds - 5 && prng_below(prng, 100) < 4) {
        (*late_left)--;
        s->arrival_ms += 4000 + prng_below(prng, 4000);
        gen_add(set, GEN_LATE, s);
        return;
    }
    /* A sample delivered 15.5 to 16 s late, when its race is more than
     * race.amend_window_s (10 s) past its second. */
    if (*too_late_left > 0 && !is_tie_rider(s->rider) && s->second >= 3 &&
        s->second <= race->seconds - 16 && prng_below(prng, 100) < 4) {
        (*too_late_left)--;
        s->arrival_ms += 15500 + prng_below(prng, 500);
        gen_add(set, GEN_TOO_LATE, s);
        return;
    }

    gen_add(set, GEN_ON_TIME, s);
    if (last || is_tie_rider(s->rider))
        return;

    if (*validation_left > 0 && prng_below(prng, 100) < 2) {
        struct gen_sample copy = *s;
        (*validation_left)--;
        snprintf(copy.cadence, sizeof copy.cadence, "%d",
                 100 + (int)prng_below(prng, 20));
        copy.arrival_ms += 1000 + prng_below(prng, 1500);
        gen_add(set, GEN_VALIDATION, &copy);
    } else if (*conflict_left > 0 && prng_below(prng, 100) < 2) {
        /* Other values under another uuid, 100 to 400 ms later, so before
         * the second closes. The smaller deviceTimestamp wins. */
        struct gen_sample other = *s;
        bool wins = *conflict_left % 2 == 0;
        (*conflict_left)--;
        snprintf(other.uuid, sizeof other.uuid, "u-%d-%d-%d-c", s->race,
                 s->rider, s->second);
        snprintf(other.cadence, sizeof other.cadence, "%d.5",
                 100 + (int)prng_below(prng, 20));
        other.device_ts_ms += wins ? -50 : 50;
        other.arrival_ms += 100 + prng_below(prng, 300);
        gen_add(set, wins ? GEN_REPLACED : GEN_KEPT, &other);
    } else if (prng_below(prng, 100) < 3) {
        gen_json(s, buf, sizeof buf);
        gen_push(set, GEN_DUPLICATE,
                 s->arrival_ms + 300 + prng_below(prng, 2700), buf);
    }
}

/* Records that never become samples: 2 quarantined for skew, 2 for a
 * jump, 2 that are not JSON and 1 with second 0. */
static void gen_rejects(struct gen_set *set, uint64_t *prng)
{
    for (int i = 0; i < 2; i++) {
        /* deviceTimestamp 50 s after the arrival, skew limit 30 s. */
        struct gen_sample s = {.race = 1, .rider = 5 + i, .second = 10 + i};
        s.arrival_ms = second_start_ms(1, s.second) + 300;
        s.device_ts_ms =
            s.arrival_ms + (MAX_FUTURE_SKEW_S + 20) * (int64_t)1000;
        snprintf(s.uuid, sizeof s.uuid, "u-skew-%d", i);
        s.class_id = class_ids[0];
        s.event = "update";
        gen_values(prng, 1, s.rider, s.second, &s);
        gen_add(set, GEN_SKEW, &s);
    }
    for (int i = 0; i < 2; i++) {
        /* Second 20 past its neighbours, the jump limit is 8. */
        int at = 6 + 5 * i;
        struct gen_sample s = {.race = 2, .rider = 12 + i, .second = at + 20};
        s.arrival_ms = second_start_ms(2, at) + 400;
        s.device_ts_ms = second_start_ms(2, at) + 100;
        snprintf(s.uuid, sizeof s.uuid, "u-jump-%d", i);
        s.class_id = class_ids[1];
        s.event = "update";
        gen_values(prng, 2, s.rider, s.second, &s);
        gen_add(set, GEN_JUMP, &s);
    }
    gen_push(set, GEN_NOT_JSON, second_start_ms(0, 4) + 500, "not json");
    gen_push(set, GEN_NOT_JSON, second_start_ms(1, 12) + 500, "{\"uuid\":");
    struct gen_sample zero = {.race = 0, .rider = 4, .second = 0};
    zero.arrival_ms = second_start_ms(0, 8) + 500;
    zero.device_ts_ms = second_start_ms(0, 8);
    snprintf(zero.uuid, sizeof zero.uuid, "u-second-0");
    zero.class_id = class_ids[0];
    zero.event = "update";
    gen_values(prng, 0, zero.rider, 1, &zero);
    gen_add(set, GEN_SECOND_RANGE, &zero);
}

static int gen_cmp(const void *pa, const void *pb)
{
    const struct gen_record *a = pa, *b = pb;
    if (a->arrival_ms != b->arrival_ms)
        return a->arrival_ms < b->arrival_ms ? -1 : 1;
    return a->order < b->order ? -1 : a->order > b->order;
}

/*
 * The records of every race in arrival order. With group_ms 0 arrival
 * times are unique; otherwise each is moved to the end of its group_ms
 * slot, so many records share one.
 */
static struct gen_set *gen_races_new(uint64_t seed, int64_t group_ms)
{
    struct gen_set *set = calloc(1, sizeof *set);
    uint64_t prng = seed;
    int late_left = 6, too_late_left = 3, validation_left = 3;
    int conflict_left = 4;
    struct gen_sample after_close = {0};
    ASSERT_TRUE(set != NULL);

    for (int race = 0; race < RACE_COUNT; race++) {
        const struct gen_race *r = &gen_races[race];
        int start[RIDERS_IN_RACE];
        for (int j = 0; j < RIDERS_IN_RACE; j++) {
            int rider = (4 * race + j) % RIDER_COUNT;
            start[j] = is_tie_rider(rider) ? 1 : 1 + (int)prng_below(&prng, 4);
        }
        for (int second = 1; second <= r->seconds; second++) {
            for (int j = 0; j < RIDERS_IN_RACE; j++) {
                int rider = (4 * race + j) % RIDER_COUNT;
                bool last = second == r->seconds;
                bool late_after_close = race == 0 && second == 26 && j == 5;
                if (second < start[j] ||
                    (!last && !late_after_close && !is_tie_rider(rider) &&
                     prng_below(&prng, 100) < 10))
                    continue;

                struct gen_sample s = {.race = race, .rider = rider};
                s.second = second;
                s.device_ts_ms =
                    second_start_ms(race, second) + prng_below(&prng, 200);
                s.arrival_ms = s.device_ts_ms + 150 + prng_below(&prng, 600);
                snprintf(s.uuid, sizeof s.uuid, "u-%d-%d-%d", race, rider,
                         second);
                s.class_id = class_ids[rider % CLASS_COUNT];
                if (race == 1 && rider == MOVER_RIDER && second >= 20)
                    s.class_id = class_ids[2];
                s.event = last && r->final ? "final" : "update";
                gen_values(&prng, race, rider, second, &s);

                /* Race 0 closes idle about 5 s after its last second. This
                 * sample of second 26 comes 9 s after that second, so the
                 * race is 4 s past it, inside the window. */
                if (late_after_close) {
                    after_close = s;
                    after_close.arrival_ms =
                        second_start_ms(0, r->seconds) + 9000;
                    gen_add(set, GEN_LATE, &after_close);
                    continue;
                }
                gen_special(set, &prng, &s, &late_left, &too_late_left,
                            &validation_left, &conflict_left);
            }
        }
    }
    gen_rejects(set, &prng);
    ASSERT_EQ(late_left, 0);
    ASSERT_EQ(too_late_left, 0);
    ASSERT_EQ(validation_left, 0);
    ASSERT_EQ(conflict_left, 0);
    ASSERT_TRUE(after_close.uuid[0] != '\0');

    qsort(set->items, set->count, sizeof set->items[0], gen_cmp);
    for (size_t i = 0; group_ms > 0 && i < set->count; i++) {
        int64_t t = set->items[i].arrival_ms;
        set->items[i].arrival_ms = (t + group_ms - 1) / group_ms * group_ms;
    }
    for (size_t i = 1; group_ms == 0 && i < set->count; i++) {
        if (set->items[i].arrival_ms <= set->items[i - 1].arrival_ms)
            set->items[i].arrival_ms = set->items[i - 1].arrival_ms + 1;
    }
    return set;
}

/*
 * Count the groups of one arrival time that contain two samples of one
 * race at least allowed_lateness_s (2) seconds apart, so the later one
 * applied first would close the earlier one's second.
 */
static size_t order_sensitive_groups(const struct gen_set *set)
{
    size_t groups = 0;
    for (size_t first = 0, end; first < set->count; first = end) {
        int low[RACE_COUNT], high[RACE_COUNT];
        bool found = false;
        for (int race = 0; race < RACE_COUNT; race++) {
            low[race] = INT32_MAX;
            high[race] = INT32_MIN;
        }
        for (end = first; end < set->count && set->items[end].arrival_ms ==
                                                  set->items[first].arrival_ms;
             end++) {
            int race, second;
            if (sscanf(set->items[end].data, "{\"uuid\":\"u-%d-%*d-%d", &race,
                       &second) != 2 ||
                race < 0 || race >= RACE_COUNT)
                continue;
            if (second < low[race])
                low[race] = second;
            if (second > high[race])
                high[race] = second;
            found = found || high[race] - low[race] >= 2;
        }
        groups += found;
    }
    return groups;
}

static void gen_set_free(struct gen_set *set)
{
    free(set->items);
    free(set);
}

/* ---- the pipeline, the merge and an unstarted reader ----------------- */

struct message {
    char *topic;
    char *payload;
};

/* What one delivery published and counted, over all its restarts. */
struct outcome {
    struct message *msgs;
    size_t msg_count;
    size_t msg_cap;
    uint64_t records_read;
    uint64_t records_applied;
    uint64_t duplicates;
    uint64_t validation_conflicts;
    uint64_t rejected[AGG_REJECT_COUNT];
    uint64_t outcomes[AGG_OUTCOME_COUNT];
    uint64_t messages_built;
    uint64_t messages_invalid;
    uint64_t jobs; /* committed jobs, which differ between deliveries */
    char fatal[512];
};

struct harness {
    uv_loop_t loop;
    struct podium_config cfg;
    struct store *store;
    struct pipeline *pl;
    struct httpc *http;
    struct aws_endpoint endpoint;
    struct aws_credentials creds;
    struct reader *reader;
    struct merge *merge;
    struct outcome *out;
};

static void on_committed(void *arg, const char *shard_id)
{
    (void)arg;
    (void)shard_id;
}

static void on_message(void *arg, int64_t id, const char *topic,
                       const char *payload, size_t len)
{
    struct outcome *out = ((struct harness *)arg)->out;
    (void)id;
    if (out->msg_count == out->msg_cap) {
        out->msg_cap = out->msg_cap ? out->msg_cap * 2 : 256;
        out->msgs = realloc(out->msgs, out->msg_cap * sizeof *out->msgs);
        ASSERT_TRUE(out->msgs != NULL);
    }
    out->msgs[out->msg_count].topic = strdup(topic);
    out->msgs[out->msg_count].payload = strndup(payload, len);
    out->msg_count++;
}

static void on_fatal(void *arg, const char *message)
{
    struct outcome *out = ((struct harness *)arg)->out;
    snprintf(out->fatal, sizeof out->fatal, "%s", message);
}

static void on_batch_unused(void *arg, struct shard_batch *batch)
{
    (void)arg;
    shard_batch_free(batch);
}

static void harness_open(struct harness *h, const char *db,
                         const char *late_policy, struct outcome *out)
{
    const char *sets[COUNT_OF_SETTINGS + 1];
    struct pipeline_hooks hooks = {h, on_committed, on_message, on_fatal, NULL};
    char err[512];
    char *env[] = {NULL};

    memset(h, 0, sizeof *h);
    h->out = out;
    memcpy(sets, base_settings, sizeof base_settings);
    sets[COUNT_OF_SETTINGS] = late_policy;
    ASSERT_EQ(uv_loop_init(&h->loop), 0);
    if (cfg_load(&h->cfg, NULL, false, env, sets, COUNT_OF_SETTINGS + 1, err,
                 sizeof err) != 0)
        test_fail(__FILE__, __LINE__, "config: %s", err);
    if (store_open(db, &h->store, err, sizeof err) != 0)
        test_fail(__FILE__, __LINE__, "store: %s", err);
    struct idem_options opts = {h->cfg.idempotency_expiry_s,
                                h->cfg.idempotency_in_progress_timeout_ms,
                                (size_t)h->cfg.idempotency_cache_size};
    static const uint8_t owner[IDEM_OWNER_LEN] = {'d', 'e', 't'};
    if (store_open_idempotency(h->store, &opts, owner, err, sizeof err))
        test_fail(__FILE__, __LINE__, "idempotency: %s", err);
    h->pl = pipeline_new(&h->loop, h->store, &h->cfg, &hooks);
    ASSERT_TRUE(h->pl != NULL);
    ASSERT_EQ(pipeline_restore(h->pl), 0);

    /* The reader is never started and sends nothing: port 9 is only
     * there because the reader needs an endpoint. */
    struct reader_callbacks cbs = {h, on_batch_unused, NULL, NULL};
    ASSERT_EQ(httpc_new(&h->loop, &h->http), 0);
    ASSERT_EQ(aws_endpoint_init(&h->endpoint, "http://127.0.0.1:9", "us-east-1",
                                "kinesis", err, sizeof err),
              0);
    h->creds.access_key_id = strdup("AKIDEXAMPLE");
    h->creds.secret_access_key = strdup("SECRETEXAMPLE");
    struct reader_config rc = {
        .stream_name = "determinism",
        .endpoint = &h->endpoint,
        .credentials = &h->creds,
        .initial_position = READER_TRIM_HORIZON,
        .poll_interval_ms = 200,
        .request_timeout_ms = 1000,
        .max_records = 10000,
        .shard_sync_interval_s = 60,
    };
    h->reader = reader_new(&h->loop, h->http, &rc, &cbs);
    ASSERT_TRUE(h->reader != NULL);
    ASSERT_EQ(reader_shard_count(h->reader), 0);
    h->merge = merge_new(h->pl, INT64_MAX / 2);
    ASSERT_TRUE(h->merge != NULL);
}

static void add_counters(struct outcome *out, const struct pipeline_counters *c)
{
    out->records_read += c->records_read;
    out->records_applied += c->records_applied;
    out->duplicates += c->duplicates;
    out->validation_conflicts += c->validation_conflicts;
    for (size_t i = 0; i < AGG_REJECT_COUNT; i++)
        out->rejected[i] += c->rejected[i];
    for (size_t i = 0; i < AGG_OUTCOME_COUNT; i++)
        out->outcomes[i] += c->outcomes[i];
    out->messages_built += c->messages_built;
    out->messages_invalid += c->messages_invalid;
    out->jobs += c->batches_committed;
}

/* Close everything; the counters of this run go into out. */
static void harness_close(struct harness *h)
{
    ASSERT_EQ(merge_pending(h->merge), 0);
    add_counters(h->out, pipeline_counters(h->pl));
    merge_free(h->merge);
    reader_free(h->reader);
    httpc_close(h->http, NULL, NULL);
    ASSERT_EQ(uv_run(&h->loop, UV_RUN_DEFAULT), 0);
    pipeline_free(h->pl);
    store_close(h->store);
    cfg_free(&h->cfg);
    ASSERT_EQ(uv_loop_close(&h->loop), 0);
    aws_endpoint_clear(&h->endpoint);
    aws_credentials_clear(&h->creds);
}

/* Run the loop until every queued job committed. */
static void drain(struct harness *h)
{
    while (!pipeline_idle(h->pl))
        uv_run(&h->loop, UV_RUN_ONCE);
    ASSERT_STR_EQ(h->out->fatal, "");
}

/* ---- deliveries ------------------------------------------------------ */

struct delivery {
    const char *name;
    int shards;      /* 1 or 4 */
    int max_records; /* records per batch of one shard */
    uint64_t seed;   /* shard of each record and window lengths; 0 puts
                        everything into one window */
    bool restart;    /* close and reopen the pipeline halfway */
};

static const struct delivery deliveries[] = {
    {"one shard, batches of 1", 1, 1, 11, false},
    {"one shard, one batch of 10000", 1, 10000, 0, false},
    {"four shards, batches of 10000", 4, 10000, 21, false},
    {"four shards, batches of 3", 4, 3, 22, false},
    {"four shards, batches of 50, restart", 4, 50, 23, true},
    {"one shard, batches of 7, restart", 1, 7, 24, true},
};
#define DELIVERY_COUNT (sizeof deliveries / sizeof deliveries[0])

static const char *shard_name(int shard)
{
    static const char *const names[] = {
        "shardId-000000000000", "shardId-000000000001", "shardId-000000000002",
        "shardId-000000000003"};
    return names[shard];
}

/*
 * Hand the records first..end-1 to the merge, one batch per shard, and
 * release them as one job.
 */
static void deliver_window(struct harness *h, const struct gen_set *set,
                           const int *shard_of, uint64_t *next_seq,
                           size_t first, size_t end, int shards)
{
    struct shard_batch *batches[4] = {NULL};
    char seq[64];

    for (size_t i = first; i < end; i++) {
        int shard = shard_of[i];
        const struct gen_record *r = &set->items[i];
        if (batches[shard] == NULL)
            batches[shard] = shard_batch_new(shard_name(shard));
        ASSERT_TRUE(batches[shard] != NULL);
        snprintf(seq, sizeof seq, "49%054" PRIu64, ++next_seq[shard]);
        ASSERT_EQ(shard_batch_add(batches[shard], r->data, strlen(r->data), seq,
                                  0, r->arrival_ms, "pk"),
                  0);
    }
    for (int shard = 0; shard < shards; shard++) {
        if (batches[shard] != NULL)
            merge_add(h->merge, batches[shard], 0);
    }
    merge_release(h->merge, h->reader, 0);
    ASSERT_EQ(merge_pending(h->merge), 0);
    drain(h);
}

/*
 * Where the next window ends: at most span_ms of arrival time after its
 * first record, and before the first record that would put more than
 * max_records into the batch of its shard. A window never ends inside a
 * group of one arrival time: it ends before the group or, when the group
 * starts the window, after it, as the merge hands a group over whole.
 */
static size_t window_end(const struct gen_set *set, const int *shard_of,
                         size_t first, int64_t span_ms, int max_records)
{
    int in_batch[4] = {0};
    size_t i = first;

    while (i < set->count &&
           set->items[i].arrival_ms - set->items[first].arrival_ms < span_ms &&
           in_batch[shard_of[i]] < max_records)
        in_batch[shard_of[i++]]++;
    while (i > first && i < set->count &&
           set->items[i].arrival_ms == set->items[i - 1].arrival_ms)
        i--;
    if (i == first) {
        while (i < set->count &&
               set->items[i].arrival_ms == set->items[first].arrival_ms)
            i++;
    }
    return i;
}

static void deliver(const struct delivery *d, const struct gen_set *set,
                    const char *late_policy, const char *db,
                    struct outcome *out)
{
    struct harness h;
    uint64_t prng = d->seed, next_seq[4] = {0};
    int *shard_of = calloc(set->count, sizeof *shard_of);
    bool restarted = false;
    ASSERT_TRUE(shard_of != NULL);
    ASSERT_TRUE(d->shards >= 1 && d->shards <= 4);

    for (size_t i = 0; i < set->count; i++)
        shard_of[i] = d->shards == 1 ? 0 : (int)prng_below(&prng, d->shards);

    harness_open(&h, db, late_policy, out);
    for (size_t first = 0; first < set->count;) {
        int64_t span_ms =
            d->seed == 0 ? INT64_MAX : 1 + prng_below(&prng, 4000);
        size_t end = window_end(set, shard_of, first, span_ms, d->max_records);
        deliver_window(&h, set, shard_of, next_seq, first, end, d->shards);
        first = end;
        if (d->restart && !restarted && first >= set->count / 2) {
            harness_close(&h);
            harness_open(&h, db, late_policy, out);
            restarted = true;
        }
    }
    /* A minute after the last record every race has closed idle. */
    pipeline_submit_tick(h.pl, set->items[set->count - 1].arrival_ms + 60000);
    drain(&h);
    ASSERT_TRUE(!d->restart || restarted);
    harness_close(&h);
    free(shard_of);
}

static void outcome_free(struct outcome *out)
{
    for (size_t i = 0; i < out->msg_count; i++) {
        free(out->msgs[i].topic);
        free(out->msgs[i].payload);
    }
    free(out->msgs);
}

/* ---- what a delivery left in the store ------------------------------- */

static int dump_sample(void *arg, const struct store_sample *s)
{
    FILE *out = arg;
    fprintf(out, "sample %s %s %" PRId32 " %s ", s->race_id, s->racer_id,
            s->second, s->class_id);
    fwrite(s->name, 1, s->name_len, out);
    fputc(' ', out);
    fwrite(s->uuid, 1, s->uuid_len, out);
    fprintf(out,
            " %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64
            " %s %s %d\n",
            s->device_ts_ms, s->arrival_ms, s->cadence4, s->resistance4,
            s->output4, s->cadence_exact, s->resistance_exact, (int)s->final);
    return 0;
}

static int dump_state(void *arg, const char *key, const char *value, size_t len)
{
    FILE *out = arg;
    fprintf(out, "state %s %.*s\n", key, (int)len, value);
    return 0;
}

static int dump_history(void *arg, const struct store_history_row *row)
{
    FILE *out = arg;
    fprintf(out, "history %s %s %" PRId32 " %" PRId64 " %s\n", row->class_id,
            row->racer_id, row->second, row->output4, row->race_id);
    return 0;
}

static int dump_last_message(void *arg, int32_t revision, const char *payload,
                             size_t len)
{
    FILE *out = arg;
    fprintf(out, "last %" PRId32 " %.*s\n", revision, (int)len, payload);
    return 0;
}

static int dump_outbox(void *arg, int64_t id, const char *topic,
                       const void *payload, size_t len)
{
    FILE *out = arg;
    (void)id;
    fprintf(out, "outbox %s %.*s\n", topic, (int)len, (const char *)payload);
    return 0;
}

/* Shard ids and sequence numbers depend on the delivery, so a dead letter
 * is compared by its reason, arrival time and bytes. */
static int dump_dead_letter(void *arg, int64_t id,
                            const struct store_dead_letter *d)
{
    FILE *out = arg;
    (void)id;
    fprintf(out, "dead_letter %s %" PRId64 " %.*s\n", d->reason, d->arrival_ms,
            (int)d->data_len, (const char *)d->data);
    return 0;
}

/* The idempotency rows without the shard, sequence number and owner. */
static void dump_idempotency(const char *db, FILE *out)
{
    sqlite3 *conn = NULL;
    sqlite3_stmt *stmt = NULL;
    ASSERT_EQ(sqlite3_open_v2(db, &conn, SQLITE_OPEN_READONLY, NULL),
              SQLITE_OK);
    ASSERT_EQ(sqlite3_prepare_v2(conn,
                                 "SELECT key, status, expiry_s, hex(hash),"
                                 " outcome FROM idem_rows ORDER BY id",
                                 -1, &stmt, NULL),
              SQLITE_OK);
    while (sqlite3_step(stmt) == SQLITE_ROW) {
        fprintf(out, "idempotency %.*s %d %" PRId64 " %s %s\n",
                sqlite3_column_bytes(stmt, 0),
                (const char *)sqlite3_column_blob(stmt, 0),
                sqlite3_column_int(stmt, 1),
                (int64_t)sqlite3_column_int64(stmt, 2),
                (const char *)sqlite3_column_text(stmt, 3),
                (const char *)sqlite3_column_text(stmt, 4));
    }
    sqlite3_finalize(stmt);
    sqlite3_close(conn);
}

/*
 * Everything a restart rebuilds from, the outbox, the dead letters and the
 * idempotency outcomes, as text. Checkpoints are left out: they name the
 * shards. Returns a malloc'ed string.
 */
static char *dump_store(const char *db)
{
    static const char *const races[] = {"5988085001", "\"R-b\"", "5988085003"};
    struct store *st;
    char err[512], stream_time[32] = "";
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    ASSERT_TRUE(out != NULL);

    if (store_open(db, &st, err, sizeof err) != 0)
        test_fail(__FILE__, __LINE__, "store: %s", err);
    ASSERT_EQ(store_samples_load(st, dump_sample, out), 0);
    ASSERT_EQ(store_state_load(st, "race", dump_state, out), 0);
    ASSERT_EQ(store_state_load(st, "class", dump_state, out), 0);
    for (size_t i = 0; i < CLASS_COUNT; i++) {
        ASSERT_EQ(
            store_history_load(st, class_ids[i], NULL, 0, dump_history, out),
            0);
        ASSERT_TRUE(store_last_message_get(st, "class-leaderboard",
                                           class_ids[i], dump_last_message,
                                           out) >= 0);
    }
    for (size_t i = 0; i < RACE_COUNT; i++)
        ASSERT_TRUE(store_last_message_get(st, "results", races[i],
                                           dump_last_message, out) >= 0);
    ASSERT_EQ(store_outbox_load(st, 0, 1000000, dump_outbox, out), 0);
    ASSERT_EQ(store_dead_letters_load(st, 0, 1000000, dump_dead_letter, out),
              0);
    ASSERT_EQ(
        store_meta_get(st, "stream_time_ms", stream_time, sizeof stream_time),
        1);
    fprintf(out, "stream_time_ms %s\n", stream_time);
    store_close(st);
    dump_idempotency(db, out);
    ASSERT_EQ(fclose(out), 0);
    return text;
}

/* ---- comparisons ----------------------------------------------------- */

static int topic_cmp(const void *pa, const void *pb)
{
    return strcmp(*(const char *const *)pa, *(const char *const *)pb);
}

/* The distinct topics of out, sorted, as a newline-joined string. */
static char *topic_list(const struct outcome *out)
{
    const char **topics = calloc(out->msg_count + 1, sizeof *topics);
    struct strbuf sb;
    ASSERT_TRUE(topics != NULL);
    for (size_t i = 0; i < out->msg_count; i++)
        topics[i] = out->msgs[i].topic;
    qsort(topics, out->msg_count, sizeof *topics, topic_cmp);
    sb_init(&sb, SIZE_MAX / 2);
    for (size_t i = 0; i < out->msg_count; i++) {
        if (i > 0 && strcmp(topics[i], topics[i - 1]) == 0)
            continue;
        sb_puts(&sb, topics[i]);
        sb_putc(&sb, '\n');
    }
    ASSERT_EQ(sb_error(&sb), 0);
    free(topics);
    char *text = strdup(sb.len ? sb.data : "");
    sb_free(&sb);
    return text;
}

/* The next message of out on topic from *at on, or NULL. */
static const char *next_on_topic(const struct outcome *out, const char *topic,
                                 size_t *at)
{
    for (; *at < out->msg_count; (*at)++) {
        if (strcmp(out->msgs[*at].topic, topic) == 0)
            return out->msgs[(*at)++].payload;
    }
    return NULL;
}

/* Fail unless got published the same payloads per topic, in the same
 * order, as want. Names the first message that differs. */
static void expect_same_topics(const struct outcome *want,
                               const struct outcome *got, const char *name)
{
    char *want_topics = topic_list(want);
    char *got_topics = topic_list(got);
    if (strcmp(want_topics, got_topics) != 0)
        test_fail(__FILE__, __LINE__,
                  "%s: other topics than the reference:\n%s\nreference:\n%s",
                  name, got_topics, want_topics);

    for (char *topic = strtok(want_topics, "\n"); topic != NULL;
         topic = strtok(NULL, "\n")) {
        size_t at_want = 0, at_got = 0;
        for (int index = 0;; index++) {
            const char *w = next_on_topic(want, topic, &at_want);
            const char *g = next_on_topic(got, topic, &at_got);
            if (w == NULL && g == NULL)
                break;
            if (w == NULL || g == NULL || strcmp(w, g) != 0)
                test_fail(__FILE__, __LINE__,
                          "%s: message %d on %s differs from the "
                          "reference:\n  got  %s\n  want %s",
                          name, index, topic, g ? g : "(none)",
                          w ? w : "(none)");
        }
    }
    free(want_topics);
    free(got_topics);
}

#define EXPECT_SAME_COUNTER(field)                                             \
    do {                                                                       \
        if (got->field != want->field)                                         \
            test_fail(__FILE__, __LINE__,                                      \
                      "%s: counter %s is %" PRIu64 ", reference %" PRIu64,     \
                      name, #field, (uint64_t)got->field,                      \
                      (uint64_t)want->field);                                  \
    } while (0)

static void expect_same_counters(const struct outcome *want,
                                 const struct outcome *got, const char *name)
{
    EXPECT_SAME_COUNTER(records_read);
    EXPECT_SAME_COUNTER(records_applied);
    EXPECT_SAME_COUNTER(duplicates);
    EXPECT_SAME_COUNTER(validation_conflicts);
    EXPECT_SAME_COUNTER(messages_built);
    EXPECT_SAME_COUNTER(messages_invalid);
    for (size_t i = 0; i < AGG_REJECT_COUNT; i++) {
        if (got->rejected[i] != want->rejected[i])
            test_fail(__FILE__, __LINE__,
                      "%s: %" PRIu64
                      " records rejected as %s, reference %" PRIu64,
                      name, got->rejected[i],
                      agg_reject_name((enum agg_reject)i), want->rejected[i]);
    }
    for (size_t i = 0; i < AGG_OUTCOME_COUNT; i++) {
        if (got->outcomes[i] != want->outcomes[i])
            test_fail(__FILE__, __LINE__,
                      "%s: %" PRIu64 " records with outcome %s, reference "
                      "%" PRIu64,
                      name, got->outcomes[i],
                      agg_outcome_name((enum agg_outcome)i), want->outcomes[i]);
    }
}

/* Fail unless the texts are equal; names the first line that differs. */
static void expect_same_store(const char *want, const char *got,
                              const char *name)
{
    size_t line = 1, start = 0;
    for (size_t i = 0; want[i] != '\0' || got[i] != '\0'; i++) {
        if (want[i] != got[i]) {
            const char *w = want + start, *g = got + start;
            test_fail(__FILE__, __LINE__,
                      "%s: the store differs from the reference at line "
                      "%zu:\n  got  %.*s\n  want %.*s",
                      name, line, (int)strcspn(g, "\n"), g,
                      (int)strcspn(w, "\n"), w);
        }
        if (want[i] == '\n') {
            line++;
            start = i + 1;
        }
    }
}

/* The number of dead-letter lines of a store dump with this reason. */
static size_t dead_letters_with(const char *dump, const char *reason)
{
    char prefix[64];
    size_t n = 0;
    snprintf(prefix, sizeof prefix, "dead_letter %s ", reason);
    for (const char *line = dump; *line != '\0';) {
        if (strncmp(line, prefix, strlen(prefix)) == 0)
            n++;
        const char *end = strchr(line, '\n');
        if (end == NULL)
            break;
        line = end + 1;
    }
    return n;
}

/* ---- rules the reference delivery must follow ------------------------ */

/* The rank printed before "racerId":id in payload, or -1 when absent. */
static int rank_of(const char *payload, const char *id, const char **at)
{
    char needle[64];
    snprintf(needle, sizeof needle, ",\"racerId\":%s,", id);
    *at = strstr(payload, needle);
    if (*at == NULL)
        return -1;
    const char *rank = *at;
    while (rank > payload && strncmp(rank, "{\"rank\":", 8) != 0)
        rank--;
    return atoi(rank + 8);
}

/* Riders 9 and 10 tie in race 0: one rank, 9 listed first. */
static void expect_numeric_tie(const struct outcome *out)
{
    const char *board = NULL;
    for (size_t i = 0; i < out->msg_count; i++) {
        if (strcmp(out->msgs[i].topic, "podium/races/5988085001/leaderboard") ==
                0 &&
            strstr(out->msgs[i].payload, "\"second\":30,") != NULL)
            board = out->msgs[i].payload;
    }
    ASSERT_TRUE(board != NULL);
    const char *at_9, *at_10;
    int rank_9 = rank_of(board, "9", &at_9);
    int rank_10 = rank_of(board, "10", &at_10);
    if (rank_9 < 1 || rank_9 != rank_10 || at_9 > at_10)
        test_fail(__FILE__, __LINE__,
                  "riders 9 and 10 must share a rank with 9 listed first: "
                  "%s",
                  board);
}

static bool any_message_contains(const struct outcome *out, const char *topic,
                                 const char *part)
{
    for (size_t i = 0; i < out->msg_count; i++) {
        if ((topic == NULL || strcmp(out->msgs[i].topic, topic) == 0) &&
            strstr(out->msgs[i].payload, part) != NULL)
            return true;
    }
    return false;
}

#define EXPECT_COUNT(actual, expected, what)                                   \
    do {                                                                       \
        uint64_t test_actual_ = (uint64_t)(actual);                            \
        uint64_t test_expected_ = (uint64_t)(expected);                        \
        if (test_actual_ != test_expected_ || test_expected_ == 0)             \
            test_fail(__FILE__, __LINE__,                                      \
                      "%s: counted %" PRIu64 ", generated %" PRIu64, what,     \
                      test_actual_, test_expected_);                           \
    } while (0)

/*
 * Every kind of record is counted, and none silently: the generated number
 * of each kind, never zero, shows up in the counters and dead letters.
 */
static void expect_counts(const struct outcome *out, const char *dump,
                          const struct gen_set *set, bool amend)
{
    const size_t *k = set->kinds;
    const uint64_t *o = out->outcomes;

    ASSERT_EQ(out->records_read, set->count);
    EXPECT_COUNT(out->duplicates, k[GEN_DUPLICATE], "duplicates");
    EXPECT_COUNT(out->validation_conflicts, k[GEN_VALIDATION],
                 "validation conflicts");
    EXPECT_COUNT(o[AGG_CONFLICT_KEPT], k[GEN_KEPT], "conflicts kept");
    EXPECT_COUNT(o[AGG_CONFLICT_REPLACED], k[GEN_REPLACED],
                 "conflicts replaced");
    EXPECT_COUNT(o[AGG_QUARANTINED_SKEW], k[GEN_SKEW], "quarantined skew");
    EXPECT_COUNT(o[AGG_QUARANTINED_JUMP], k[GEN_JUMP], "quarantined jump");
    EXPECT_COUNT(out->rejected[AGG_REJECT_NOT_JSON], k[GEN_NOT_JSON],
                 "rejected as not JSON");
    EXPECT_COUNT(out->rejected[AGG_REJECT_SECOND_RANGE], k[GEN_SECOND_RANGE],
                 "rejected for the second");
    EXPECT_COUNT(o[AGG_APPLIED], k[GEN_ON_TIME], "applied");
    ASSERT_EQ(o[AGG_UNCHANGED], 0);
    ASSERT_EQ(o[AGG_OVER_CAPACITY], 0);
    if (amend) {
        EXPECT_COUNT(o[AGG_LATE_AMENDED], k[GEN_LATE], "late amended");
        EXPECT_COUNT(o[AGG_TOO_LATE], k[GEN_TOO_LATE], "too late");
        ASSERT_EQ(o[AGG_LATE_DROPPED], 0);
    } else {
        EXPECT_COUNT(o[AGG_LATE_DROPPED], k[GEN_LATE] + k[GEN_TOO_LATE],
                     "late dropped");
        ASSERT_EQ(o[AGG_LATE_AMENDED], 0);
        ASSERT_EQ(o[AGG_TOO_LATE], 0);
    }

    EXPECT_COUNT(dead_letters_with(dump, "validation_conflict"),
                 k[GEN_VALIDATION], "validation conflict dead letters");
    EXPECT_COUNT(dead_letters_with(dump, "quarantined_skew"), k[GEN_SKEW],
                 "quarantined skew dead letters");
    EXPECT_COUNT(dead_letters_with(dump, "quarantined_jump"), k[GEN_JUMP],
                 "quarantined jump dead letters");
    EXPECT_COUNT(dead_letters_with(dump, "not_json"), k[GEN_NOT_JSON],
                 "not JSON dead letters");
    EXPECT_COUNT(dead_letters_with(dump, "second_range"), k[GEN_SECOND_RANGE],
                 "second range dead letters");
}

/*
 * Deliver one generated set in every way of deliveries[] and check that all
 * publish and store the same. group_ms as for gen_races_new(); with 0 the
 * counts of every kind of record are checked too.
 */
static void run_deliveries(const char *late_policy, bool amend,
                           int64_t group_ms)
{
    struct gen_set *set = gen_races_new(20260101, group_ms);
    struct outcome outs[DELIVERY_COUNT];
    char *dumps[DELIVERY_COUNT];
    char db[4096];

    /* The records rejected and conflicting on purpose would log warnings. */
    log_set_level(LOG_ERROR);
    fprintf(stderr,
            "%zu records, %zu duplicates, %zu late, %zu too late, "
            "%zu order-sensitive groups\n",
            set->count, set->kinds[GEN_DUPLICATE], set->kinds[GEN_LATE],
            set->kinds[GEN_TOO_LATE], order_sensitive_groups(set));
    for (size_t i = 0; i < DELIVERY_COUNT; i++) {
        memset(&outs[i], 0, sizeof outs[i]);
        snprintf(db, sizeof db, "%s/%s-%" PRId64 "-%zu.db", test_tmpdir(),
                 amend ? "amend" : "drop", group_ms, i);
        deliver(&deliveries[i], set, late_policy, db, &outs[i]);
        fprintf(stderr, "%s: %" PRIu64 " jobs, %zu messages\n",
                deliveries[i].name, outs[i].jobs, outs[i].msg_count);
        dumps[i] = dump_store(db);
    }

    const struct outcome *ref = &outs[0];
    expect_numeric_tie(ref);
    if (group_ms > 0) {
        /* The groups must be able to change what is late. */
        ASSERT_TRUE(order_sensitive_groups(set) >= 10);
        if (amend)
            ASSERT_TRUE(ref->outcomes[AGG_LATE_AMENDED] > 0);
        else
            ASSERT_TRUE(ref->outcomes[AGG_LATE_DROPPED] > 0);
    } else {
        expect_counts(ref, dumps[0], set, amend);
    }
    if (amend && group_ms == 0) {
        /* Only idle closing publishes the last second of race 0, and the
         * sample that comes after it amends that second and the results. */
        ASSERT_TRUE(any_message_contains(ref,
                                         "podium/races/5988085001/leaderboard",
                                         "\"second\":30,\"revision\":1,"));
        ASSERT_TRUE(any_message_contains(ref, "podium/races/5988085001/results",
                                         "\"revision\":1,"));
    } else if (!amend) {
        /* Nothing late is applied, so no race message is sent twice. Class
         * boards still change as each race adds its riders. */
        for (size_t i = 0; i < ref->msg_count; i++) {
            const struct message *m = &ref->msgs[i];
            if (strncmp(m->topic, "podium/races/", 13) == 0 &&
                strstr(m->payload, "\"revision\":0,") == NULL)
                test_fail(__FILE__, __LINE__,
                          "a race message with a revision above 0 under "
                          "race.late_policy=drop: %s %s",
                          m->topic, m->payload);
        }
    }

    for (size_t i = 1; i < DELIVERY_COUNT; i++) {
        expect_same_topics(ref, &outs[i], deliveries[i].name);
        expect_same_counters(ref, &outs[i], deliveries[i].name);
        expect_same_store(dumps[0], dumps[i], deliveries[i].name);
    }
    for (size_t i = 0; i < DELIVERY_COUNT; i++) {
        outcome_free(&outs[i]);
        free(dumps[i]);
    }
    gen_set_free(set);
}

TEST(determinism_under_amend_policy)
{
    run_deliveries("race.late_policy=amend", true, 0);
}

TEST(determinism_under_drop_policy)
{
    run_deliveries("race.late_policy=drop", false, 0);
}

/* 2.5 s of records share one arrival time, as one PutRecords call. */
TEST(determinism_shared_arrival_amend)
{
    run_deliveries("race.late_policy=amend", true, 2500);
}

TEST(determinism_shared_arrival_drop)
{
    run_deliveries("race.late_policy=drop", false, 2500);
}
