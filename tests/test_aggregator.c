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

#define RACE "5402746"

/* ---- capture sink ------------------------------------------------------- */

#define MAX_ROWS   512
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

struct capture {
    struct strbuf messages; /* payloads, one per line */
    int message_count;
    int sample_calls;
    struct stored_row rows[MAX_ROWS];
    int row_count;
    struct stored_state states[MAX_STATES];
    int state_count;
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

static int capture_state(void *arg, const struct agg_id *race, const char *json,
                         size_t len)
{
    struct capture *c = arg;
    struct stored_state *s = NULL;

    for (int i = 0; i < c->state_count && s == NULL; i++) {
        if (agg_id_cmp(&c->states[i].race, race) == 0)
            s = &c->states[i];
    }
    if (s == NULL) {
        ASSERT_TRUE(c->state_count < MAX_STATES);
        s = &c->states[c->state_count++];
    }
    ASSERT_TRUE(len < sizeof s->json);
    s->race = *race;
    memcpy(s->json, json, len);
    s->json[len] = '\0';
    s->len = len;
    return 0;
}

static int capture_message(void *arg, const struct agg_message *msg)
{
    struct capture *c = arg;

    ASSERT_EQ(msg->kind, AGG_MSG_RACE_LEADERBOARD);
    ASSERT_TRUE(msg->class_id == NULL);
    sb_append(&c->messages, msg->payload, msg->payload_len);
    sb_putc(&c->messages, '\n');
    c->message_count++;
    return 0;
}

static struct capture *capture_new(void)
{
    struct capture *c = calloc(1, sizeof *c);
    ASSERT_TRUE(c != NULL);
    sb_init(&c->messages, 1 << 24);
    return c;
}

static void capture_free(struct capture *c)
{
    sb_free(&c->messages);
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
    struct agg_sink sink = {c, capture_sample, capture_state, capture_message};
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
                  "\"activityMs\":2000,\"revisions\":[]}");

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
                  "\"activityMs\":7000,\"revisions\":[[3,1],[4,2],[5,2]]}");
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

/* Build a new aggregator from what the capture stored, like a restart. */
static struct agg *restore_from(const struct agg_config *cfg,
                                struct capture *store, struct capture *out,
                                int64_t stream_time_ms)
{
    struct agg *agg = agg_for(cfg, out);

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
    agg_restore_stream_time(agg, stream_time_ms);
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
    /* 56 bytes per second plus a 36-byte uuid stays within 96 bytes. */
    ASSERT_TRUE(sizeof(struct slot) <= 56);
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
