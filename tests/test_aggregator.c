/*
 * Tests of the aggregator: exact scoring, record validation, ranking,
 * conflicts, closing, late records and the rebuild after a restart. The
 * sink used here keeps every message in order and a model of the store
 * (one row per sample key, one state per race), which is what a restart
 * reads back.
 */
#include "aggregator/aggregator.h"
#include "aggregator/fixed.h"
#include "aggregator/internal.h"
#include "tests/testlib.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>

#define RACE "5402746"

/* ---- capture sink ------------------------------------------------------- */

#define MAX_ROWS   4096
#define MAX_STATES 16

struct stored_row {
    struct agg_id race, racer, class_id;
    int32_t second;
    char name[AGG_MAX_ID_BYTES + 1];
    size_t name_len;
    char uuid[AGG_MAX_ID_BYTES + 1];
    size_t uuid_len;
    int64_t device_ts_ms, arrival_ms, cadence4, resistance4, output4;
    char cadence_exact[AGG_MAX_EXACT_TEXT];
    char resistance_exact[AGG_MAX_EXACT_TEXT];
    bool final;
};

struct stored_state {
    struct agg_id race;
    char json[4096];
    size_t len;
};

/* One class history row as the store would keep it. */
struct stored_history {
    struct agg_id class_id, racer, race;
    int32_t second;
    int64_t output4;
};

struct capture {
    struct strbuf messages; /* race leaderboard payloads, one per line */
    int message_count;
    struct strbuf results; /* race results payloads, one per line */
    int results_count;
    struct strbuf classes; /* class leaderboard payloads, one per line */
    int class_count;
    int sample_calls;
    struct stored_row rows[MAX_ROWS];
    int row_count;
    struct stored_state states[MAX_STATES];
    int state_count;
    struct stored_state class_states[MAX_STATES];
    int class_state_count;
    struct stored_history history[MAX_ROWS];
    int history_count;
    int history_calls;
};

static int capture_sample(void *arg, const struct agg_sample_row *row)
{
    struct capture *c = arg;
    struct stored_row *r = NULL;

    c->sample_calls++;
    for (int i = 0; i < c->row_count && r == NULL; i++) {
        struct stored_row *x = &c->rows[i];
        if (agg_id_cmp(&x->race, row->race) == 0 &&
            agg_id_cmp(&x->racer, row->racer) == 0 && x->second == row->second)
            r = x;
    }
    if (r == NULL) {
        ASSERT_TRUE(c->row_count < MAX_ROWS);
        r = &c->rows[c->row_count++];
    }
    memset(r, 0, sizeof *r);
    r->race = *row->race;
    r->racer = *row->racer;
    r->class_id = *row->class_id;
    r->second = row->second;
    memcpy(r->name, row->name, row->name_len);
    r->name_len = row->name_len;
    memcpy(r->uuid, row->uuid, row->uuid_len);
    r->uuid_len = row->uuid_len;
    r->device_ts_ms = row->device_ts_ms;
    r->arrival_ms = row->arrival_ms;
    r->cadence4 = row->cadence4;
    r->resistance4 = row->resistance4;
    r->output4 = row->output4;
    snprintf(r->cadence_exact, sizeof r->cadence_exact, "%s",
             row->cadence_exact);
    snprintf(r->resistance_exact, sizeof r->resistance_exact, "%s",
             row->resistance_exact);
    r->final = row->final;
    return 0;
}

/* Keep the newest document per id, like the agg_state table. */
static void put_state(struct stored_state *states, int *count,
                      const struct agg_id *id, const char *json, size_t len)
{
    struct stored_state *s = NULL;

    for (int i = 0; i < *count && s == NULL; i++) {
        if (agg_id_cmp(&states[i].race, id) == 0)
            s = &states[i];
    }
    if (s == NULL) {
        ASSERT_TRUE(*count < MAX_STATES);
        s = &states[(*count)++];
    }
    ASSERT_TRUE(len < sizeof s->json);
    s->race = *id;
    memcpy(s->json, json, len);
    s->json[len] = '\0';
    s->len = len;
}

static int capture_state(void *arg, const struct agg_id *race, const char *json,
                         size_t len)
{
    struct capture *c = arg;
    put_state(c->states, &c->state_count, race, json, len);
    return 0;
}

static int capture_class_state(void *arg, const struct agg_id *class_id,
                               const char *json, size_t len)
{
    struct capture *c = arg;
    put_state(c->class_states, &c->class_state_count, class_id, json, len);
    return 0;
}

/* Insert, replace or delete the row of (class, racer, second). */
static int capture_history(void *arg, const struct agg_history_row *row)
{
    struct capture *c = arg;
    int at = -1;

    c->history_calls++;
    for (int i = 0; i < c->history_count && at < 0; i++) {
        const struct stored_history *h = &c->history[i];
        if (agg_id_cmp(&h->class_id, row->class_id) == 0 &&
            agg_id_cmp(&h->racer, row->racer) == 0 && h->second == row->second)
            at = i;
    }
    if (row->race == NULL) {
        ASSERT_TRUE(at >= 0);
        c->history[at] = c->history[--c->history_count];
        return 0;
    }
    if (at < 0) {
        ASSERT_TRUE(c->history_count < MAX_ROWS);
        at = c->history_count++;
    }
    c->history[at].class_id = *row->class_id;
    c->history[at].racer = *row->racer;
    c->history[at].race = *row->race;
    c->history[at].second = row->second;
    c->history[at].output4 = row->output4;
    return 0;
}

static int capture_message(void *arg, const struct agg_message *msg)
{
    struct capture *c = arg;

    switch (msg->kind) {
    case AGG_MSG_RACE_LEADERBOARD:
        ASSERT_TRUE(msg->class_id == NULL);
        sb_append(&c->messages, msg->payload, msg->payload_len);
        sb_putc(&c->messages, '\n');
        c->message_count++;
        break;
    case AGG_MSG_RACE_RESULTS:
        ASSERT_TRUE(msg->class_id == NULL);
        ASSERT_TRUE(msg->race != NULL);
        sb_append(&c->results, msg->payload, msg->payload_len);
        sb_putc(&c->results, '\n');
        c->results_count++;
        break;
    case AGG_MSG_CLASS_LEADERBOARD:
        ASSERT_TRUE(msg->race == NULL);
        ASSERT_TRUE(msg->class_id != NULL);
        sb_append(&c->classes, msg->payload, msg->payload_len);
        sb_putc(&c->classes, '\n');
        c->class_count++;
        break;
    case AGG_MSG_ALLEYCAT:
        /* These tests leave cfg.alleycat off; test_alleycat.c covers it. */
        test_fail(__FILE__, __LINE__, "unexpected alleycat message: %.*s",
                  (int)msg->payload_len, msg->payload);
    }
    return 0;
}

static struct capture *capture_new(void)
{
    struct capture *c = calloc(1, sizeof *c);
    ASSERT_TRUE(c != NULL);
    sb_init(&c->messages, 1 << 24);
    sb_init(&c->results, 1 << 24);
    sb_init(&c->classes, 1 << 24);
    return c;
}

static void capture_free(struct capture *c)
{
    sb_free(&c->messages);
    sb_free(&c->results);
    sb_free(&c->classes);
    free(c);
}

static const char *capture_log(const struct capture *c)
{
    return c->messages.data ? c->messages.data : "";
}

static struct agg_config default_config(void)
{
    struct agg_config cfg = {
        .max_seconds = 3600,
        .allowed_lateness_s = 0,
        .idle_close_s = 30,
        .max_future_skew_s = 60,
        .max_second_jump = 600,
        .late_policy = AGG_LATE_AMEND,
        .amend_window_s = 10,
        .top_n = 10,
    };
    return cfg;
}

static struct agg *agg_for(const struct agg_config *cfg, struct capture *c)
{
    struct agg_sink sink = {c,
                            capture_sample,
                            capture_state,
                            capture_message,
                            capture_class_state,
                            capture_history};
    struct agg *agg = agg_new(cfg, &sink);
    ASSERT_TRUE(agg != NULL);
    return agg;
}

/* ---- records ------------------------------------------------------------ */

/* One record of race 5402746, class 1, named Rider. */
struct sample_spec {
    const char *uuid;
    int64_t device_ts_ms;
    int32_t second;
    const char *racer; /* JSON: "\"rc-11\"" or "7" */
    const char *cadence;
    const char *resistance;
    int64_t arrival_ms;
};

static void parse_ok(const char *json, struct agg_record *rec)
{
    struct agg_reject_info why;
    int rc =
        agg_record_parse((const uint8_t *)json, strlen(json), 3600, rec, &why);
    if (rc != 0)
        test_fail(__FILE__, __LINE__, "rejected %s: %s", json, why.detail);
}

static void record_from_spec(const struct sample_spec *s,
                             struct agg_record *rec)
{
    char json[1024];

    snprintf(json, sizeof json,
             "{\"uuid\":\"%s\",\"event\":\"update\",\"deviceTimestamp\":"
             "%" PRId64 ",\"second\":%d,\"raceId\":" RACE
             ",\"name\":\"Rider\",\"racerId\":%s,\"classId\":1,"
             "\"cadence\":%s,\"resistance\":%s}",
             s->uuid, s->device_ts_ms, (int)s->second, s->racer, s->cadence,
             s->resistance);
    parse_ok(json, rec);
}

static enum agg_outcome feed(struct agg *agg, const struct sample_spec *s)
{
    struct agg_record rec;
    enum agg_outcome outcome = AGG_OUTCOME_COUNT;

    record_from_spec(s, &rec);
    ASSERT_EQ(agg_apply(agg, &rec, s->arrival_ms, &outcome), 0);
    return outcome;
}

static void feed_all(struct agg *agg, const struct sample_spec *specs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        feed(agg, &specs[i]);
}

/* Count the lines of the message log that contain needle. */
static int count_lines_with(const char *log, const char *needle)
{
    int n = 0;
    for (const char *line = log; *line != '\0';) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        const char *hit = strstr(line, needle);
        if (hit != NULL && hit < line + len)
            n++;
        line += len + (end != NULL);
    }
    return n;
}

/* ---- scoring ------------------------------------------------------------ */

struct output_case {
    const char *name;
    const char *cadence;
    const char *resistance;
    int64_t output4;
};

static const struct output_case output_cases[] = {
    {"example record 79.8 and 79", "798e-1", "79e0", 1653120},
    {"zero inputs", "0", "0", 227500},
    {"fifth decimal 5 rounds up", "1e-3", "0", 227507},
    {"just below half rounds down",
     "999999999999999999999999999999999999999e-42", "0", 227506},
    {"subnormal resistance", "798e-1", "18011670033376514e-324", 746200},
    {"maximum values", "1e3", "1e3", 110227500},
    {"fractional resistance 12.1", "8e1", "121e-1", 886650},
    {"resistance 12.3", "9e1", "123e-1", 966250},
    {"tiny cadence above half", "1e-3", "1e-300", 227507},
};

TEST(agg_output_rounds_half_up)
{
    for (size_t i = 0; i < sizeof output_cases / sizeof output_cases[0]; i++) {
        const struct output_case *c = &output_cases[i];
        int64_t fast = -1, slow = -1;
        fprintf(stderr, "case: %s\n", c->name);
        ASSERT_EQ(agg_output4(c->cadence, c->resistance, &fast), 0);
        ASSERT_EQ(fast, c->output4);
        ASSERT_EQ(fixed_output4_big(c->cadence, c->resistance, &slow), 0);
        ASSERT_EQ(slow, c->output4);
    }
}

TEST(agg_output_paths_agree)
{
    /* Values with 0 to 6 decimals, so the fast path runs, and their
     * results must match the multi-limb path exactly. */
    static const char *const values[] = {
        "0",      "1e-4",  "5e-5",      "49999e-9",  "125e-1",
        "798e-1", "79e0",  "999999e-6", "123456e-4", "1e3",
        "35e-5",  "65e-5", "99995e-5",  "100005e-6"};
    size_t n = sizeof values / sizeof values[0];

    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < n; j++) {
            int64_t fast = -1, slow = -2;
            ASSERT_EQ(agg_output4(values[i], values[j], &fast), 0);
            ASSERT_EQ(fixed_output4_big(values[i], values[j], &slow), 0);
            if (fast != slow)
                test_fail(__FILE__, __LINE__,
                          "%s x %s: %" PRId64 " != %" PRId64, values[i],
                          values[j], fast, slow);
        }
    }
}

TEST(agg_output_rejects_noncanonical_text)
{
    static const char *const texts[] = {"",     "01",   "10",   "1.5", "-1",
                                        "1e+1", "1e01", "1e-0", "e1",  "1e"};
    int64_t out;

    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        fprintf(stderr, "case: \"%s\"\n", texts[i]);
        ASSERT_EQ(agg_output4(texts[i], "0", &out), -1);
    }
}

struct round_case {
    const char *text;
    int64_t value4;
    bool exact;
};

TEST(agg_value_rounds_to_four_decimals)
{
    static const struct round_case cases[] = {
        {"0", 0, true},          {"798e-1", 798000, true},
        {"1e-4", 1, true},       {"5e-5", 1, false},
        {"49999e-9", 0, false},  {"123456789e-8", 12346, false},
        {"1e3", 10000000, true}, {"18011670033376514e-324", 0, false},
    };
    char back[AGG_MAX_EXACT_TEXT];

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int64_t v = -1;
        bool exact = !cases[i].exact;
        fprintf(stderr, "case: %s\n", cases[i].text);
        ASSERT_EQ(fixed_round4(cases[i].text, &v, &exact), 0);
        ASSERT_EQ(v, cases[i].value4);
        ASSERT_EQ(exact, cases[i].exact);
        if (exact) {
            ASSERT_EQ(fixed_format4(v, back, sizeof back), 0);
            ASSERT_STR_EQ(back, cases[i].text);
        }
    }
}

/* ---- records ------------------------------------------------------------ */

static const char example_record[] =
    "{\"uuid\":\"0b0e5f6a-3c1d-4f7e-9a52-1f1d2c3b4a59\",\"event\":\"update\","
    "\"deviceTimestamp\":1620824038331,\"second\":3,\"raceId\":5402746,"
    "\"name\":\"Hayden\",\"racerId\":0,\"classId\":1,\"cadence\":79.8,"
    "\"resistance\":79}";

TEST(agg_record_parses_example)
{
    struct agg_record rec;

    parse_ok(example_record, &rec);
    ASSERT_STR_EQ(rec.uuid, "0b0e5f6a-3c1d-4f7e-9a52-1f1d2c3b4a59");
    ASSERT_EQ(rec.uuid_len, 36);
    ASSERT_FALSE(rec.final);
    ASSERT_EQ(rec.device_ts_ms, INT64_C(1620824038331));
    ASSERT_EQ(rec.second, 3);
    ASSERT_TRUE(rec.race.is_num);
    ASSERT_EQ(rec.race.num, 5402746);
    ASSERT_TRUE(rec.racer.is_num);
    ASSERT_EQ(rec.racer.num, 0);
    ASSERT_STR_EQ(rec.name, "Hayden");
    ASSERT_STR_EQ(rec.cadence_exact, "798e-1");
    ASSERT_STR_EQ(rec.resistance_exact, "79e0");
    ASSERT_EQ(rec.cadence4, 798000);
    ASSERT_EQ(rec.resistance4, 790000);
    ASSERT_EQ(rec.output4, 1653120);
}

TEST(agg_record_hash_ignores_layout)
{
    /* Same members in another order, with spaces and other number
     * spellings: the canonical form and so the hash are equal. */
    static const char reordered[] =
        "{ \"resistance\": 79.0, \"cadence\": 7.98e1, \"classId\": 1,"
        " \"racerId\": 0, \"name\": \"Hayden\", \"raceId\": 5402746,"
        " \"second\": 3, \"deviceTimestamp\": 1620824038331,"
        " \"event\": \"update\","
        " \"uuid\": \"0b0e5f6a-3c1d-4f7e-9a52-1f1d2c3b4a59\" }";
    static const char other_name[] =
        "{\"uuid\":\"0b0e5f6a-3c1d-4f7e-9a52-1f1d2c3b4a59\",\"event\":"
        "\"update\",\"deviceTimestamp\":1620824038331,\"second\":3,"
        "\"raceId\":5402746,\"name\":\"Hayden \",\"racerId\":0,\"classId\":1,"
        "\"cadence\":79.8,\"resistance\":79}";
    struct agg_record a, b, c;

    parse_ok(example_record, &a);
    parse_ok(reordered, &b);
    parse_ok(other_name, &c);
    ASSERT_MEM_EQ(a.hash, 32, b.hash, 32);
    ASSERT_TRUE(memcmp(a.hash, c.hash, 32) != 0);
}

struct reject_case {
    const char *name;
    const char *json;
    enum agg_reject reason;
    const char *detail_part; /* must appear in the detail */
};

#define BODY_AFTER_UUID                                                        \
    "\"event\":\"update\",\"deviceTimestamp\":1620824038331,\"second\":3,"     \
    "\"raceId\":5402746,\"name\":\"Hayden\",\"racerId\":0,\"classId\":1,"      \
    "\"cadence\":79.8,\"resistance\":79}"
#define UUID_FIRST "{\"uuid\":\"u-1\","

static const struct reject_case reject_cases[] = {
    {"truncated JSON", "{\"uuid\":", AGG_REJECT_NOT_JSON, "byte"},
    {"array record", "[1,2]", AGG_REJECT_NOT_OBJECT, "array"},
    {"duplicate racerId",
     "{\"uuid\":\"u-1401\",\"racerId\":\"rc-11\",\"racerId\":\"rc-99\","
     "\"event\":\"update\",\"deviceTimestamp\":1,\"second\":1,\"raceId\":1,"
     "\"name\":\"A\",\"classId\":1,\"cadence\":1,\"resistance\":1}",
     AGG_REJECT_DUPLICATE_KEY, "racerId"},
    {"duplicate key in nested object",
     UUID_FIRST "\"extra\":{\"a\":1,\"a\":2}," BODY_AFTER_UUID,
     AGG_REJECT_DUPLICATE_KEY, "\"a\""},
    {"missing classId",
     "{\"uuid\":\"u-1\",\"event\":\"update\",\"deviceTimestamp\":1,"
     "\"second\":1,\"raceId\":1,\"name\":\"A\",\"racerId\":1,\"cadence\":1,"
     "\"resistance\":1}",
     AGG_REJECT_MISSING_FIELD, "classId"},
    {"second as string",
     "{\"uuid\":\"u-1\",\"event\":\"update\",\"deviceTimestamp\":1,"
     "\"second\":\"3\",\"raceId\":1,\"name\":\"A\",\"racerId\":1,"
     "\"classId\":1,\"cadence\":1,\"resistance\":1}",
     AGG_REJECT_WRONG_TYPE, "second"},
    {"fractional racerId",
     UUID_FIRST "\"event\":\"update\",\"deviceTimestamp\":1,\"second\":1,"
                "\"raceId\":1,\"name\":\"A\",\"racerId\":1.5,\"classId\":1,"
                "\"cadence\":1,\"resistance\":1}",
     AGG_REJECT_WRONG_TYPE, "racerId"},
    {"huge deviceTimestamp",
     UUID_FIRST "\"event\":\"update\",\"deviceTimestamp\":18446744073709551616,"
                "\"second\":1,\"raceId\":1,\"name\":\"A\",\"racerId\":1,"
                "\"classId\":1,\"cadence\":1,\"resistance\":1}",
     AGG_REJECT_BAD_NUMBER, "deviceTimestamp \"18446744073709551616\""},
    {"deviceTimestamp after year 9999",
     UUID_FIRST "\"event\":\"update\",\"deviceTimestamp\":253402300800000,"
                "\"second\":1,\"raceId\":1,\"name\":\"A\",\"racerId\":1,"
                "\"classId\":1,\"cadence\":1,\"resistance\":1}",
     AGG_REJECT_BAD_NUMBER, "deviceTimestamp 253402300800000"},
    {"raceId past int64",
     UUID_FIRST "\"event\":\"update\",\"deviceTimestamp\":1,\"second\":1,"
                "\"raceId\":9223372036854775808,\"name\":\"A\",\"racerId\":1,"
                "\"classId\":1,\"cadence\":1,\"resistance\":1}",
     AGG_REJECT_BAD_NUMBER, "raceId"},
    {"cadence 1e400",
     UUID_FIRST "\"event\":\"update\",\"deviceTimestamp\":1,\"second\":1,"
                "\"raceId\":1,\"name\":\"A\",\"racerId\":1,\"classId\":1,"
                "\"cadence\":1e400,\"resistance\":1}",
     AGG_REJECT_BAD_NUMBER, "cadence \"1e400\""},
    {"resistance with 41 digits",
     UUID_FIRST "\"event\":\"update\",\"deviceTimestamp\":1,\"second\":1,"
                "\"raceId\":1,\"name\":\"A\",\"racerId\":1,\"classId\":1,"
                "\"cadence\":1,"
                "\"resistance\":1.0000000000000000000000000000000000000001}",
     AGG_REJECT_BAD_NUMBER, "41 significant digits"},
    {"resistance NaN",
     UUID_FIRST "\"event\":\"update\",\"deviceTimestamp\":1,\"second\":1,"
                "\"raceId\":1,\"name\":\"A\",\"racerId\":1,\"classId\":1,"
                "\"cadence\":1,\"resistance\":NaN}",
     AGG_REJECT_BAD_NUMBER, "not finite"},
    {"cadence below int64",
     UUID_FIRST "\"event\":\"update\",\"deviceTimestamp\":1,\"second\":1,"
                "\"raceId\":1,\"name\":\"A\",\"racerId\":1,\"classId\":1,"
                "\"cadence\":-9223372036854775809,\"resistance\":1}",
     AGG_REJECT_VALUE_RANGE, "cadence \"-9223372036854775809\""},
    {"resistance above maximum",
     UUID_FIRST "\"event\":\"update\",\"deviceTimestamp\":1,\"second\":1,"
                "\"raceId\":1,\"name\":\"A\",\"racerId\":1,\"classId\":1,"
                "\"cadence\":1,\"resistance\":1000.0001}",
     AGG_REJECT_VALUE_RANGE, "resistance \"1000.0001\" is outside 0..1000"},
    {"invalid UTF-8 in name",
     UUID_FIRST "\"event\":\"update\",\"deviceTimestamp\":1,\"second\":1,"
                "\"raceId\":1,\"name\":\"\xC3\x28\",\"racerId\":1,"
                "\"classId\":1,\"cadence\":1,\"resistance\":1}",
     AGG_REJECT_INVALID_UTF8, "byte"},
    {"NUL in raceId",
     UUID_FIRST "\"event\":\"update\",\"deviceTimestamp\":1,\"second\":1,"
                "\"raceId\":\"R-7\\u0000/../x\",\"name\":\"A\",\"racerId\":1,"
                "\"classId\":1,\"cadence\":1,\"resistance\":1}",
     AGG_REJECT_BAD_ID, "raceId \"R-7\\x00/../x\""},
    {"DEL in classId",
     UUID_FIRST "\"event\":\"update\",\"deviceTimestamp\":1,\"second\":1,"
                "\"raceId\":1,\"name\":\"A\",\"racerId\":1,"
                "\"classId\":\"c\x7f\",\"cadence\":1,\"resistance\":1}",
     AGG_REJECT_BAD_ID, "classId"},
    {"empty racerId",
     UUID_FIRST "\"event\":\"update\",\"deviceTimestamp\":1,\"second\":1,"
                "\"raceId\":1,\"name\":\"A\",\"racerId\":\"\","
                "\"classId\":1,\"cadence\":1,\"resistance\":1}",
     AGG_REJECT_BAD_ID, "racerId"},
    {"65-byte name",
     UUID_FIRST "\"event\":\"update\",\"deviceTimestamp\":1,\"second\":1,"
                "\"raceId\":1,\"name\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaa\",\"racerId\":1,"
                "\"classId\":1,\"cadence\":1,\"resistance\":1}",
     AGG_REJECT_TOO_LONG, "name is 65 bytes"},
    {"second 0",
     UUID_FIRST "\"event\":\"update\",\"deviceTimestamp\":1,\"second\":0,"
                "\"raceId\":1,\"name\":\"A\",\"racerId\":1,\"classId\":1,"
                "\"cadence\":1,\"resistance\":1}",
     AGG_REJECT_SECOND_RANGE, "second 0 is outside 1..3600"},
    {"second past max_seconds",
     UUID_FIRST "\"event\":\"update\",\"deviceTimestamp\":1,\"second\":3601,"
                "\"raceId\":1,\"name\":\"A\",\"racerId\":1,\"classId\":1,"
                "\"cadence\":1,\"resistance\":1}",
     AGG_REJECT_SECOND_RANGE, "second 3601"},
    {"unknown event",
     "{\"uuid\":\"u-1\",\"event\":\"start\",\"deviceTimestamp\":1,"
     "\"second\":1,\"raceId\":1,\"name\":\"A\",\"racerId\":1,\"classId\":1,"
     "\"cadence\":1,\"resistance\":1}",
     AGG_REJECT_BAD_EVENT, "event \"start\""},
};

TEST(agg_record_rejects_each_reason)
{
    for (size_t i = 0; i < sizeof reject_cases / sizeof reject_cases[0]; i++) {
        const struct reject_case *c = &reject_cases[i];
        struct agg_record rec;
        struct agg_reject_info why;
        fprintf(stderr, "case: %s\n", c->name);
        ASSERT_EQ(agg_record_parse((const uint8_t *)c->json, strlen(c->json),
                                   3600, &rec, &why),
                  -1);
        ASSERT_STR_EQ(agg_reject_name(why.reason), agg_reject_name(c->reason));
        if (strstr(why.detail, c->detail_part) == NULL)
            test_fail(__FILE__, __LINE__, "detail \"%s\" lacks \"%s\"",
                      why.detail, c->detail_part);
    }
}

TEST(agg_record_rejects_deep_nesting)
{
    size_t depth = 100000;
    char *json = malloc(depth);
    struct agg_record rec;
    struct agg_reject_info why;

    ASSERT_TRUE(json != NULL);
    memset(json, '[', depth);
    ASSERT_EQ(agg_record_parse((const uint8_t *)json, depth, 3600, &rec, &why),
              -1);
    ASSERT_STR_EQ(agg_reject_name(why.reason), "too_deep");
    free(json);
}

TEST(agg_record_rejects_over_one_mib)
{
    size_t len = AGG_MAX_RECORD_BYTES + 1;
    char *json = malloc(len);
    struct agg_record rec;
    struct agg_reject_info why;

    ASSERT_TRUE(json != NULL);
    memset(json, ' ', len);
    json[0] = '{';
    json[len - 1] = '}';
    ASSERT_EQ(agg_record_parse((const uint8_t *)json, len, 3600, &rec, &why),
              -1);
    ASSERT_STR_EQ(agg_reject_name(why.reason), "too_large");
    free(json);
}

TEST(agg_record_accepts_subnormal_resistance)
{
    struct agg_record rec;

    parse_ok(UUID_FIRST
             "\"event\":\"final\",\"deviceTimestamp\":1,\"second\":1,"
             "\"raceId\":1,\"name\":\"A\",\"racerId\":1,\"classId\":1,"
             "\"cadence\":79.8,\"resistance\":1.8011670033376514e-308}",
             &rec);
    ASSERT_TRUE(rec.final);
    ASSERT_STR_EQ(rec.resistance_exact, "18011670033376514e-324");
    ASSERT_EQ(rec.resistance4, 0);
    ASSERT_EQ(rec.output4, 746200);
}

TEST(agg_record_keeps_nul_in_name)
{
    struct agg_record rec;

    parse_ok(UUID_FIRST
             "\"event\":\"update\",\"deviceTimestamp\":1,"
             "\"second\":1,\"raceId\":\"R-7\",\"name\":\"a\\u0000b\","
             "\"racerId\":\"5\",\"classId\":1,\"cadence\":1,"
             "\"resistance\":1}",
             &rec);
    ASSERT_EQ(rec.name_len, 3);
    ASSERT_MEM_EQ(rec.name, 3, "a\0b", 3);
    ASSERT_FALSE(rec.racer.is_num);
    ASSERT_STR_EQ(rec.racer.str, "5");
}

TEST(agg_uuid_with_nul_is_distinct)
{
    struct agg_record plain, with_nul;
    struct agg_reject_info why;
    static const char nul_uuid[] =
        "{\"uuid\":\"u-1302\\u0000a\"," BODY_AFTER_UUID;

    parse_ok("{\"uuid\":\"u-1302\"," BODY_AFTER_UUID, &plain);
    ASSERT_STR_EQ(plain.uuid, "u-1302");
    /* A uuid is an id, so U+0000 rejects it instead of cutting it short
     * into a copy of "u-1302". */
    ASSERT_EQ(agg_record_parse((const uint8_t *)nul_uuid, strlen(nul_uuid),
                               3600, &with_nul, &why),
              -1);
    ASSERT_STR_EQ(agg_reject_name(why.reason), "bad_id");
    ASSERT_TRUE(strstr(why.detail, "u-1302\\x00a") != NULL);
}

/* ---- ranking ------------------------------------------------------------ */

static const struct sample_spec ranking_samples[] = {
    {"u-13", 1000, 1, "\"rc-13\"", "90", "12.3", 5001},
    {"u-11", 1000, 1, "\"rc-11\"", "80", "12.1", 5002},
    {"u-12", 1000, 1, "\"rc-12\"", "80", "12.1", 5003},
    {"u-14", 1000, 1, "\"rc-14\"", "0", "0", 5004},
    {"u-13b", 2000, 2, "\"rc-13\"", "90", "12.2", 6001},
};

static const char ranking_second_1[] =
    "{\"type\":\"leaderboard\",\"raceId\":5402746,\"second\":1,"
    "\"revision\":0,\"ts\":5004,\"entries\":["
    "{\"rank\":1,\"racerId\":\"rc-13\",\"name\":\"Rider\",\"classId\":1,"
    "\"second\":1,\"cadence\":90,\"resistance\":12.3,\"output\":96.625,"
    "\"total\":96.625},"
    "{\"rank\":2,\"racerId\":\"rc-11\",\"name\":\"Rider\",\"classId\":1,"
    "\"second\":1,\"cadence\":80,\"resistance\":12.1,\"output\":88.665,"
    "\"total\":88.665},"
    "{\"rank\":2,\"racerId\":\"rc-12\",\"name\":\"Rider\",\"classId\":1,"
    "\"second\":1,\"cadence\":80,\"resistance\":12.1,\"output\":88.665,"
    "\"total\":88.665},"
    "{\"rank\":4,\"racerId\":\"rc-14\",\"name\":\"Rider\",\"classId\":1,"
    "\"second\":1,\"cadence\":0,\"resistance\":0,\"output\":22.75,"
    "\"total\":22.75}]}\n";

/* Feed the samples in the given order, close everything, return the log
 * (owned by the caller). */
static char *run_in_order(const struct agg_config *cfg,
                          const struct sample_spec *specs, const size_t *order,
                          size_t n)
{
    struct capture *c = capture_new();
    struct agg *agg = agg_for(cfg, c);

    for (size_t i = 0; i < n; i++)
        feed(agg, &specs[order[i]]);
    ASSERT_EQ(agg_close_all(agg), 0);
    char *log = strdup(capture_log(c));
    agg_free(agg);
    capture_free(c);
    return log;
}

TEST(agg_rank_ties_share_rank)
{
    struct agg_config cfg = default_config();
    cfg.allowed_lateness_s = 100;
    static const size_t forward[] = {0, 1, 2, 3, 4};
    static const size_t backward[] = {4, 3, 2, 1, 0};

    char *a = run_in_order(&cfg, ranking_samples, forward, 5);
    char *b = run_in_order(&cfg, ranking_samples, backward, 5);
    ASSERT_STR_EQ(a, b);
    ASSERT_EQ(strncmp(a, ranking_second_1, strlen(ranking_second_1)), 0);
    /* Second 2: rc-13 alone has a sample there, and everyone else keeps
     * the sample and total of second 1. */
    ASSERT_TRUE(strstr(a, "\"second\":2,\"revision\":0,\"ts\":6001") != NULL);
    ASSERT_TRUE(strstr(a, "{\"rank\":1,\"racerId\":\"rc-13\",\"name\":"
                          "\"Rider\",\"classId\":1,\"second\":2,"
                          "\"cadence\":90,\"resistance\":12.2,"
                          "\"output\":96.5,\"total\":193.125}") != NULL);
    ASSERT_TRUE(strstr(a, "{\"rank\":4,\"racerId\":\"rc-14\",\"name\":"
                          "\"Rider\",\"classId\":1,\"second\":1,"
                          "\"cadence\":0,\"resistance\":0,"
                          "\"output\":22.75,\"total\":22.75}]}") != NULL);
    free(a);
    free(b);
}

TEST(agg_top_n_cuts_inside_tie)
{
    struct agg_config cfg = default_config();
    cfg.top_n = 2;
    cfg.allowed_lateness_s = 100;
    static const struct sample_spec specs[] = {
        {"u-1", 1000, 1, "\"rc-3\"", "10", "10", 5000},
        {"u-2", 1000, 1, "\"rc-2\"", "10", "10", 5000},
        {"u-3", 1000, 1, "\"rc-1\"", "20", "10", 5000},
    };
    static const size_t order[] = {0, 1, 2};

    char *log = run_in_order(&cfg, specs, order, 3);
    ASSERT_EQ(count_lines_with(log, "\"rank\":1,\"racerId\":\"rc-1\""), 1);
    ASSERT_EQ(count_lines_with(log, "\"rank\":2,\"racerId\":\"rc-2\""), 1);
    ASSERT_EQ(count_lines_with(log, "rc-3"), 0);
    free(log);
}

TEST(agg_ids_order_numbers_before_strings)
{
    struct agg_id n2, n10, s1, s10, s9, s5, n5;

    agg_id_set_num(&n2, 2);
    agg_id_set_num(&n10, 10);
    agg_id_set_num(&n5, 5);
    agg_id_set_string(&s1, "1", 1);
    agg_id_set_string(&s10, "10", 2);
    agg_id_set_string(&s9, "9", 1);
    agg_id_set_string(&s5, "5", 1);
    ASSERT_TRUE(agg_id_cmp(&n2, &n10) < 0);
    ASSERT_TRUE(agg_id_cmp(&n10, &s1) < 0);
    ASSERT_TRUE(agg_id_cmp(&s1, &s10) < 0);
    ASSERT_TRUE(agg_id_cmp(&s10, &s9) < 0);
    ASSERT_TRUE(agg_id_cmp(&n5, &s5) != 0);

    /* Equal totals are listed by racerId: 2, 10, "10", "9". */
    struct agg_config cfg = default_config();
    cfg.allowed_lateness_s = 100;
    static const struct sample_spec specs[] = {
        {"u-1", 1000, 1, "\"9\"", "10", "10", 5000},
        {"u-2", 1000, 1, "\"10\"", "10", "10", 5000},
        {"u-3", 1000, 1, "10", "10", "10", 5000},
        {"u-4", 1000, 1, "2", "10", "10", 5000},
    };
    static const size_t order[] = {0, 1, 2, 3};
    char *log = run_in_order(&cfg, specs, order, 4);
    const char *p2 = strstr(log, "\"racerId\":2,");
    const char *p10 = strstr(log, "\"racerId\":10,");
    const char *ps10 = strstr(log, "\"racerId\":\"10\"");
    const char *ps9 = strstr(log, "\"racerId\":\"9\"");
    ASSERT_TRUE(p2 != NULL);
    ASSERT_TRUE(p10 != NULL);
    ASSERT_TRUE(ps10 != NULL);
    ASSERT_TRUE(ps9 != NULL);
    ASSERT_TRUE(p2 < p10);
    ASSERT_TRUE(p10 < ps10);
    ASSERT_TRUE(ps10 < ps9);
    free(log);
}

TEST(agg_id_num_text_matches_printf)
{
    static const int64_t values[] = {
        0, 1, -1, 9, 10, -10, 1234567890, INT64_MAX, INT64_MIN, INT64_MIN + 1};

    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        struct agg_id id;
        char expected[32];
        int n = snprintf(expected, sizeof expected, "%" PRId64, values[i]);

        agg_id_set_num(&id, values[i]);
        ASSERT_TRUE(id.is_num);
        ASSERT_EQ(id.num, values[i]);
        ASSERT_EQ(id.len, n);
        ASSERT_STR_EQ(id.str, expected);
    }
}

/* The canonical text of a 4-decimal value, the way printf writes it. */
TEST(agg_fixed_format4_matches_printf)
{
    static const int64_t values[] = {
        0,    1,       9,         10,        100,       10000,        730000,
        7301, 1234567, 100000000, 999999999, INT64_MAX, INT64_MAX - 7};
    char text[32], expected[32];

    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        int64_t v = values[i];
        int zeros = 0;

        if (v == 0) {
            snprintf(expected, sizeof expected, "0");
        } else {
            while (v % 10 == 0) {
                v /= 10;
                zeros++;
            }
            snprintf(expected, sizeof expected, "%" PRId64 "e%d", v, zeros - 4);
        }
        ASSERT_EQ(fixed_format4(values[i], text, sizeof text), 0);
        ASSERT_STR_EQ(text, expected);
        /* One byte short of the text and its NUL is too small. */
        ASSERT_EQ(fixed_format4(values[i], text, strlen(expected)), -1);
    }
    ASSERT_EQ(fixed_format4(-1, text, sizeof text), -1);
}

TEST(agg_id_json_round_trips)
{
    struct agg_id id, back;
    struct strbuf sb;

    sb_init(&sb, 1024);
    agg_id_set_string(&id, "R-\"7\"\\", 6);
    ASSERT_EQ(agg_id_to_json(&id, &sb), 0);
    ASSERT_STR_EQ(sb.data, "\"R-\\\"7\\\"\\\\\"");
    ASSERT_EQ(agg_id_from_json(sb.data, sb.len, &back), 0);
    ASSERT_EQ(agg_id_cmp(&id, &back), 0);

    sb_reset(&sb);
    agg_id_set_num(&id, INT64_MIN);
    ASSERT_EQ(agg_id_to_json(&id, &sb), 0);
    ASSERT_EQ(agg_id_from_json(sb.data, sb.len, &back), 0);
    ASSERT_EQ(agg_id_cmp(&id, &back), 0);
    ASSERT_EQ(agg_id_from_json("1.0", 3, &back), -1);
    ASSERT_EQ(agg_id_from_json("\"\"", 2, &back), -1);
    sb_free(&sb);
}

/* ---- conflicts and copies ----------------------------------------------- */

TEST(agg_conflict_smaller_key_wins)
{
    struct agg_config cfg = default_config();
    cfg.allowed_lateness_s = 100;
    /* Same racer and second, other values. u-a has the earlier device
     * time, so it wins in both orders. */
    static const struct sample_spec first = {"u-b", 2000, 1,   "\"rc-11\"",
                                             "50",  "50", 5000};
    static const struct sample_spec second = {"u-a", 1000, 1,   "\"rc-11\"",
                                              "60",  "60", 5001};
    struct capture *c1 = capture_new(), *c2 = capture_new();
    struct agg *a1 = agg_for(&cfg, c1), *a2 = agg_for(&cfg, c2);

    ASSERT_EQ(feed(a1, &first), AGG_APPLIED);
    ASSERT_EQ(feed(a1, &second), AGG_CONFLICT_REPLACED);
    ASSERT_EQ(feed(a2, &second), AGG_APPLIED);
    ASSERT_EQ(feed(a2, &first), AGG_CONFLICT_KEPT);
    ASSERT_EQ(agg_close_all(a1), 0);
    ASSERT_EQ(agg_close_all(a2), 0);

    ASSERT_STR_EQ(capture_log(c1), capture_log(c2));
    ASSERT_TRUE(strstr(capture_log(c1), "\"cadence\":60") != NULL);
    ASSERT_EQ(c1->row_count, 1);
    ASSERT_EQ(c2->row_count, 1);
    ASSERT_STR_EQ(c1->rows[0].uuid, "u-a");
    ASSERT_STR_EQ(c2->rows[0].uuid, "u-a");
    agg_free(a1);
    agg_free(a2);
    capture_free(c1);
    capture_free(c2);
}

/*
 * A canonical lowercase uuid is kept in 16 bytes and an uppercase one as
 * text. Both must come back as sent, and compare by their bytes: "B" sorts
 * before "b", and "-" before any digit.
 */
TEST(agg_conflict_compares_packed_and_text_uuids)
{
    static const char lower[] = "b571e2f5-ddb9-424c-a61a-c2d77f657aa8";
    static const char upper[] = "B571E2F5-DDB9-424C-A61A-C2D77F657AA8";
    static const char lower_later[] = "b571e2f5-ddb9-424c-a61a-c2d77f657aa9";
    static const char short_text[] = "b571e2f5-ddb9-424c-a61a";
    struct agg_config cfg = default_config();
    cfg.allowed_lateness_s = 100;
    const struct {
        const char *winner, *loser;
    } pairs[] = {{upper, lower}, {lower, lower_later}, {short_text, lower}};

    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        /* Same device time, so the uuid bytes decide. */
        const struct sample_spec win = {
            pairs[i].winner, 1000, 1, "\"rc-11\"", "60", "60", 5000};
        const struct sample_spec lose = {pairs[i].loser, 1000, 1,   "\"rc-11\"",
                                         "50",           "50", 5001};
        struct capture *c1 = capture_new(), *c2 = capture_new();
        struct agg *a1 = agg_for(&cfg, c1), *a2 = agg_for(&cfg, c2);

        ASSERT_EQ(feed(a1, &lose), AGG_APPLIED);
        ASSERT_EQ(feed(a1, &win), AGG_CONFLICT_REPLACED);
        ASSERT_EQ(feed(a2, &win), AGG_APPLIED);
        ASSERT_EQ(feed(a2, &lose), AGG_CONFLICT_KEPT);
        ASSERT_STR_EQ(c1->rows[c1->row_count - 1].uuid, pairs[i].winner);
        ASSERT_STR_EQ(c2->rows[c2->row_count - 1].uuid, pairs[i].winner);
        agg_free(a1);
        agg_free(a2);
        capture_free(c1);
        capture_free(c2);
    }
}

TEST(agg_same_values_copy_unchanged)
{
    struct agg_config cfg = default_config();
    cfg.allowed_lateness_s = 100;
    /* Equal values written differently: 90 and 9e1. */
    static const struct sample_spec late_key = {"u-2", 2000, 1,   "\"rc-11\"",
                                                "90",  "10", 5000};
    static const struct sample_spec early_key = {
        "u-1", 1000, 1, "\"rc-11\"", "9e1", "10.0", 5001};
    struct capture *c1 = capture_new(), *c2 = capture_new();
    struct agg *a1 = agg_for(&cfg, c1), *a2 = agg_for(&cfg, c2);

    ASSERT_EQ(feed(a1, &early_key), AGG_APPLIED);
    ASSERT_EQ(feed(a1, &late_key), AGG_UNCHANGED);
    ASSERT_EQ(c1->sample_calls, 1);

    /* In the other order the copy is adopted silently, so both stores end
     * with the same row. */
    ASSERT_EQ(feed(a2, &late_key), AGG_APPLIED);
    ASSERT_EQ(feed(a2, &early_key), AGG_UNCHANGED);
    ASSERT_EQ(c2->sample_calls, 2);
    ASSERT_STR_EQ(c1->rows[0].uuid, "u-1");
    ASSERT_STR_EQ(c2->rows[0].uuid, "u-1");
    ASSERT_EQ(c1->rows[0].arrival_ms, c2->rows[0].arrival_ms);
    ASSERT_EQ(c1->rows[0].device_ts_ms, c2->rows[0].device_ts_ms);

    ASSERT_EQ(agg_close_all(a1), 0);
    ASSERT_EQ(agg_close_all(a2), 0);
    ASSERT_STR_EQ(capture_log(c1), capture_log(c2));
    agg_free(a1);
    agg_free(a2);
    capture_free(c1);
    capture_free(c2);
}

/* ---- closing ------------------------------------------------------------ */

static struct sample_spec rider_second(int32_t second, int64_t arrival_ms)
{
    static char uuids[64][16];
    struct sample_spec s = {uuids[second % 64], 1000 + second, second,
                            "\"rc-11\"",        "80",          "20",
                            arrival_ms};
    snprintf(uuids[second % 64], sizeof uuids[0], "u-%d", (int)second);
    return s;
}

TEST(agg_closes_by_allowed_lateness)
{
    struct agg_config cfg = default_config();
    cfg.allowed_lateness_s = 2;
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);

    for (int32_t s = 1; s <= 2; s++) {
        struct sample_spec spec = rider_second(s, 1000 * s);
        ASSERT_EQ(feed(agg, &spec), AGG_APPLIED);
    }
    ASSERT_EQ(c->message_count, 0);
    struct sample_spec third = rider_second(3, 3000);
    feed(agg, &third);
    ASSERT_EQ(c->message_count, 1);
    ASSERT_EQ(count_lines_with(capture_log(c), "\"second\":1,\"revision\":0"),
              1);
    struct sample_spec fifth = rider_second(5, 5000);
    feed(agg, &fifth);
    ASSERT_EQ(c->message_count, 3);
    ASSERT_EQ(count_lines_with(capture_log(c), "\"second\":3,\"revision\":0"),
              1);
    agg_free(agg);
    capture_free(c);
}

TEST(agg_closes_idle_race)
{
    struct agg_config cfg = default_config();
    cfg.allowed_lateness_s = 5;
    cfg.idle_close_s = 10;
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);

    struct sample_spec one = rider_second(1, 1000);
    struct sample_spec two = rider_second(2, 2000);
    feed(agg, &one);
    feed(agg, &two);
    ASSERT_EQ(agg_advance(agg, 11999), 0);
    ASSERT_EQ(c->message_count, 0);
    ASSERT_EQ(agg_advance(agg, 12000), 0);
    ASSERT_EQ(c->message_count, 2);
    ASSERT_EQ(agg_stream_time(agg), 12000);

    /* Closing is done once: nothing more to publish. */
    ASSERT_EQ(agg_advance(agg, 99000), 0);
    ASSERT_EQ(agg_close_all(agg), 0);
    ASSERT_EQ(c->message_count, 2);
    agg_free(agg);
    capture_free(c);
}

TEST(agg_publishes_from_first_second)
{
    struct agg_config cfg = default_config();
    cfg.allowed_lateness_s = 0;
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);

    /* The race starts at second 3 and skips second 5. */
    struct sample_spec three = rider_second(3, 1000);
    struct sample_spec four = rider_second(4, 2000);
    struct sample_spec six = rider_second(6, 3000);
    feed(agg, &three);
    feed(agg, &four);
    feed(agg, &six);
    ASSERT_EQ(c->message_count, 4);
    ASSERT_EQ(count_lines_with(capture_log(c), "\"second\":1,"), 0);
    ASSERT_EQ(count_lines_with(capture_log(c), "\"second\":2,"), 0);
    /* Second 5 shows the rider's second-4 sample and total. */
    ASSERT_EQ(
        count_lines_with(capture_log(c), "\"raceId\":5402746,\"second\":5,"),
        1);
    ASSERT_EQ(count_lines_with(capture_log(c), "\"classId\":1,\"second\":4,"),
              2);
    agg_free(agg);
    capture_free(c);
}

static void feed_race(struct agg *agg, const char *race_json,
                      int64_t arrival_ms)
{
    char json[512];
    struct agg_record rec;
    enum agg_outcome outcome;

    snprintf(json, sizeof json,
             "{\"uuid\":\"u-1\",\"event\":\"update\","
             "\"deviceTimestamp\":1,\"second\":1,\"raceId\":%s,"
             "\"name\":\"A\",\"racerId\":1,\"classId\":1,"
             "\"cadence\":1,\"resistance\":1}",
             race_json);
    parse_ok(json, &rec);
    ASSERT_EQ(agg_apply(agg, &rec, arrival_ms, &outcome), 0);
    ASSERT_EQ(outcome, AGG_APPLIED);
}

TEST(agg_idle_races_close_in_id_order)
{
    struct agg_config cfg = default_config();
    cfg.allowed_lateness_s = 5;
    cfg.idle_close_s = 10;
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);

    feed_race(agg, "\"R-b\"", 1000);
    feed_race(agg, "3", 2000);
    feed_race(agg, "\"R-a\"", 3000);
    ASSERT_EQ(agg_advance(agg, 20000), 0);
    ASSERT_EQ(c->message_count, 3);
    const char *log = capture_log(c);
    const char *r3 = strstr(log, "\"raceId\":3,");
    const char *ra = strstr(log, "\"raceId\":\"R-a\"");
    const char *rb = strstr(log, "\"raceId\":\"R-b\"");
    ASSERT_TRUE(r3 != NULL);
    ASSERT_TRUE(ra != NULL);
    ASSERT_TRUE(rb != NULL);
    ASSERT_TRUE(r3 < ra);
    ASSERT_TRUE(ra < rb);
    agg_free(agg);
    capture_free(c);
}

TEST(agg_flush_sends_changed_races)
{
    struct agg_config cfg = default_config();
    cfg.allowed_lateness_s = 5;
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);

    feed_race(agg, "\"R-b\"", 1000);
    feed_race(agg, "3", 2000);
    ASSERT_EQ(agg_flush(agg), 0);
    ASSERT_EQ(c->state_count, 2);
    ASSERT_STR_EQ(c->states[0].json,
                  "{\"raceId\":3,\"firstSecond\":1,\"latestSecond\":1,"
                  "\"publishedFrom\":0,\"publishedThrough\":0,"
                  "\"activityMs\":2000,\"revisions\":[],"
                  "\"resultsRevision\":-1}");

    /* Nothing changed: nothing is sent. Then only the changed race. */
    c->state_count = 0;
    ASSERT_EQ(agg_flush(agg), 0);
    ASSERT_EQ(c->state_count, 0);
    feed_race(agg, "\"R-a\"", 3000);
    ASSERT_EQ(agg_flush(agg), 0);
    ASSERT_EQ(c->state_count, 1);
    ASSERT_TRUE(strstr(c->states[0].json, "\"R-a\"") != NULL);
    agg_free(agg);
    capture_free(c);
}

/* ---- quarantine --------------------------------------------------------- */

TEST(agg_quarantines_future_skew)
{
    struct agg_config cfg = default_config();
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);

    /* 60 s of skew is allowed: device time 61 s after arrival is not. */
    struct sample_spec ahead = {"u-1", 61001, 1, "\"rc-11\"", "1", "1", 0};
    struct sample_spec edge = {"u-2", 60000, 1, "\"rc-11\"", "1", "1", 0};
    ASSERT_EQ(feed(agg, &ahead), AGG_QUARANTINED_SKEW);
    ASSERT_EQ(c->sample_calls, 0);
    ASSERT_EQ(agg_flush(agg), 0);
    ASSERT_EQ(c->state_count, 0);
    ASSERT_EQ(feed(agg, &edge), AGG_APPLIED);
    agg_free(agg);
    capture_free(c);
}

TEST(agg_quarantines_second_jump)
{
    struct agg_config cfg = default_config();
    cfg.max_second_jump = 10;
    cfg.allowed_lateness_s = 100;
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);

    struct sample_spec five = rider_second(5, 1000);
    struct sample_spec sixteen = rider_second(16, 2000);
    struct sample_spec fifteen = rider_second(15, 3000);
    ASSERT_EQ(feed(agg, &five), AGG_APPLIED);
    ASSERT_EQ(feed(agg, &sixteen), AGG_QUARANTINED_JUMP);
    ASSERT_EQ(c->sample_calls, 1);
    ASSERT_EQ(feed(agg, &fifteen), AGG_APPLIED);
    agg_free(agg);
    capture_free(c);
}

/* ---- late records ------------------------------------------------------- */

/* Rider rc-11 rides seconds 1..5 with lateness 0, so 1..5 are published. */
static struct agg *late_setup(const struct agg_config *cfg, struct capture *c)
{
    struct agg *agg = agg_for(cfg, c);
    for (int32_t s = 1; s <= 5; s++) {
        struct sample_spec spec = rider_second(s, 1000 * s);
        ASSERT_EQ(feed(agg, &spec), AGG_APPLIED);
    }
    ASSERT_EQ(c->message_count, 5);
    return agg;
}

TEST(agg_late_record_amends_revision)
{
    struct agg_config cfg = default_config();
    struct capture *c = capture_new();
    struct agg *agg = late_setup(&cfg, c);

    struct sample_spec late = {"u-x", 1003, 3, "\"rc-12\"", "10", "10", 6000};
    ASSERT_EQ(feed(agg, &late), AGG_LATE_AMENDED);
    ASSERT_EQ(c->message_count, 8);
    ASSERT_EQ(count_lines_with(capture_log(c), "\"revision\":1"), 3);
    ASSERT_EQ(count_lines_with(capture_log(c),
                               "\"second\":3,\"revision\":1,\"ts\":6000"),
              1);
    ASSERT_EQ(count_lines_with(capture_log(c), "\"second\":5,\"revision\":1"),
              1);

    /* A second amendment of second 4 raises 4 and 5 to revision 2. */
    struct sample_spec again = {"u-y", 1004, 4, "\"rc-12\"", "10", "10", 7000};
    ASSERT_EQ(feed(agg, &again), AGG_LATE_AMENDED);
    ASSERT_EQ(count_lines_with(capture_log(c), "\"revision\":2"), 2);

    ASSERT_EQ(agg_flush(agg), 0);
    ASSERT_EQ(c->state_count, 1);
    ASSERT_STR_EQ(c->states[0].json,
                  "{\"raceId\":5402746,\"firstSecond\":1,\"latestSecond\":5,"
                  "\"publishedFrom\":1,\"publishedThrough\":5,"
                  "\"activityMs\":7000,\"revisions\":[[3,1],[4,2],[5,2]],"
                  "\"resultsRevision\":-1}");
    agg_free(agg);
    capture_free(c);
}

TEST(agg_late_copy_republishes_nothing)
{
    struct agg_config cfg = default_config();
    struct capture *c = capture_new();
    struct agg *agg = late_setup(&cfg, c);

    struct sample_spec copy = rider_second(2, 9000);
    ASSERT_EQ(feed(agg, &copy), AGG_UNCHANGED);
    ASSERT_EQ(c->message_count, 5);
    agg_free(agg);
    capture_free(c);
}

TEST(agg_late_conflict_winner_amends)
{
    struct agg_config cfg = default_config();
    struct capture *c = capture_new();
    struct agg *agg = late_setup(&cfg, c);

    /* Device time 1 beats the stored 1002, and device time 5000 loses. */
    struct sample_spec winner = {"u-w", 1, 2, "\"rc-11\"", "99", "20", 8000};
    struct sample_spec loser = {"u-l", 5000, 2, "\"rc-11\"", "1", "20", 8001};
    ASSERT_EQ(feed(agg, &loser), AGG_CONFLICT_KEPT);
    ASSERT_EQ(c->message_count, 5);
    ASSERT_EQ(feed(agg, &winner), AGG_LATE_AMENDED);
    ASSERT_EQ(c->message_count, 9);
    ASSERT_EQ(count_lines_with(capture_log(c), "\"revision\":1"), 4);
    ASSERT_EQ(count_lines_with(capture_log(c), "\"cadence\":99"), 1);
    agg_free(agg);
    capture_free(c);
}

TEST(agg_late_beyond_window_too_late)
{
    struct agg_config cfg = default_config();
    cfg.amend_window_s = 2;
    struct capture *c = capture_new();
    struct agg *agg = late_setup(&cfg, c);

    struct sample_spec old = {"u-x", 1002, 2, "\"rc-12\"", "10", "10", 6000};
    struct sample_spec edge = {"u-y", 1003, 3, "\"rc-12\"", "10", "10", 6000};
    ASSERT_EQ(feed(agg, &old), AGG_TOO_LATE);
    ASSERT_EQ(c->message_count, 5);
    ASSERT_EQ(c->sample_calls, 5);
    ASSERT_EQ(feed(agg, &edge), AGG_LATE_AMENDED);
    agg_free(agg);
    capture_free(c);
}

TEST(agg_late_drop_policy_drops)
{
    struct agg_config cfg = default_config();
    cfg.late_policy = AGG_LATE_DROP;
    struct capture *c = capture_new();
    struct agg *agg = late_setup(&cfg, c);

    struct sample_spec late = {"u-x", 1005, 5, "\"rc-12\"", "10", "10", 6000};
    ASSERT_EQ(feed(agg, &late), AGG_LATE_DROPPED);
    ASSERT_EQ(c->message_count, 5);
    ASSERT_EQ(c->sample_calls, 5);
    agg_free(agg);
    capture_free(c);
}

TEST(agg_late_below_first_published)
{
    struct agg_config cfg = default_config();
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);

    struct sample_spec three = rider_second(3, 1000);
    struct sample_spec four = rider_second(4, 2000);
    feed(agg, &three);
    feed(agg, &four);
    ASSERT_EQ(c->message_count, 2);

    /* Second 1 was never published: 1 and 2 go out at revision 0 and the
     * published 3 and 4 at revision 1. */
    struct sample_spec one = {"u-z", 1001, 1, "\"rc-12\"", "10", "10", 3000};
    ASSERT_EQ(feed(agg, &one), AGG_LATE_AMENDED);
    ASSERT_EQ(c->message_count, 6);
    ASSERT_EQ(count_lines_with(capture_log(c), "\"second\":1,\"revision\":0"),
              1);
    ASSERT_EQ(count_lines_with(capture_log(c), "\"second\":2,\"revision\":0"),
              1);
    ASSERT_EQ(count_lines_with(capture_log(c), "\"second\":4,\"revision\":1"),
              1);
    agg_free(agg);
    capture_free(c);
}

/* ---- restart ------------------------------------------------------------ */

/* A race with a tie, a conflict, a copy with a smaller uuid, late
 * amendments on both sides of the restart and an idle close. */
static const struct sample_spec restart_samples[] = {
    {"u-01", 1001, 1, "\"rc-11\"", "80", "12.1", 1000},
    {"u-02", 1001, 1, "\"rc-12\"", "80", "12.1", 2000},
    {"u-03", 1002, 2, "\"rc-11\"", "81", "12.2", 3000},
    {"u-04", 1001, 1, "7", "0", "0", 4000},
    {"u-05", 1003, 3, "\"rc-11\"", "82.5", "1.8011670033376514e-308", 5000},
    {"u-06", 1002, 2, "\"rc-12\"", "79", "12.3", 6000},
    {"u-07", 1004, 4, "\"rc-11\"", "83", "13", 7000},
    {"u-08", 1000, 2, "\"rc-12\"", "70", "12.3", 8000},
    {"u-09", 1005, 5, "\"rc-11\"", "84", "13", 9000},
    {"u-00", 1001, 1, "\"rc-11\"", "8e1", "12.10", 10000},
    {"u-10", 1006, 6, "\"rc-11\"", "85", "13", 11000},
    {"u-11", 1003, 3, "7", "1", "1", 12000},
    {"u-12", 1007, 7, "\"rc-12\"", "90", "14", 60000},
    {"u-13", 1008, 8, "\"rc-12\"", "91", "14", 61000},
};

static struct agg_config restart_config(void)
{
    struct agg_config cfg = default_config();
    cfg.allowed_lateness_s = 2;
    cfg.idle_close_s = 20;
    return cfg;
}

/* Load what the capture stored into an empty aggregator, like a restart. */
static void restore_store(struct agg *agg, const struct capture *store,
                          int64_t stream_time_ms)
{
    for (int i = 0; i < store->row_count; i++) {
        const struct stored_row *r = &store->rows[i];
        struct agg_sample_row row = {
            &r->race,      &r->racer,        &r->class_id,
            r->second,     r->name,          r->name_len,
            r->uuid,       r->uuid_len,      r->device_ts_ms,
            r->arrival_ms, r->cadence4,      r->resistance4,
            r->output4,    r->cadence_exact, r->resistance_exact,
            r->final,
        };
        ASSERT_EQ(agg_restore_sample(agg, &row), 0);
    }
    for (int i = 0; i < store->state_count; i++)
        ASSERT_EQ(
            agg_restore_race(agg, store->states[i].json, store->states[i].len),
            0);
    for (int i = 0; i < store->class_state_count; i++)
        ASSERT_EQ(agg_restore_class(agg, store->class_states[i].json,
                                    store->class_states[i].len),
                  0);
    agg_restore_stream_time(agg, stream_time_ms);
    ASSERT_EQ(agg_restore_finish(agg), 0);
}

/* Build a new aggregator from what the capture stored, like a restart. */
static struct agg *restore_from(const struct agg_config *cfg,
                                struct capture *store, struct capture *out,
                                int64_t stream_time_ms)
{
    struct agg *agg = agg_for(cfg, out);

    restore_store(agg, store, stream_time_ms);
    return agg;
}

TEST(agg_restore_matches_uninterrupted_run)
{
    struct agg_config cfg = restart_config();
    size_t n = sizeof restart_samples / sizeof restart_samples[0];
    size_t half = n / 2 + 1;
    struct capture *whole = capture_new();
    struct agg *agg = agg_for(&cfg, whole);

    feed_all(agg, restart_samples, n);
    ASSERT_EQ(agg_advance(agg, 100000), 0);
    ASSERT_EQ(agg_flush(agg), 0);
    agg_free(agg);

    /* First half, flush as at a batch commit, then "crash". */
    struct capture *before = capture_new();
    agg = agg_for(&cfg, before);
    feed_all(agg, restart_samples, half);
    ASSERT_EQ(agg_flush(agg), 0);
    int64_t stream_time = agg_stream_time(agg);
    agg_free(agg);

    /* The restarted aggregator writes into the same store model. */
    agg = restore_from(&cfg, before, before, stream_time);
    feed_all(agg, restart_samples + half, n - half);
    ASSERT_EQ(agg_advance(agg, 100000), 0);
    ASSERT_EQ(agg_flush(agg), 0);
    agg_free(agg);

    ASSERT_TRUE(whole->message_count > 10);
    ASSERT_STR_EQ(capture_log(before), capture_log(whole));
    ASSERT_EQ(before->row_count, whole->row_count);
    for (int i = 0; i < whole->row_count; i++) {
        fprintf(stderr, "row %d\n", i);
        ASSERT_MEM_EQ(&before->rows[i], sizeof before->rows[i], &whole->rows[i],
                      sizeof whole->rows[i]);
    }
    ASSERT_EQ(before->state_count, whole->state_count);
    for (int i = 0; i < whole->state_count; i++)
        ASSERT_STR_EQ(before->states[i].json, whole->states[i].json);
    capture_free(whole);
    capture_free(before);
}

TEST(agg_restore_rejects_bad_state)
{
    struct agg_config cfg = default_config();
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);
    static const char *const docs[] = {
        "",
        "[]",
        "{\"raceId\":1}",
        "{\"raceId\":1,\"firstSecond\":1,\"latestSecond\":3,"
        "\"publishedFrom\":1,\"publishedThrough\":4,\"activityMs\":0,"
        "\"revisions\":[]}",
        "{\"raceId\":1,\"firstSecond\":1,\"latestSecond\":3,"
        "\"publishedFrom\":1,\"publishedThrough\":2,\"activityMs\":0,"
        "\"revisions\":[[3,1]]}",
        "{\"raceId\":1,\"firstSecond\":1,\"latestSecond\":3601,"
        "\"publishedFrom\":0,\"publishedThrough\":0,\"activityMs\":0,"
        "\"revisions\":[]}",
    };

    for (size_t i = 0; i < sizeof docs / sizeof docs[0]; i++) {
        fprintf(stderr, "case: %s\n", docs[i]);
        ASSERT_EQ(agg_restore_race(agg, docs[i], strlen(docs[i])), -EINVAL);
    }
    agg_free(agg);
    capture_free(c);
}

/* ---- capacity ----------------------------------------------------------- */

TEST(agg_slot_stays_compact)
{
    /* A rider's second with a canonical uuid, both times within about 24
     * days of the rider's first sample and 4-decimal values takes one
     * 40-byte slot and no arena bytes. */
    ASSERT_TRUE(sizeof(struct slot) <= 40);
}

/* ---- slot storage ------------------------------------------------------- */

/* An aggregator with one race and one rider, for storing samples directly. */
struct slot_fixture {
    struct capture *capture;
    struct agg *agg;
    struct race *race;
    uint32_t rider;
};

static void slot_fixture_open(struct slot_fixture *f)
{
    struct agg_config cfg = default_config();
    struct agg_id race_id, racer;

    f->capture = capture_new();
    f->agg = agg_for(&cfg, f->capture);
    agg_id_set_num(&race_id, 1);
    agg_id_set_num(&racer, 7);
    ASSERT_EQ(race_get(f->agg, &race_id, &f->race), 0);
    int64_t position = race_rider(f->race, &racer);
    ASSERT_EQ(position, 0);
    f->rider = (uint32_t)position;
}

static void slot_fixture_close(struct slot_fixture *f)
{
    agg_free(f->agg);
    capture_free(f->capture);
}

/* Store one sample of class 1, named Rider, through race_store_sample. */
static void store_direct(struct slot_fixture *f, int32_t second,
                         const char *uuid, int64_t device_ts_ms,
                         int64_t arrival_ms, const char *cadence,
                         const char *resistance)
{
    struct agg_id class_id;
    struct sample_in in;
    bool exact;

    agg_id_set_num(&class_id, 1);
    memset(&in, 0, sizeof in);
    in.second = second;
    in.class_id = &class_id;
    in.name = "Rider";
    in.name_len = 5;
    in.uuid = uuid;
    in.uuid_len = strlen(uuid);
    in.device_ts_ms = device_ts_ms;
    in.arrival_ms = arrival_ms;
    in.cadence_exact = cadence;
    in.resistance_exact = resistance;
    ASSERT_EQ(fixed_round4(cadence, &in.cadence4, &exact), 0);
    ASSERT_EQ(fixed_round4(resistance, &in.resistance4, &exact), 0);
    ASSERT_EQ(agg_output4(cadence, resistance, &in.output4), 0);
    ASSERT_EQ(sample_in_check(f->agg, &in), 0);
    ASSERT_EQ(race_store_sample(f->agg, f->race, f->rider, &in), 0);
}

/* Read the sample at second back as the row the store would get. */
static void read_direct(struct slot_fixture *f, int32_t second,
                        struct stored_row *out)
{
    char uuid[SLOT_UUID_CHARS + 1];
    char cadence[AGG_MAX_EXACT_TEXT], resistance[AGG_MAX_EXACT_TEXT];
    const struct rider *rider = &f->race->riders[f->rider];
    struct agg_sample_row row;

    ASSERT_TRUE(second <= rider->slot_cap);
    ASSERT_TRUE(rider_slot(rider, second)->flags & SLOT_PRESENT);
    slot_to_row(f->race, rider, rider_slot(rider, second), second, &row, uuid,
                cadence, resistance, sizeof cadence);
    memset(out, 0, sizeof *out);
    ASSERT_TRUE(row.uuid_len < sizeof out->uuid);
    memcpy(out->uuid, row.uuid, row.uuid_len);
    out->uuid_len = row.uuid_len;
    out->device_ts_ms = row.device_ts_ms;
    out->arrival_ms = row.arrival_ms;
    out->cadence4 = row.cadence4;
    out->resistance4 = row.resistance4;
    out->output4 = row.output4;
    snprintf(out->cadence_exact, sizeof out->cadence_exact, "%s",
             row.cadence_exact);
    snprintf(out->resistance_exact, sizeof out->resistance_exact, "%s",
             row.resistance_exact);
}

static uint8_t slot_flags(const struct slot_fixture *f, int32_t second)
{
    return rider_slot(&f->race->riders[f->rider], second)->flags;
}

#define UUID_A "b571e2f5-ddb9-424c-a61a-c2d77f657aa8"

/*
 * The first sample sets the rider's base times. Offsets that fit in 32
 * bits stay in the slot, the rest go to the arena, and every value reads
 * back exactly: the limits of both ranges, negative offsets and the
 * extremes of int64.
 */
TEST(agg_slot_times_round_trip)
{
    const int64_t base_device = INT64_C(1767225600000);
    const int64_t base_arrival = INT64_C(1767225601000);
    const struct {
        int64_t offset_or_value;
        bool absolute; /* offset_or_value is the value itself */
        bool wide;
    } cases[] = {
        {0, false, false},
        {1, false, false},
        {-1, false, false},
        {INT32_MAX, false, false},
        {(int64_t)INT32_MAX + 1, false, true},
        {INT32_MIN, false, false},
        {(int64_t)INT32_MIN - 1, false, true},
        {INT64_C(40) * 24 * 3600 * 1000, false, true},
        {-INT64_C(40) * 24 * 3600 * 1000, false, true},
        {0, true, true},
        {INT64_MAX, true, true},
        {INT64_MIN, true, true},
        {-1, true, true},
    };
    const size_t n = sizeof cases / sizeof cases[0];
    struct slot_fixture f;
    struct stored_row row;

    slot_fixture_open(&f);
    store_direct(&f, 1, UUID_A, base_device, base_arrival, "9e1", "1e1");
    for (size_t i = 0; i < n; i++) {
        int64_t device = cases[i].absolute
                             ? cases[i].offset_or_value
                             : base_device + cases[i].offset_or_value;
        /* The arrival time takes the case with the opposite sign. */
        int64_t arrival = cases[i].absolute
                              ? cases[i].offset_or_value
                              : base_arrival - cases[i].offset_or_value;
        bool arrival_wide = cases[i].wide;
        if (!cases[i].absolute) {
            int64_t arrival_offset = -cases[i].offset_or_value;
            arrival_wide =
                arrival_offset < INT32_MIN || arrival_offset > INT32_MAX;
        }
        int32_t second = (int32_t)i + 2;

        fprintf(stderr, "case %zu: device %" PRId64 " arrival %" PRId64 "\n", i,
                device, arrival);
        store_direct(&f, second, UUID_A, device, arrival, "9e1", "1e1");
        read_direct(&f, second, &row);
        ASSERT_EQ(row.device_ts_ms, device);
        ASSERT_EQ(row.arrival_ms, arrival);
        ASSERT_EQ((slot_flags(&f, second) & SLOT_WIDE_DEVICE) != 0,
                  cases[i].wide);
        ASSERT_EQ((slot_flags(&f, second) & SLOT_WIDE_ARRIVAL) != 0,
                  arrival_wide);
    }

    /* Every value still reads back after the arena grew. */
    for (size_t i = 0; i < n; i++) {
        int32_t second = (int32_t)i + 2;
        int64_t device = cases[i].absolute
                             ? cases[i].offset_or_value
                             : base_device + cases[i].offset_or_value;
        read_direct(&f, second, &row);
        ASSERT_EQ(row.device_ts_ms, device);
    }
    read_direct(&f, 1, &row);
    ASSERT_EQ(row.device_ts_ms, base_device);
    ASSERT_EQ(row.arrival_ms, base_arrival);
    slot_fixture_close(&f);
}

/*
 * Replacing a sample switches each part between the slot and the arena in
 * both directions, and a part that stays in the arena is written over in
 * place when it fits, so repeated replacements do not grow the arena.
 */
TEST(agg_slot_replacements_switch_storage)
{
    static const char text_long[] = "B571E2F5-DDB9-424C-A61A-C2D77F657AA8";
    static const char text_short[] = "uuid-short";
    const int64_t base = INT64_C(1767225600000);
    const int64_t far = base + INT64_C(100) * 24 * 3600 * 1000;
    struct slot_fixture f;
    struct stored_row row;

    slot_fixture_open(&f);
    store_direct(&f, 1, UUID_A, base, base, "9e1", "1e1");

    /* Wide times, a text uuid and inexact values. */
    store_direct(&f, 2, text_long, far, far, "9000001e-5", "10123456e-6");
    uint32_t arena_len = f.race->riders[0].arena_len;
    read_direct(&f, 2, &row);
    ASSERT_EQ(row.device_ts_ms, far);
    ASSERT_EQ(row.arrival_ms, far);
    ASSERT_STR_EQ(row.uuid, text_long);
    ASSERT_STR_EQ(row.cadence_exact, "9000001e-5");
    ASSERT_STR_EQ(row.resistance_exact, "10123456e-6");
    ASSERT_EQ(slot_flags(&f, 2) & (SLOT_WIDE_DEVICE | SLOT_WIDE_ARRIVAL |
                                   SLOT_UUID_TEXT | SLOT_EXACT),
              SLOT_WIDE_DEVICE | SLOT_WIDE_ARRIVAL | SLOT_UUID_TEXT |
                  SLOT_EXACT);

    /* Other wide times and a shorter text uuid: written in place. */
    store_direct(&f, 2, text_short, far + 1, INT64_MIN, "9e1", "1e1");
    ASSERT_EQ(f.race->riders[0].arena_len, arena_len);
    read_direct(&f, 2, &row);
    ASSERT_EQ(row.device_ts_ms, far + 1);
    ASSERT_EQ(row.arrival_ms, INT64_MIN);
    ASSERT_STR_EQ(row.uuid, text_short);
    ASSERT_STR_EQ(row.cadence_exact, "9e1");
    ASSERT_STR_EQ(row.resistance_exact, "1e1");
    ASSERT_EQ(slot_flags(&f, 2) & SLOT_EXACT, 0);

    /* Back to narrow times and a packed uuid. */
    store_direct(&f, 2, UUID_A, base - 5, base + 5, "91", "11");
    read_direct(&f, 2, &row);
    ASSERT_EQ(row.device_ts_ms, base - 5);
    ASSERT_EQ(row.arrival_ms, base + 5);
    ASSERT_STR_EQ(row.uuid, UUID_A);
    ASSERT_EQ(slot_flags(&f, 2) & (SLOT_WIDE_DEVICE | SLOT_WIDE_ARRIVAL |
                                   SLOT_UUID_TEXT | SLOT_EXACT),
              0);

    /* And to the arena again, with a uuid longer than the old text. */
    store_direct(&f, 2, text_long, INT64_MAX, 0, "9000001e-5", "1e1");
    read_direct(&f, 2, &row);
    ASSERT_EQ(row.device_ts_ms, INT64_MAX);
    ASSERT_EQ(row.arrival_ms, 0);
    ASSERT_STR_EQ(row.uuid, text_long);
    ASSERT_STR_EQ(row.cadence_exact, "9000001e-5");
    ASSERT_STR_EQ(row.resistance_exact, "1e1");
    slot_fixture_close(&f);
}

/* Inexact values stored at seconds out of order each keep their own
 * texts, and a second that turns exact drops back to the 4-decimal form. */
TEST(agg_slot_exact_texts_by_second)
{
    const int32_t seconds[] = {9, 2, 30, 5, 2, 1};
    const char *const cadences[] = {"9000009e-5", "9000002e-5",  "9000031e-5",
                                    "9000005e-5", "90000021e-6", "9000001e-5"};
    const size_t n = sizeof seconds / sizeof seconds[0];
    struct slot_fixture f;
    struct stored_row row;

    slot_fixture_open(&f);
    for (size_t i = 0; i < n; i++)
        store_direct(&f, seconds[i], UUID_A, 1000, 1000, cadences[i], "1e1");
    const struct {
        int32_t second;
        const char *cadence;
    } want[] = {{1, "9000001e-5"},
                {2, "90000021e-6"},
                {5, "9000005e-5"},
                {9, "9000009e-5"},
                {30, "9000031e-5"}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        read_direct(&f, want[i].second, &row);
        ASSERT_STR_EQ(row.cadence_exact, want[i].cadence);
        ASSERT_STR_EQ(row.resistance_exact, "1e1");
    }

    store_direct(&f, 5, UUID_A, 1000, 1000, "901e-1", "1e1");
    read_direct(&f, 5, &row);
    ASSERT_STR_EQ(row.cadence_exact, "901e-1");
    read_direct(&f, 9, &row);
    ASSERT_STR_EQ(row.cadence_exact, "9000009e-5");
    slot_fixture_close(&f);
}

/*
 * The running totals come from a prefix every PREFIX_SPAN seconds plus the
 * slots after it. They must match a plain sum at every second, also after
 * a sample inside an old span changes and after queries that go back.
 */
TEST(agg_slot_totals_match_plain_sum)
{
    const int32_t last = 5 * PREFIX_SPAN + 3;
    int64_t output[5 * PREFIX_SPAN + 4] = {0};
    struct slot_fixture f;
    uint32_t state = 12345;

    slot_fixture_open(&f);
    for (int round = 0; round < 6; round++) {
        /* Store a few samples, some in spans that are already summed. */
        for (int k = 0; k < 20; k++) {
            state = state * 1103515245u + 12345u;
            int32_t second = (int32_t)(state >> 8) % last + 1;
            int64_t cadence4 = (int64_t)((state >> 16) % 2000000);
            char text[AGG_MAX_EXACT_TEXT];
            ASSERT_EQ(fixed_format4(cadence4, text, sizeof text), 0);
            store_direct(&f, second, UUID_A, 1000 + second, 1000 + second, text,
                         "1e1");
            ASSERT_EQ(agg_output4(text, "1e1", &output[second]), 0);
        }
        struct rider *rider = &f.race->riders[f.rider];
        for (int pass = 0; pass < 2; pass++) {
            /* Forward on the first pass, backward on the second. */
            for (int32_t i = 1; i <= last; i++) {
                int32_t second = pass == 0 ? i : last + 1 - i;
                int64_t want_total = 0, total;
                int32_t want_latest = 0, latest;
                int32_t upto =
                    second < rider->max_second ? second : rider->max_second;
                for (int32_t t = 1; t <= upto; t++) {
                    if (t <= rider->slot_cap &&
                        (rider_slot(rider, t)->flags & SLOT_PRESENT)) {
                        want_total += output[t];
                        want_latest = t;
                    }
                }
                if (upto < rider->min_second)
                    continue;
                rider_total_at(rider, second, &total, &latest);
                ASSERT_EQ(total, want_total);
                ASSERT_EQ(latest, want_latest);
            }
        }
    }
    slot_fixture_close(&f);
}

/* Seconds on both sides of block edges, up to max_seconds, each keep
 * their own sample, and the blocks grow only as far as needed. */
TEST(agg_slot_blocks_cover_edges)
{
    const int32_t seconds[] = {
        3600, 1, SLOT_BLOCK, SLOT_BLOCK + 1, 2 * SLOT_BLOCK, 2 * SLOT_BLOCK + 1,
        3599};
    const size_t n = sizeof seconds / sizeof seconds[0];
    struct slot_fixture f;
    struct stored_row row;

    slot_fixture_open(&f);
    store_direct(&f, 2, UUID_A, 1000, 5000, "9e1", "1e1");
    ASSERT_EQ(f.race->riders[0].slot_cap, SLOT_BLOCK);
    ASSERT_EQ(f.race->riders[0].block_count, 1);
    store_direct(&f, SLOT_BLOCK, UUID_A, 1000 + SLOT_BLOCK, 5000 + SLOT_BLOCK,
                 "9e1", "1e1");
    ASSERT_EQ(f.race->riders[0].block_count, 1);
    store_direct(&f, SLOT_BLOCK + 1, UUID_A, 1001 + SLOT_BLOCK,
                 5001 + SLOT_BLOCK, "9e1", "1e1");
    ASSERT_EQ(f.race->riders[0].block_count, 2);
    ASSERT_EQ(f.race->riders[0].slot_cap, 2 * SLOT_BLOCK);
    for (size_t i = 0; i < n; i++)
        store_direct(&f, seconds[i], UUID_A, 1000 + seconds[i],
                     5000 + seconds[i], "9e1", "1e1");
    ASSERT_EQ(f.race->riders[0].block_count,
              (3600 + SLOT_BLOCK - 1) / SLOT_BLOCK);
    for (size_t i = 0; i < n; i++) {
        read_direct(&f, seconds[i], &row);
        ASSERT_EQ(row.device_ts_ms, 1000 + seconds[i]);
        ASSERT_EQ(row.arrival_ms, 5000 + seconds[i]);
    }
    ASSERT_EQ(slot_flags(&f, 3) & SLOT_PRESENT, 0);
    ASSERT_EQ(slot_flags(&f, SLOT_BLOCK + 2) & SLOT_PRESENT, 0);

    int64_t total;
    int32_t latest;
    int64_t output4;
    ASSERT_EQ(agg_output4("9e1", "1e1", &output4), 0);
    rider_total_at(&f.race->riders[0], 3600, &total, &latest);
    ASSERT_EQ(total, (int64_t)(n + 1) * output4);
    ASSERT_EQ(latest, 3600);
    rider_total_at(&f.race->riders[0], SLOT_BLOCK, &total, &latest);
    ASSERT_EQ(total, 3 * output4);
    ASSERT_EQ(latest, SLOT_BLOCK);
    slot_fixture_close(&f);
}

/* Conflicts between device times far apart, which the slots keep in the
 * arena, still pick the smaller deviceTimestamp. */
TEST(agg_conflict_far_device_times)
{
    struct agg_config cfg = default_config();
    cfg.allowed_lateness_s = 100;
    const int64_t arrival = INT64_C(200000000000000);
    static const struct sample_spec first = {
        UUID_A, 1000, 1, "\"rc-11\"", "50", "50", INT64_C(200000000000000)};
    static const struct sample_spec late = {
        UUID_A, INT64_C(199999999999000), 2, "\"rc-11\"", "50",
        "50",   INT64_C(200000000000001)};
    static const struct sample_spec earlier = {
        UUID_A, INT64_C(100000000000000), 2, "\"rc-11\"", "60",
        "60",   INT64_C(200000000000002)};
    static const struct sample_spec later = {
        UUID_A, INT64_C(199999999999999), 2, "\"rc-11\"", "70",
        "70",   INT64_C(200000000000003)};
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);

    ASSERT_EQ(feed(agg, &first), AGG_APPLIED);
    ASSERT_EQ(feed(agg, &late), AGG_APPLIED);
    ASSERT_EQ(feed(agg, &earlier), AGG_CONFLICT_REPLACED);
    ASSERT_EQ(feed(agg, &later), AGG_CONFLICT_KEPT);
    ASSERT_EQ(c->row_count, 2);
    ASSERT_EQ(c->rows[0].device_ts_ms, 1000);
    ASSERT_EQ(c->rows[0].arrival_ms, arrival);
    ASSERT_EQ(c->rows[1].device_ts_ms, INT64_C(100000000000000));
    ASSERT_EQ(c->rows[1].arrival_ms, INT64_C(200000000000002));
    agg_free(agg);
    capture_free(c);
}

TEST(agg_racers_cap_is_enforced)
{
    struct agg_config cfg = default_config();
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);
    struct race *race;
    struct agg_id race_id, racer;

    agg_id_set_num(&race_id, 1);
    ASSERT_EQ(race_get(agg, &race_id, &race), 0);
    for (int64_t i = 0; i < AGG_MAX_RACERS; i++) {
        agg_id_set_num(&racer, i);
        ASSERT_EQ(race_rider(race, &racer), i);
    }
    agg_id_set_num(&racer, AGG_MAX_RACERS);
    ASSERT_EQ(race_rider(race, &racer), -ENOSPC);
    agg_id_set_num(&racer, 77);
    ASSERT_EQ(race_rider(race, &racer), 77);
    agg_free(agg);
    capture_free(c);
}

TEST(agg_names_cap_is_over_capacity)
{
    struct agg_config cfg = default_config();
    cfg.allowed_lateness_s = 100;
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);
    char json[512];
    struct agg_record rec;
    enum agg_outcome outcome;

    for (int i = 0; i <= AGG_MAX_NAMES_PER_RIDER; i++) {
        snprintf(json, sizeof json,
                 "{\"uuid\":\"u-%d\",\"event\":\"update\","
                 "\"deviceTimestamp\":1,\"second\":%d,\"raceId\":1,"
                 "\"name\":\"name-%d\",\"racerId\":1,\"classId\":1,"
                 "\"cadence\":1,\"resistance\":1}",
                 i, i + 1, i);
        parse_ok(json, &rec);
        ASSERT_EQ(agg_apply(agg, &rec, 1000, &outcome), 0);
        ASSERT_EQ(outcome, i < AGG_MAX_NAMES_PER_RIDER ? AGG_APPLIED
                                                       : AGG_OVER_CAPACITY);
    }
    ASSERT_EQ(c->sample_calls, AGG_MAX_NAMES_PER_RIDER);
    agg_free(agg);
    capture_free(c);
}

TEST(agg_name_nul_is_escaped)
{
    struct agg_config cfg = default_config();
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);
    struct agg_record rec;
    enum agg_outcome outcome;

    parse_ok("{\"uuid\":\"u-1\",\"event\":\"update\",\"deviceTimestamp\":1,"
             "\"second\":1,\"raceId\":\"R-7\",\"name\":\"a\\u0000b\","
             "\"racerId\":\"5\",\"classId\":\"C\",\"cadence\":1,"
             "\"resistance\":1}",
             &rec);
    ASSERT_EQ(agg_apply(agg, &rec, 1000, &outcome), 0);
    ASSERT_STR_EQ(capture_log(c),
                  "{\"type\":\"leaderboard\",\"raceId\":\"R-7\",\"second\":1,"
                  "\"revision\":0,\"ts\":1000,\"entries\":[{\"rank\":1,"
                  "\"racerId\":\"5\",\"name\":\"a\\u0000b\",\"classId\":\"C\","
                  "\"second\":1,\"cadence\":1,\"resistance\":1,"
                  "\"output\":23.76,\"total\":23.76}]}\n");
    agg_free(agg);
    capture_free(c);
}

/* ---- race results, class boards and history ----------------------------- */

/* One record with every id chosen; ids are JSON texts (7 or "\"b\""). */
struct result_spec {
    const char *race;
    const char *racer;
    const char *class_id;
    const char *name;
    int32_t second;
    const char *cadence;
    const char *resistance;
    bool final;
    int64_t arrival_ms;
    const char *uuid; /* NULL: derived from race, racer and second */
};

static enum agg_outcome feed_result(struct agg *agg,
                                    const struct result_spec *r)
{
    char json[1024], uuid[128];
    struct agg_record rec;
    enum agg_outcome outcome = AGG_OUTCOME_COUNT;

    snprintf(uuid, sizeof uuid, "u-%s-%s-%d", r->race, r->racer,
             (int)r->second);
    for (char *p = uuid; *p != '\0'; p++) {
        if (*p == '"')
            *p = 'q';
    }
    snprintf(json, sizeof json,
             "{\"uuid\":\"%s\",\"event\":\"%s\",\"deviceTimestamp\":%d,"
             "\"second\":%d,\"raceId\":%s,\"name\":\"%s\",\"racerId\":%s,"
             "\"classId\":%s,\"cadence\":%s,\"resistance\":%s}",
             r->uuid ? r->uuid : uuid, r->final ? "final" : "update",
             1000 + (int)r->second, (int)r->second, r->race, r->name, r->racer,
             r->class_id, r->cadence, r->resistance);
    parse_ok(json, &rec);
    ASSERT_EQ(agg_apply(agg, &rec, r->arrival_ms, &outcome), 0);
    return outcome;
}

static void feed_results(struct agg *agg, const struct result_spec *specs,
                         size_t n)
{
    for (size_t i = 0; i < n; i++)
        feed_result(agg, &specs[i]);
}

static struct agg_config results_config(void)
{
    struct agg_config cfg = default_config();
    cfg.allowed_lateness_s = 100; /* no leaderboard closes on its own */
    cfg.idle_close_s = 30;
    return cfg;
}

/* Outputs: 90/0 -> 81.25, 0/0 -> 22.75, 10/10 -> 33.75, 65/35 -> 100. */
static const struct result_spec two_finals[] = {
    {"42", "7", "1", "Ann", 1, "90", "0", false, 1000, NULL},
    {"42", "\"b\"", "1", "Bo", 1, "0", "0", false, 1001, NULL},
    {"42", "7", "1", "Ann", 2, "10", "10", true, 2000, NULL},
    {"42", "\"b\"", "1", "Bo", 2, "65", "35", true, 2001, NULL},
};

static const char two_finals_results[] =
    "{\"type\":\"results\",\"raceId\":42,\"second\":2,\"revision\":0,"
    "\"ts\":2001,\"entries\":["
    "{\"rank\":1,\"racerId\":\"b\",\"name\":\"Bo\",\"classId\":1,"
    "\"second\":2,\"cadence\":65,\"resistance\":35,\"output\":100,"
    "\"total\":122.75,\"final\":true,\"finalOutput\":100},"
    "{\"rank\":2,\"racerId\":7,\"name\":\"Ann\",\"classId\":1,"
    "\"second\":2,\"cadence\":10,\"resistance\":10,\"output\":33.75,"
    "\"total\":115,\"final\":true,\"finalOutput\":33.75}]}\n";

static const char two_finals_class[] =
    "{\"type\":\"class-leaderboard\",\"classId\":1,\"revision\":0,"
    "\"ts\":2001,\"entries\":["
    "{\"rank\":1,\"racerId\":\"b\",\"name\":\"Bo\",\"raceId\":42,"
    "\"total\":122.75},"
    "{\"rank\":2,\"racerId\":7,\"name\":\"Ann\",\"raceId\":42,"
    "\"total\":115}]}\n";

TEST(agg_results_when_all_final)
{
    struct agg_config cfg = results_config();
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);

    feed_results(agg, two_finals, 3);
    ASSERT_EQ(c->results_count, 0);
    ASSERT_EQ(c->class_count, 0);
    feed_results(agg, two_finals + 3, 1);
    ASSERT_EQ(c->results_count, 1);
    ASSERT_STR_EQ(c->results.data, two_finals_results);
    ASSERT_EQ(c->class_count, 1);
    ASSERT_STR_EQ(c->classes.data, two_finals_class);
    /* The leaderboards still wait for allowed lateness or idle close. */
    ASSERT_EQ(c->message_count, 0);

    /* Closing the race later publishes its seconds, not the results. */
    ASSERT_EQ(agg_close_all(agg), 0);
    ASSERT_EQ(c->message_count, 2);
    ASSERT_EQ(c->results_count, 1);
    ASSERT_EQ(c->class_count, 1);

    ASSERT_EQ(agg_flush(agg), 0);
    ASSERT_EQ(c->class_state_count, 1);
    ASSERT_STR_EQ(c->class_states[0].json, "{\"classId\":1,\"revision\":0}");
    ASSERT_TRUE(strstr(c->states[0].json, "\"resultsRevision\":0}") != NULL);
    agg_free(agg);
    capture_free(c);
}

TEST(agg_results_on_idle_close)
{
    struct agg_config cfg = results_config();
    cfg.allowed_lateness_s = 0; /* every second is published at once */
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);
    /* Rider 8 sent final at second 1 and kept riding; rider 7 never sent
     * final, so only the idle close publishes the results. */
    static const struct result_spec specs[] = {
        {"43", "7", "1", "Ann", 1, "90", "0", false, 1000, NULL},
        {"43", "8", "1", "Cy", 1, "90", "0", true, 1001, NULL},
        {"43", "7", "1", "Ann", 2, "10", "10", false, 2000, NULL},
        {"43", "8", "1", "Cy", 2, "0", "0", false, 2001, NULL},
    };

    /* Lateness 0 publishes each second at once, and rider 8's first
     * sample amends second 1, so the race has nothing open but results. */
    feed_results(agg, specs, 4);
    ASSERT_EQ(c->message_count, 4);
    ASSERT_EQ(agg_advance(agg, 2000 + 29999), 0);
    ASSERT_EQ(c->results_count, 0);
    ASSERT_EQ(agg_advance(agg, 2000 + 30000), 0);
    ASSERT_EQ(c->results_count, 0); /* rider 8's sample came 1 ms later */
    ASSERT_EQ(agg_advance(agg, 2001 + 30000), 0);
    ASSERT_EQ(c->results_count, 1);
    ASSERT_STR_EQ(
        c->results.data,
        "{\"type\":\"results\",\"raceId\":43,\"second\":2,\"revision\":0,"
        "\"ts\":2001,\"entries\":["
        "{\"rank\":1,\"racerId\":7,\"name\":\"Ann\",\"classId\":1,"
        "\"second\":2,\"cadence\":10,\"resistance\":10,\"output\":33.75,"
        "\"total\":115,\"final\":false,\"finalOutput\":33.75},"
        "{\"rank\":2,\"racerId\":8,\"name\":\"Cy\",\"classId\":1,"
        "\"second\":2,\"cadence\":0,\"resistance\":0,\"output\":22.75,"
        "\"total\":104,\"final\":true,\"finalOutput\":81.25}]}\n");
    ASSERT_EQ(c->class_count, 1);

    /* Nothing is left to close. */
    ASSERT_EQ(agg_advance(agg, 999999), 0);
    ASSERT_EQ(agg_close_all(agg), 0);
    ASSERT_EQ(c->results_count, 1);
    ASSERT_EQ(c->class_count, 1);
    agg_free(agg);
    capture_free(c);
}

TEST(agg_results_rank_ties_and_ids)
{
    struct agg_config cfg = results_config();
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);
    /* Totals: "z" 81.25; 10, 9 and "10" 33.75; 2 22.75. Equal totals are
     * listed by racerId, numbers by value before strings. */
    static const struct result_spec specs[] = {
        {"44", "10", "1", "A", 1, "10", "10", false, 1000, NULL},
        {"44", "\"10\"", "1", "B", 1, "10", "10", false, 1001, NULL},
        {"44", "2", "1", "C", 1, "0", "0", false, 1002, NULL},
        {"44", "9", "1", "D", 1, "10", "10", false, 1003, NULL},
        {"44", "\"z\"", "1", "E", 1, "90", "0", false, 1004, NULL},
    };

    feed_results(agg, specs, 5);
    ASSERT_EQ(c->results_count, 0);
    ASSERT_EQ(agg_close_all(agg), 0);
    ASSERT_EQ(c->results_count, 1);
    const char *log = c->results.data;
    const char *order[] = {
        "{\"rank\":1,\"racerId\":\"z\"", "{\"rank\":2,\"racerId\":9,",
        "{\"rank\":2,\"racerId\":10,", "{\"rank\":2,\"racerId\":\"10\"",
        "{\"rank\":5,\"racerId\":2,"};
    const char *at = log;
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        const char *hit = strstr(at, order[i]);
        if (hit == NULL)
            test_fail(__FILE__, __LINE__, "%s missing after offset %td: %s",
                      order[i], at - log, log);
        at = hit;
    }
    /* The class board ranks the same way. */
    ASSERT_TRUE(strstr(c->classes.data,
                       "{\"rank\":2,\"racerId\":9,\"name\":\"D\",\"raceId\":44,"
                       "\"total\":33.75},{\"rank\":2,\"racerId\":10,") != NULL);
    agg_free(agg);
    capture_free(c);
}

/* The entry of racer 7 on the last class board sent, or NULL. */
static const char *last_class_line(const struct capture *c)
{
    const char *data = c->classes.data;
    const char *last = data;
    for (const char *p = data; p != NULL && *p != '\0';) {
        last = p;
        const char *nl = strchr(p, '\n');
        p = nl ? nl + 1 : NULL;
    }
    return last;
}

TEST(agg_class_best_strictly_greater_wins)
{
    struct agg_config cfg = results_config();
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);
    static const struct result_spec first = {"100", "7",  "1",  "Ann", 1,
                                             "10",  "10", true, 1000,  NULL};
    static const struct result_spec greater = {"101", "7", "1",  "Ann B", 1,
                                               "90",  "0", true, 2000,    NULL};
    static const struct result_spec equal = {"102", "7", "1",  "Ann C", 1,
                                             "90",  "0", true, 3000,    NULL};
    static const struct result_spec lower = {"103", "7", "1",  "Ann D", 1,
                                             "0",   "0", true, 4000,    NULL};

    feed_result(agg, &first);
    ASSERT_EQ(c->class_count, 1);
    feed_result(agg, &greater);
    ASSERT_EQ(c->class_count, 2);
    ASSERT_STR_EQ(last_class_line(c),
                  "{\"type\":\"class-leaderboard\",\"classId\":1,"
                  "\"revision\":1,\"ts\":2000,\"entries\":[{\"rank\":1,"
                  "\"racerId\":7,\"name\":\"Ann B\",\"raceId\":101,"
                  "\"total\":81.25}]}\n");
    /* An equal total keeps the earlier race, and a lower one changes
     * nothing: no board is sent for either. */
    feed_result(agg, &equal);
    feed_result(agg, &lower);
    ASSERT_EQ(c->results_count, 4);
    ASSERT_EQ(c->class_count, 2);
    agg_free(agg);
    capture_free(c);
}

TEST(agg_class_tie_ignores_close_order)
{
    struct agg_config cfg = results_config();
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);
    /* Race 201 has the earlier samples but closes last, at idle; race 200
     * has all its riders final at once. Equal totals: 201 is earlier. */
    static const struct result_spec specs[] = {
        {"201", "7", "1", "Early", 1, "90", "0", false, 1000, NULL},
        {"200", "7", "1", "Late", 1, "90", "0", true, 2000, NULL},
    };

    feed_results(agg, specs, 2);
    ASSERT_EQ(c->results_count, 1);
    ASSERT_TRUE(strstr(last_class_line(c), "\"raceId\":200,") != NULL);
    ASSERT_EQ(agg_advance(agg, 1000 + 30000), 0);
    ASSERT_EQ(c->results_count, 2);
    ASSERT_EQ(c->class_count, 2);
    ASSERT_STR_EQ(last_class_line(c),
                  "{\"type\":\"class-leaderboard\",\"classId\":1,"
                  "\"revision\":1,\"ts\":1000,\"entries\":[{\"rank\":1,"
                  "\"racerId\":7,\"name\":\"Early\",\"raceId\":201,"
                  "\"total\":81.25}]}\n");
    agg_free(agg);
    capture_free(c);
}

/* The stored history row of (class, racer, second), or NULL. */
static const struct stored_history *history_at(const struct capture *c,
                                               int64_t class_num,
                                               int64_t racer_num,
                                               int32_t second)
{
    for (int i = 0; i < c->history_count; i++) {
        const struct stored_history *h = &c->history[i];
        if (h->class_id.is_num && h->class_id.num == class_num &&
            h->racer.is_num && h->racer.num == racer_num && h->second == second)
            return h;
    }
    return NULL;
}

TEST(agg_history_keeps_best_per_second)
{
    struct agg_config cfg = results_config();
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);
    static const struct result_spec specs[] = {
        {"300", "7", "1", "Ann", 1, "90", "0", false, 1000, NULL},
        {"300", "7", "1", "Ann", 2, "0", "0", true, 1001, NULL},
        {"301", "7", "1", "Ann", 1, "10", "10", false, 2000, NULL},
        {"301", "7", "1", "Ann", 2, "65", "35", false, 2001, NULL},
        {"301", "7", "1", "Ann", 3, "0", "0", true, 2002, NULL},
        /* Equal to race 300 at second 1, but later: 300 keeps it. */
        {"302", "7", "1", "Ann", 1, "90", "0", true, 3000, NULL},
    };

    feed_results(agg, specs, 6);
    ASSERT_EQ(c->results_count, 3);
    ASSERT_EQ(c->history_count, 3);
    const struct stored_history *s1 = history_at(c, 1, 7, 1);
    const struct stored_history *s2 = history_at(c, 1, 7, 2);
    const struct stored_history *s3 = history_at(c, 1, 7, 3);
    ASSERT_TRUE(s1 != NULL);
    ASSERT_TRUE(s2 != NULL);
    ASSERT_TRUE(s3 != NULL);
    ASSERT_EQ(s1->output4, 812500);
    ASSERT_EQ(s1->race.num, 300);
    ASSERT_EQ(s2->output4, 1000000);
    ASSERT_EQ(s2->race.num, 301);
    ASSERT_EQ(s3->output4, 227500);
    ASSERT_EQ(s3->race.num, 301);
    /* Two rows for race 300, two raised by 301, none by 302. */
    ASSERT_EQ(c->history_calls, 4);
    agg_free(agg);
    capture_free(c);
}

TEST(agg_amend_after_results_republishes)
{
    struct agg_config cfg = results_config();
    cfg.allowed_lateness_s = 0;
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);

    feed_results(agg, two_finals, 4);
    ASSERT_EQ(c->results_count, 1);
    ASSERT_EQ(c->class_count, 1);
    ASSERT_EQ(history_at(c, 1, 7, 1)->output4, 812500);

    /* A conflicting record for rider 7 at second 1 with a smaller key
     * wins and lowers the total: 22.75 + 33.75 = 56.5. */
    struct result_spec amend = {"42", "7", "1",   "Ann", 1,
                                "0",  "0", false, 3000,  "u-0"};
    ASSERT_EQ(feed_result(agg, &amend), AGG_LATE_AMENDED);
    ASSERT_EQ(c->results_count, 2);
    ASSERT_TRUE(strstr(c->results.data,
                       "{\"type\":\"results\",\"raceId\":42,\"second\":2,"
                       "\"revision\":1,\"ts\":3000,") != NULL);
    ASSERT_TRUE(strstr(c->results.data, "\"total\":56.5,\"final\":true") !=
                NULL);
    ASSERT_EQ(c->class_count, 2);
    ASSERT_TRUE(strstr(last_class_line(c), "\"revision\":1,\"ts\":3000,") !=
                NULL);
    ASSERT_TRUE(strstr(last_class_line(c),
                       "\"racerId\":7,\"name\":\"Ann\","
                       "\"raceId\":42,\"total\":56.5}") != NULL);
    /* The history follows the samples down, not only up. */
    ASSERT_EQ(history_at(c, 1, 7, 1)->output4, 227500);

    /* A copy of the same values changes nothing visible: no message. */
    struct result_spec copy = amend;
    copy.uuid = "u-1";
    ASSERT_EQ(feed_result(agg, &copy), AGG_UNCHANGED);
    /* Beyond the amend window nothing changes either. */
    struct result_spec far = {"42", "7", "1",   "Ann", 40,
                              "0",  "0", false, 4000,  NULL};
    ASSERT_EQ(feed_result(agg, &far), AGG_APPLIED);
    ASSERT_EQ(c->results_count, 3);
    struct result_spec too_late = {"42", "7", "1",   "Ann", 2,
                                   "1",  "1", false, 4001,  "u-00"};
    ASSERT_EQ(feed_result(agg, &too_late), AGG_TOO_LATE);
    ASSERT_EQ(c->results_count, 3);
    agg_free(agg);
    capture_free(c);
}

TEST(agg_amend_moves_rider_to_other_class)
{
    struct agg_config cfg = results_config();
    cfg.allowed_lateness_s = 0;
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);

    feed_results(agg, two_finals, 4);
    ASSERT_TRUE(history_at(c, 1, 7, 2) != NULL);
    /* Rider 7's last sample now has classId 2, with the same values. */
    struct result_spec moved = {"42", "7",  "2",  "Ann", 2,
                                "10", "10", true, 3000,  "u-0"};
    feed_result(agg, &moved);
    ASSERT_EQ(c->class_count, 3);
    ASSERT_TRUE(strstr(c->classes.data,
                       "{\"type\":\"class-leaderboard\",\"classId\":1,"
                       "\"revision\":1,\"ts\":3000,\"entries\":[{\"rank\":1,"
                       "\"racerId\":\"b\",") != NULL);
    ASSERT_STR_EQ(last_class_line(c),
                  "{\"type\":\"class-leaderboard\",\"classId\":2,"
                  "\"revision\":0,\"ts\":3000,\"entries\":[{\"rank\":1,"
                  "\"racerId\":7,\"name\":\"Ann\",\"raceId\":42,"
                  "\"total\":115}]}\n");
    ASSERT_TRUE(history_at(c, 1, 7, 1) == NULL);
    ASSERT_TRUE(history_at(c, 1, 7, 2) == NULL);
    ASSERT_EQ(history_at(c, 2, 7, 1)->output4, 812500);
    ASSERT_EQ(history_at(c, 2, 7, 2)->output4, 337500);
    agg_free(agg);
    capture_free(c);
}

/* The stored document of id, or "" when there is none. */
static const char *state_of(const struct stored_state *states, int count,
                            const struct agg_id *id)
{
    for (int i = 0; i < count; i++) {
        if (agg_id_cmp(&states[i].race, id) == 0)
            return states[i].json;
    }
    return "";
}

/* Races with finals, an idle close, amendments after results and a class
 * move, with a restart inside. */
static const struct result_spec restart_results[] = {
    {"500", "7", "1", "Ann", 1, "90", "0", false, 1000, NULL},
    {"500", "8", "1", "Bo", 1, "10", "10", false, 1001, NULL},
    {"501", "7", "1", "Ann", 1, "65", "35", true, 1002, NULL},
    {"500", "7", "1", "Ann", 2, "10", "10", true, 2000, NULL},
    {"500", "8", "1", "Bo", 2, "65", "35", true, 2001, NULL},
    {"502", "\"x\"", "\"c\"", "Xi", 1, "1", "2", false, 2002, NULL},
    {"500", "8", "1", "Bo", 1, "0", "0", false, 3000, "u-0"},
    {"502", "\"x\"", "\"c\"", "Xi", 2, "3", "4", false, 40000, NULL},
    {"500", "7", "2", "Ann", 2, "10", "10", true, 41000, "u-1"},
    {"503", "8", "1", "Bo", 1, "90", "90", true, 42000, NULL},
};

TEST(agg_results_restore_matches_uninterrupted)
{
    struct agg_config cfg = results_config();
    cfg.allowed_lateness_s = 1;
    size_t n = sizeof restart_results / sizeof restart_results[0];
    struct capture *whole = capture_new();
    struct agg *agg = agg_for(&cfg, whole);

    feed_results(agg, restart_results, n);
    ASSERT_EQ(agg_advance(agg, 200000), 0);
    ASSERT_EQ(agg_flush(agg), 0);
    agg_free(agg);

    for (size_t half = 1; half < n; half++) {
        fprintf(stderr, "restart after %zu records\n", half);
        struct capture *before = capture_new();
        agg = agg_for(&cfg, before);
        feed_results(agg, restart_results, half);
        ASSERT_EQ(agg_flush(agg), 0);
        int64_t stream_time = agg_stream_time(agg);
        agg_free(agg);

        agg = restore_from(&cfg, before, before, stream_time);
        feed_results(agg, restart_results + half, n - half);
        ASSERT_EQ(agg_advance(agg, 200000), 0);
        ASSERT_EQ(agg_flush(agg), 0);
        agg_free(agg);

        ASSERT_STR_EQ(capture_log(before), capture_log(whole));
        ASSERT_STR_EQ(before->results.data, whole->results.data);
        ASSERT_STR_EQ(before->classes.data, whole->classes.data);
        ASSERT_EQ(before->history_count, whole->history_count);
        for (int i = 0; i < whole->history_count; i++)
            ASSERT_MEM_EQ(&before->history[i], sizeof before->history[i],
                          &whole->history[i], sizeof whole->history[i]);
        ASSERT_EQ(before->class_state_count, whole->class_state_count);
        for (int i = 0; i < whole->class_state_count; i++)
            ASSERT_STR_EQ(state_of(before->class_states,
                                   before->class_state_count,
                                   &whole->class_states[i].race),
                          whole->class_states[i].json);
        for (int i = 0; i < whole->state_count; i++)
            ASSERT_STR_EQ(before->states[i].json, whole->states[i].json);
        capture_free(before);
    }
    ASSERT_EQ(whole->results_count, 7);
    ASSERT_EQ(whole->class_count, 8);
    capture_free(whole);
}

TEST(agg_restore_rejects_bad_class_state)
{
    struct agg_config cfg = default_config();
    struct capture *c = capture_new();
    struct agg *agg = agg_for(&cfg, c);
    static const char *const docs[] = {
        "",
        "{\"classId\":1}",
        "{\"classId\":1.5,\"revision\":0}",
        "{\"classId\":1,\"revision\":-1}",
        "{\"raceId\":1,\"firstSecond\":0,\"latestSecond\":0,"
        "\"publishedFrom\":0,\"publishedThrough\":0,\"activityMs\":0,"
        "\"revisions\":[],\"resultsRevision\":0}",
    };

    for (size_t i = 0; i < 4; i++) {
        fprintf(stderr, "case: %s\n", docs[i]);
        ASSERT_EQ(agg_restore_class(agg, docs[i], strlen(docs[i])), -EINVAL);
    }
    /* Results of a race without samples cannot have been published. */
    ASSERT_EQ(agg_restore_race(agg, docs[4], strlen(docs[4])), -EINVAL);
    agg_free(agg);
    capture_free(c);
}

/* ---- late amendments against an on-time run ----------------------------- */

/*
 * These cases deliver one set of records in some order, with arrival times
 * rising in delivery order, and compare the last published revision of
 * every (race, second) with the leaderboard of a reference run. The
 * reference run gets the same records with the same arrival times, sorted
 * by second, and closes nothing before agg_close_all, so no record in it is
 * late. Its leaderboards are what the stored samples define, so a late
 * amendment that is missing from a republished leaderboard shows up as a
 * difference.
 */

#define GEN_MAX_ITEMS   4096
#define GEN_MAX_RACES   4
#define GEN_MAX_SECONDS 130

struct gen_item {
    struct agg_record rec;
    int64_t arrival_ms; /* set by the delivery under test */
};

struct gen_set {
    struct gen_item items[GEN_MAX_ITEMS];
    size_t count;
};

/* Last message of one (race, second) and the agg call that sent it. */
struct board_slot {
    int32_t revision; /* -1 before the first message */
    char *payload;    /* without its "revision" member */
    uint64_t call;
};

struct board_log {
    struct capture *store; /* samples and race states for a restart */
    struct agg_id races[GEN_MAX_RACES];
    int race_count;
    struct board_slot slots[GEN_MAX_RACES][GEN_MAX_SECONDS + 1];
    uint64_t call; /* serial of the agg call in progress */
    int message_count;
};

/* splitmix64: a fixed sequence per seed on every platform. */
static uint64_t prng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static int prng_below(uint64_t *state, int n)
{
    return (int)(prng_next(state) % (uint64_t)n);
}

static struct gen_set *gen_set_new(void)
{
    struct gen_set *set = calloc(1, sizeof *set);
    ASSERT_TRUE(set != NULL);
    return set;
}

/* One record; ids are JSON texts such as 5988055001 or "R-b". */
struct gen_spec {
    const char *race;
    const char *racer;
    const char *class_id;
    const char *name;
    const char *uuid;
    int64_t device_ts_ms;
    int32_t second;
    const char *cadence;
    const char *resistance;
};

static void gen_add(struct gen_set *set, const struct gen_spec *g)
{
    char json[1024];

    ASSERT_TRUE(set->count < GEN_MAX_ITEMS);
    ASSERT_TRUE(g->second >= 1);
    ASSERT_TRUE(g->second <= GEN_MAX_SECONDS);
    snprintf(json, sizeof json,
             "{\"uuid\":\"%s\",\"event\":\"update\",\"deviceTimestamp\":"
             "%" PRId64 ",\"second\":%d,\"raceId\":%s,\"name\":\"%s\","
             "\"racerId\":%s,\"classId\":%s,\"cadence\":%s,"
             "\"resistance\":%s}",
             g->uuid, g->device_ts_ms, (int)g->second, g->race, g->name,
             g->racer, g->class_id, g->cadence, g->resistance);
    parse_ok(json, &set->items[set->count++].rec);
}

static int board_race_index(struct board_log *log, const struct agg_id *race)
{
    for (int i = 0; i < log->race_count; i++) {
        if (agg_id_cmp(&log->races[i], race) == 0)
            return i;
    }
    ASSERT_TRUE(log->race_count < GEN_MAX_RACES);
    log->races[log->race_count] = *race;
    return log->race_count++;
}

/* Copy of payload without the "revision":N member, owned by the caller. */
static char *strip_revision(const char *payload, size_t len)
{
    static const char member[] = "\"revision\":";
    char *text = strndup(payload, len);
    ASSERT_TRUE(text != NULL);
    char *at = strstr(text, member);
    ASSERT_TRUE(at != NULL);
    char *end = at + strlen(member);
    while (*end >= '0' && *end <= '9')
        end++;
    ASSERT_EQ(*end, ',');
    memmove(at, end + 1, strlen(end + 1) + 1);
    return text;
}

/*
 * Keep the last message of each (race, second). Each message must raise
 * the revision by exactly one, starting at 0, and no agg call may send
 * the same (race, second) twice.
 */
static int board_log_message(void *arg, const struct agg_message *msg)
{
    struct board_log *log = arg;

    if (msg->kind != AGG_MSG_RACE_LEADERBOARD)
        return capture_message(log->store, msg);
    ASSERT_TRUE(msg->second >= 1);
    ASSERT_TRUE(msg->second <= GEN_MAX_SECONDS);
    int race = board_race_index(log, msg->race);
    struct board_slot *slot = &log->slots[race][msg->second];
    if (msg->revision != slot->revision + 1)
        test_fail(__FILE__, __LINE__,
                  "race %s second %d: revision %d follows revision %d",
                  msg->race->str, (int)msg->second, (int)msg->revision,
                  (int)slot->revision);
    if (slot->call == log->call)
        test_fail(__FILE__, __LINE__,
                  "race %s second %d: sent twice by one agg call",
                  msg->race->str, (int)msg->second);
    free(slot->payload);
    slot->payload = strip_revision(msg->payload, msg->payload_len);
    slot->revision = msg->revision;
    slot->call = log->call;
    log->message_count++;
    return 0;
}

static int board_log_sample(void *arg, const struct agg_sample_row *row)
{
    struct board_log *log = arg;
    return capture_sample(log->store, row);
}

static int board_log_state(void *arg, const struct agg_id *race,
                           const char *json, size_t len)
{
    struct board_log *log = arg;
    return capture_state(log->store, race, json, len);
}

static int board_log_class_state(void *arg, const struct agg_id *class_id,
                                 const char *json, size_t len)
{
    struct board_log *log = arg;
    return capture_class_state(log->store, class_id, json, len);
}

static int board_log_history(void *arg, const struct agg_history_row *row)
{
    struct board_log *log = arg;
    return capture_history(log->store, row);
}

static struct board_log *board_log_new(void)
{
    struct board_log *log = calloc(1, sizeof *log);
    ASSERT_TRUE(log != NULL);
    log->store = capture_new();
    for (int r = 0; r < GEN_MAX_RACES; r++) {
        for (int s = 0; s <= GEN_MAX_SECONDS; s++)
            log->slots[r][s].revision = -1;
    }
    return log;
}

static void board_log_free(struct board_log *log)
{
    for (int r = 0; r < GEN_MAX_RACES; r++) {
        for (int s = 0; s <= GEN_MAX_SECONDS; s++)
            free(log->slots[r][s].payload);
    }
    capture_free(log->store);
    free(log);
}

static struct agg *agg_for_log(const struct agg_config *cfg,
                               struct board_log *log)
{
    struct agg_sink sink = {log,
                            board_log_sample,
                            board_log_state,
                            board_log_message,
                            board_log_class_state,
                            board_log_history};
    struct agg *agg = agg_new(cfg, &sink);
    ASSERT_TRUE(agg != NULL);
    return agg;
}

/* Settings under which no record is quarantined or too late. */
static struct agg_config amend_config(int32_t lateness, int32_t top_n)
{
    struct agg_config cfg = default_config();
    cfg.allowed_lateness_s = lateness;
    cfg.idle_close_s = 1000000;
    cfg.max_future_skew_s = 1000000;
    cfg.max_second_jump = cfg.max_seconds;
    cfg.amend_window_s = cfg.max_seconds;
    cfg.top_n = top_n;
    return cfg;
}

static void apply_item(struct agg *agg, struct board_log *log,
                       const struct gen_item *item)
{
    enum agg_outcome outcome = AGG_OUTCOME_COUNT;

    log->call++;
    ASSERT_EQ(agg_apply(agg, &item->rec, item->arrival_ms, &outcome), 0);
    ASSERT_TRUE(outcome == AGG_APPLIED || outcome == AGG_UNCHANGED ||
                outcome == AGG_CONFLICT_KEPT ||
                outcome == AGG_CONFLICT_REPLACED ||
                outcome == AGG_LATE_AMENDED);
}

/* Flush, drop the aggregator and rebuild it from the store, as a restart
 * after a batch commit does. */
static struct agg *restart_agg(const struct agg_config *cfg, struct agg *agg,
                               struct board_log *log)
{
    log->call++;
    ASSERT_EQ(agg_flush(agg), 0);
    int64_t stream_time = agg_stream_time(agg);
    agg_free(agg);
    agg = agg_for_log(cfg, log);
    restore_store(agg, log->store, stream_time);
    return agg;
}

/*
 * Deliver the items in order[0..count) with arrival times rising by 10 ms
 * and a 2 s pause after every 97 records, restarting before item
 * restart_at (none when it is count or more), then close everything. Each
 * record is preceded by agg_advance to its arrival time, as in a live run,
 * so idle closes are a call of their own. Sets each item's arrival_ms.
 */
static void deliver(const struct agg_config *cfg, struct gen_set *set,
                    const size_t *order, size_t restart_at,
                    struct board_log *log)
{
    struct agg *agg = agg_for_log(cfg, log);

    for (size_t i = 0; i < set->count; i++) {
        if (i == restart_at)
            agg = restart_agg(cfg, agg, log);
        struct gen_item *item = &set->items[order[i]];
        item->arrival_ms = 100000 + 10 * (int64_t)i + 2000 * (int64_t)(i / 97);
        log->call++;
        ASSERT_EQ(agg_advance(agg, item->arrival_ms), 0);
        apply_item(agg, log, item);
    }
    log->call++;
    ASSERT_EQ(agg_close_all(agg), 0);
    agg_free(agg);
}

/* The on-time run: items in set order, which is by second, with the
 * arrival times of the delivery under test, and no second closed before
 * the end. */
static void deliver_on_time(const struct agg_config *tested,
                            const struct gen_set *set, struct board_log *log)
{
    struct agg_config cfg = *tested;
    cfg.allowed_lateness_s = cfg.max_seconds;
    cfg.idle_close_s = 1000000;
    struct agg *agg = agg_for_log(&cfg, log);

    for (size_t i = 0; i < set->count; i++) {
        ASSERT_TRUE(i == 0 ||
                    set->items[i - 1].rec.second <= set->items[i].rec.second);
        apply_item(agg, log, &set->items[i]);
    }
    log->call++;
    ASSERT_EQ(agg_close_all(agg), 0);
    agg_free(agg);
}

/* Every (race, second) of want was published in got, with the same last
 * leaderboard apart from its revision, and got published nothing else. */
static void expect_same_final_boards(const struct board_log *got,
                                     const struct board_log *want)
{
    ASSERT_EQ(got->race_count, want->race_count);
    for (int r = 0; r < want->race_count; r++) {
        int g = 0;
        while (g < got->race_count &&
               agg_id_cmp(&got->races[g], &want->races[r]) != 0)
            g++;
        ASSERT_TRUE(g < got->race_count);
        for (int s = 1; s <= GEN_MAX_SECONDS; s++) {
            const struct board_slot *a = &got->slots[g][s];
            const struct board_slot *b = &want->slots[r][s];
            if (b->payload == NULL) {
                ASSERT_TRUE(a->payload == NULL);
                continue;
            }
            ASSERT_EQ(b->revision, 0);
            if (a->payload == NULL || strcmp(a->payload, b->payload) != 0)
                test_fail(__FILE__, __LINE__,
                          "race %s second %d, revision %d:\n  got  %s\n"
                          "  want %s",
                          want->races[r].str, s, (int)a->revision,
                          a->payload ? a->payload : "(none)", b->payload);
        }
    }
}

/* One rider in the model of a leaderboard. */
struct model_entry {
    const struct stored_row *latest;
    int64_t total4;
};

static int model_entry_cmp(const void *pa, const void *pb)
{
    const struct model_entry *a = pa, *b = pb;

    if (a->total4 != b->total4)
        return a->total4 > b->total4 ? -1 : 1;
    return agg_id_cmp(&a->latest->racer, &b->latest->racer);
}

/*
 * Write the leaderboard of (race, second) from the stored rows alone, as
 * the rules define it, without the revision member. It lists every rider
 * with a row at or before second, with the row of its latest such second
 * and the sum of its outputs, by total descending and then racerId.
 */
static char *model_board(const struct capture *store, const struct agg_id *race,
                         int32_t second, int32_t top_n)
{
    struct model_entry *entries = calloc(MAX_ROWS, sizeof *entries);
    int64_t ts = INT64_MIN;
    int count = 0;

    ASSERT_TRUE(entries != NULL);
    for (int i = 0; i < store->row_count; i++) {
        const struct stored_row *r = &store->rows[i];
        if (agg_id_cmp(&r->race, race) != 0 || r->second > second)
            continue;
        if (r->arrival_ms > ts)
            ts = r->arrival_ms;
        int e = 0;
        while (e < count && agg_id_cmp(&entries[e].latest->racer, &r->racer))
            e++;
        if (e == count)
            entries[count++].latest = r;
        if (r->second > entries[e].latest->second)
            entries[e].latest = r;
        entries[e].total4 += r->output4;
    }
    qsort(entries, (size_t)count, sizeof *entries, model_entry_cmp);

    struct strbuf sb;
    sb_init(&sb, 1 << 24);
    sb_puts(&sb, "{\"type\":\"leaderboard\",\"raceId\":");
    agg_id_to_json(race, &sb);
    sb_printf(&sb, ",\"second\":%d,\"ts\":%" PRId64 ",\"entries\":[",
              (int)second, ts);
    int rank = 0;
    for (int i = 0; i < count && (top_n <= 0 || i < top_n); i++) {
        const struct stored_row *r = entries[i].latest;
        if (i == 0 || entries[i].total4 != entries[i - 1].total4)
            rank = i + 1;
        sb_printf(&sb, "%s{\"rank\":%d,\"racerId\":", i ? "," : "", rank);
        agg_id_to_json(&r->racer, &sb);
        sb_puts(&sb, ",\"name\":");
        sb_json_string(&sb, r->name, r->name_len);
        sb_puts(&sb, ",\"classId\":");
        agg_id_to_json(&r->class_id, &sb);
        sb_printf(&sb, ",\"second\":%d,\"cadence\":", (int)r->second);
        sb_fixed4(&sb, r->cadence4);
        sb_puts(&sb, ",\"resistance\":");
        sb_fixed4(&sb, r->resistance4);
        sb_puts(&sb, ",\"output\":");
        sb_fixed4(&sb, r->output4);
        sb_puts(&sb, ",\"total\":");
        sb_fixed4(&sb, entries[i].total4);
        sb_putc(&sb, '}');
    }
    sb_puts(&sb, "]}");
    ASSERT_EQ(sb_error(&sb), 0);
    char *text = strdup(sb.data);
    sb_free(&sb);
    free(entries);
    return text;
}

/* The reference run's leaderboards are the ones the rules define from its
 * stored rows, so the comparison does not trust the aggregator twice. */
static void expect_boards_follow_rules(const struct board_log *log,
                                       int32_t top_n)
{
    for (int r = 0; r < log->race_count; r++) {
        for (int s = 1; s <= GEN_MAX_SECONDS; s++) {
            const struct board_slot *slot = &log->slots[r][s];
            if (slot->payload == NULL)
                continue;
            char *want = model_board(log->store, &log->races[r], s, top_n);
            if (strcmp(slot->payload, want) != 0)
                test_fail(__FILE__, __LINE__,
                          "race %s second %d:\n  got  %s\n  want %s",
                          log->races[r].str, s, slot->payload, want);
            free(want);
        }
    }
}

/*
 * Deliver set in order (with a restart before restart_at), run the on-time
 * reference and compare. Returns the log of the delivery, owned by the
 * caller, for checks of its own.
 */
static struct board_log *check_delivery(const struct agg_config *cfg,
                                        struct gen_set *set,
                                        const size_t *order, size_t restart_at)
{
    struct board_log *got = board_log_new();
    struct board_log *want = board_log_new();

    deliver(cfg, set, order, restart_at, got);
    deliver_on_time(cfg, set, want);
    expect_boards_follow_rules(want, cfg->top_n);
    expect_same_final_boards(got, want);
    board_log_free(want);
    return got;
}

/* Identity order with a shuffle of its own when seed is not 0. */
static void make_order(size_t *order, size_t count, uint64_t seed)
{
    for (size_t i = 0; i < count; i++)
        order[i] = i;
    if (seed == 0)
        return;
    for (size_t i = count; i > 1; i--) {
        size_t j = (size_t)prng_below(&seed, (int)i);
        size_t t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
}

static const char *const gen_races[] = {"5988055001", "\"R-b\"", "5988055003"};

/* Racer ids mix numbers and strings so both orders of ids are used. */
static void gen_racer(int k, char *buf, size_t len)
{
    if (k % 2 == 0)
        snprintf(buf, len, "%d", 100 + k);
    else
        snprintf(buf, len, "\"rc-%d\"", k);
}

/*
 * Add to set a random sample for one (race, rider, second), then maybe a
 * conflicting record with other values and maybe a copy of the values
 * written another way, under another name and classId.
 */
static void gen_key(struct gen_set *set, uint64_t *prng, int race, int k,
                    int second)
{
    char racer[32], uuid[64], cadence[32], resistance[32], copy_cadence[40];
    char name[32], class_id[8];
    struct gen_spec g = {gen_races[race], racer,   class_id,  name, uuid, 0,
                         second,          cadence, resistance};

    gen_racer(k, racer, sizeof racer);
    snprintf(class_id, sizeof class_id, "%d", 1 + k % 2);
    snprintf(name, sizeof name, "N%d", k);
    snprintf(cadence, sizeof cadence, "%d.%d", prng_below(prng, 120),
             prng_below(prng, 10));
    snprintf(resistance, sizeof resistance, "%d", prng_below(prng, 60));
    snprintf(uuid, sizeof uuid, "u-%d-%d-%d-a", race, k, second);
    g.device_ts_ms = 1000 * second + prng_below(prng, 500);
    gen_add(set, &g);

    if (prng_below(prng, 100) < 15) {
        struct gen_spec other = g;
        char other_cadence[32], other_uuid[64];
        snprintf(other_cadence, sizeof other_cadence, "%d",
                 prng_below(prng, 120));
        snprintf(other_uuid, sizeof other_uuid, "u-%d-%d-%d-b", race, k,
                 second);
        other.cadence = other_cadence;
        other.uuid = other_uuid;
        other.device_ts_ms = g.device_ts_ms - 250 + prng_below(prng, 500);
        gen_add(set, &other);
    }
    if (prng_below(prng, 100) < 10) {
        struct gen_spec copy = g;
        char copy_uuid[64], copy_name[32];
        snprintf(copy_cadence, sizeof copy_cadence, "%s0", cadence);
        snprintf(copy_uuid, sizeof copy_uuid, "u-%d-%d-%d-c", race, k, second);
        snprintf(copy_name, sizeof copy_name, "N%d-copy", k);
        copy.cadence = copy_cadence;
        copy.uuid = copy_uuid;
        copy.name = copy_name;
        copy.class_id = "9";
        copy.device_ts_ms = g.device_ts_ms - 250 + prng_below(prng, 500);
        gen_add(set, &copy);
    }
}

/* Records for races x riders x seconds, each key present at 70 %, in
 * second order. Riders start at random seconds, so some join late. */
static struct gen_set *gen_random(uint64_t seed, int races, int riders,
                                  int seconds)
{
    struct gen_set *set = gen_set_new();
    int start[64];

    ASSERT_TRUE(riders <= 64);
    ASSERT_TRUE(races <= 3);
    ASSERT_TRUE(seconds <= GEN_MAX_SECONDS);
    for (int k = 0; k < riders; k++)
        start[k] = 1 + prng_below(&seed, seconds / 2);
    for (int s = 1; s <= seconds; s++) {
        for (int r = 0; r < races; r++) {
            for (int k = 0; k < riders; k++) {
                if (s >= start[k] && prng_below(&seed, 100) < 70)
                    gen_key(set, &seed, r, k, s);
            }
        }
    }
    return set;
}

TEST(agg_late_amends_match_on_time_run)
{
    static const int32_t latenesses[] = {0, 2, 5};
    static const int32_t top_ns[] = {0, 3};
    size_t order[GEN_MAX_ITEMS];

    for (uint64_t seed = 1; seed <= 12; seed++) {
        struct gen_set *set = gen_random(seed, 3, 5, 20);
        for (size_t l = 0; l < 3; l++) {
            for (size_t t = 0; t < 2; t++) {
                struct agg_config cfg = amend_config(latenesses[l], top_ns[t]);
                for (uint64_t shuffle = 0; shuffle <= 4; shuffle++) {
                    fprintf(stderr,
                            "seed %" PRIu64 " lateness %d top_n %d "
                            "shuffle %" PRIu64 "\n",
                            seed, (int)cfg.allowed_lateness_s, (int)cfg.top_n,
                            shuffle);
                    make_order(order, set->count,
                               shuffle == 0 ? 0 : shuffle * 1000 + seed);
                    board_log_free(
                        check_delivery(&cfg, set, order, set->count));
                }
            }
        }
        free(set);
    }
}

TEST(agg_late_amends_survive_restart)
{
    size_t order[GEN_MAX_ITEMS];

    for (uint64_t seed = 1; seed <= 6; seed++) {
        struct gen_set *set = gen_random(seed, 2, 5, 16);
        for (int32_t lateness = 0; lateness <= 5; lateness += 5) {
            struct agg_config cfg = amend_config(lateness, 3);
            for (size_t cut = 1; cut < 5; cut++) {
                size_t restart_at = set->count * cut / 5;
                fprintf(stderr, "seed %" PRIu64 " lateness %d restart at %zu\n",
                        seed, (int)lateness, restart_at);
                make_order(order, set->count, seed * 7 + cut);
                board_log_free(check_delivery(&cfg, set, order, restart_at));
            }
        }
        free(set);
    }
}

/*
 * Order the items as two shards deliver them: riders of even position in
 * one shard and odd in the other, each shard in second order, the two
 * interleaved in bursts of up to max_burst records so one shard lags.
 */
static void make_shard_order(const struct gen_set *set, size_t *order,
                             uint64_t seed, int max_burst)
{
    size_t shard[2][GEN_MAX_ITEMS], count[2] = {0, 0}, next[2] = {0, 0};
    size_t n = 0;

    for (size_t i = 0; i < set->count; i++) {
        const struct agg_id *racer = &set->items[i].rec.racer;
        int k = racer->is_num ? (int)(racer->num - 100) : atoi(racer->str + 3);
        shard[k / 2 % 2][count[k / 2 % 2]++] = i;
    }
    while (n < set->count) {
        int from = prng_below(&seed, 2);
        int burst = 1 + prng_below(&seed, max_burst);
        if (next[from] == count[from])
            from = 1 - from;
        for (; burst > 0 && next[from] < count[from]; burst--)
            order[n++] = shard[from][next[from]++];
    }
}

TEST(agg_late_amends_two_shards_at_scale)
{
    static size_t order[GEN_MAX_ITEMS];

    for (uint64_t seed = 1; seed <= 2; seed++) {
        struct gen_set *set = gen_random(seed, 1, 30, 120);
        for (int32_t lateness = 0; lateness <= 5; lateness += 5) {
            struct agg_config cfg = amend_config(lateness, 10);
            fprintf(stderr, "seed %" PRIu64 " lateness %d\n", seed,
                    (int)lateness);
            make_shard_order(set, order, seed, 300);
            struct board_log *log =
                check_delivery(&cfg, set, order, set->count / 2);
            fprintf(stderr, "%zu records, %d messages\n", set->count,
                    log->message_count);
            board_log_free(log);
        }
        free(set);
    }
}

TEST(agg_late_amends_after_idle_close)
{
    size_t order[GEN_MAX_ITEMS];

    for (uint64_t seed = 1; seed <= 6; seed++) {
        struct gen_set *set = gen_random(seed, 3, 8, 30);
        for (int32_t lateness = 0; lateness <= 5; lateness += 5) {
            struct agg_config cfg = amend_config(lateness, 5);
            cfg.idle_close_s = 1;
            fprintf(stderr, "seed %" PRIu64 " lateness %d\n", seed,
                    (int)lateness);
            make_shard_order(set, order, seed, 150);
            board_log_free(check_delivery(&cfg, set, order, set->count));
            make_order(order, set->count, seed);
            board_log_free(check_delivery(&cfg, set, order, set->count / 3));
        }
        free(set);
    }
}

/* ---- late amendments, one case each ------------------------------------- */

#define CASE_RACE "5988055001"

/* A record of race 5988055001, class 1, in the given (cadence, resistance). */
static struct gen_spec case_spec(const char *racer, const char *uuid,
                                 int32_t second, const char *cadence)
{
    struct gen_spec g = {CASE_RACE, racer,   "1",
                         "Rider",   uuid,    1000 * (int64_t)second,
                         second,    cadence, "10"};
    return g;
}

static struct gen_set *case_set(const struct gen_spec *specs, size_t count)
{
    struct gen_set *set = gen_set_new();
    for (size_t i = 0; i < count; i++)
        gen_add(set, &specs[i]);
    return set;
}

/* Order that delivers every item in set order except the items listed in
 * late, which come last in the order given. */
static void order_with_late(size_t count, const size_t *late, size_t late_count,
                            size_t *order)
{
    size_t n = 0;

    for (size_t i = 0; i < count; i++) {
        bool is_late = false;
        for (size_t j = 0; j < late_count; j++)
            is_late |= late[j] == i;
        if (!is_late)
            order[n++] = i;
    }
    for (size_t j = 0; j < late_count; j++)
        order[n++] = late[j];
}

/* Last payload of second in the single race of a case, or "". */
static const char *case_board(const struct board_log *log, int32_t second)
{
    const char *payload = log->slots[0][second].payload;
    return payload != NULL ? payload : "";
}

/*
 * Deliver a case at allowed lateness 0, 2 and 5 and compare with the
 * on-time run. Returns the log of lateness 0, where every listed record
 * is late; the caller frees it.
 */
static struct board_log *check_case(const struct gen_spec *specs, size_t count,
                                    const size_t *late, size_t late_count,
                                    int32_t top_n)
{
    struct gen_set *set = case_set(specs, count);
    size_t order[64];
    struct board_log *all_late = NULL;

    ASSERT_TRUE(count <= 64);
    order_with_late(count, late, late_count, order);
    for (size_t i = 0; i < 3; i++) {
        static const int32_t latenesses[] = {5, 2, 0};
        fprintf(stderr, "lateness %d\n", (int)latenesses[i]);
        struct agg_config cfg = amend_config(latenesses[i], top_n);
        struct board_log *log = check_delivery(&cfg, set, order, count);
        if (latenesses[i] == 0)
            all_late = log;
        else
            board_log_free(log);
    }
    free(set);
    return all_late;
}

TEST(agg_late_new_rider_joins_boards)
{
    const struct gen_spec specs[] = {
        case_spec("1", "u-1", 1, "50"), case_spec("1", "u-2", 2, "50"),
        case_spec("2", "u-9", 2, "90"), case_spec("1", "u-3", 3, "50"),
        case_spec("1", "u-4", 4, "50"), case_spec("1", "u-5", 5, "50"),
    };
    static const size_t late[] = {2};

    struct board_log *log = check_case(specs, 6, late, 1, 0);
    /* Rider 2 was unknown when 2..5 were published: all of them are sent
     * again and list it, and second 1 is left alone. */
    ASSERT_EQ(log->slots[0][1].revision, 0);
    for (int32_t s = 2; s <= 5; s++) {
        ASSERT_EQ(log->slots[0][s].revision, 1);
        ASSERT_TRUE(strstr(case_board(log, s), "\"racerId\":2,") != NULL);
    }
    board_log_free(log);
}

TEST(agg_late_before_first_matches_on_time)
{
    const struct gen_spec specs[] = {
        case_spec("1", "u-1", 1, "50"),
        case_spec("1", "u-3", 3, "50"),
        case_spec("1", "u-4", 4, "50"),
    };
    static const size_t late[] = {0};

    struct board_log *log = check_case(specs, 3, late, 1, 0);
    /* Seconds 1 and 2 are sent for the first time, 3 and 4 again. */
    ASSERT_EQ(log->slots[0][1].revision, 0);
    ASSERT_EQ(log->slots[0][2].revision, 0);
    ASSERT_EQ(log->slots[0][3].revision, 1);
    ASSERT_EQ(log->slots[0][4].revision, 1);
    ASSERT_TRUE(strstr(case_board(log, 2), "\"second\":1,") != NULL);
    board_log_free(log);
}

TEST(agg_late_conflict_winner_republishes)
{
    struct gen_spec winner = case_spec("1", "u-0", 2, "99");
    winner.device_ts_ms = 1;
    const struct gen_spec specs[] = {
        case_spec("1", "u-1", 1, "50"), case_spec("1", "u-2", 2, "50"), winner,
        case_spec("1", "u-3", 3, "50"), case_spec("1", "u-4", 4, "50"),
    };
    static const size_t late[] = {2};

    struct board_log *log = check_case(specs, 5, late, 1, 0);
    ASSERT_TRUE(strstr(case_board(log, 2), "\"cadence\":99,") != NULL);
    ASSERT_EQ(log->slots[0][4].revision, 1);
    board_log_free(log);
}

TEST(agg_late_at_newest_published_second)
{
    const struct gen_spec specs[] = {
        case_spec("1", "u-1", 1, "50"),
        case_spec("1", "u-2", 2, "50"),
        case_spec("2", "u-9", 2, "90"),
    };
    static const size_t late[] = {2};

    struct board_log *log = check_case(specs, 3, late, 1, 0);
    ASSERT_EQ(log->slots[0][1].revision, 0);
    ASSERT_EQ(log->slots[0][2].revision, 1);
    ASSERT_TRUE(strstr(case_board(log, 2), "\"racerId\":2,") != NULL);
    board_log_free(log);
}

TEST(agg_late_output_moves_later_totals)
{
    /* Rider 2 leads every published second until rider 1's late sample at
     * second 1 puts rider 1 ahead from second 1 to the end. */
    const struct gen_spec specs[] = {
        case_spec("1", "u-1", 1, "500"), case_spec("2", "u-5", 1, "60"),
        case_spec("2", "u-6", 2, "60"),  case_spec("2", "u-7", 3, "60"),
        case_spec("1", "u-2", 4, "0"),   case_spec("2", "u-8", 4, "60"),
    };
    static const size_t late[] = {0};

    struct board_log *log = check_case(specs, 6, late, 1, 0);
    for (int32_t s = 1; s <= 4; s++) {
        fprintf(stderr, "second %d\n", (int)s);
        ASSERT_TRUE(strstr(case_board(log, s),
                           "\"entries\":[{\"rank\":1,\"racerId\":1,") != NULL);
    }
    /* Second 4 was amended once by rider 2's own late sample there. */
    ASSERT_EQ(log->slots[0][3].revision, 1);
    ASSERT_EQ(log->slots[0][4].revision, 2);
    /* 401.25 at second 1 and 26.25 at second 4. */
    ASSERT_TRUE(strstr(case_board(log, 4), "\"total\":427.5}") != NULL);
    board_log_free(log);
}

TEST(agg_late_rider_enters_top_n)
{
    /* top_n 2: rider 3 is cut until its late sample at second 2 lifts it
     * above rider 2. */
    const struct gen_spec specs[] = {
        case_spec("1", "u-1", 1, "90"), case_spec("2", "u-2", 1, "50"),
        case_spec("3", "u-3", 1, "10"), case_spec("3", "u-4", 2, "200"),
        case_spec("1", "u-5", 3, "90"), case_spec("2", "u-6", 3, "50"),
    };
    static const size_t late[] = {3};

    struct board_log *log = check_case(specs, 6, late, 1, 2);
    ASSERT_TRUE(strstr(case_board(log, 1), "\"racerId\":3,") == NULL);
    for (int32_t s = 2; s <= 3; s++) {
        ASSERT_TRUE(strstr(case_board(log, s), "\"racerId\":3,") != NULL);
        ASSERT_TRUE(strstr(case_board(log, s), "\"racerId\":2,") == NULL);
    }
    board_log_free(log);
}

TEST(agg_late_copy_updates_name)
{
    /* A copy with the same values and a smaller key replaces the stored
     * sample's name, classId and arrival, which the leaderboards show. */
    struct gen_spec copy = case_spec("1", "u-0", 2, "50.0");
    copy.device_ts_ms = 1;
    copy.name = "Renamed";
    copy.class_id = "\"C\"";
    const struct gen_spec specs[] = {
        case_spec("1", "u-1", 1, "50"),
        case_spec("1", "u-2", 2, "50"),
        copy,
        case_spec("1", "u-3", 3, "50"),
    };
    static const size_t late[] = {2};

    struct board_log *log = check_case(specs, 4, late, 1, 0);
    ASSERT_EQ(log->slots[0][2].revision, 1);
    ASSERT_TRUE(strstr(case_board(log, 2), "\"name\":\"Renamed\"") != NULL);
    ASSERT_TRUE(strstr(case_board(log, 3), "\"name\":\"Rider\"") != NULL);
    board_log_free(log);
}
