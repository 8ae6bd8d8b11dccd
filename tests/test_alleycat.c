/*
 * Tests of the Alleycat messages that follow each race leaderboard when
 * agg_config.alleycat is set: their exact bytes, one per class in classId
 * order, the double-encoded results, racerId keys that collide as text,
 * the top_n cut and amended republishes. The expected strings are written
 * out by hand from the scoring formula.
 */
#include "aggregator/aggregator.h"
#include "tests/testlib.h"

#define MAX_MESSAGES 64

struct sent {
    enum agg_message_kind kind;
    int32_t second;
    int32_t revision;
    char *payload;
};

struct sink_log {
    struct sent messages[MAX_MESSAGES];
    int count;
};

static int keep_sample(void *arg, const struct agg_sample_row *row)
{
    (void)arg;
    (void)row;
    return 0;
}

static int keep_state(void *arg, const struct agg_id *id, const char *json,
                      size_t len)
{
    (void)arg;
    (void)id;
    (void)json;
    (void)len;
    return 0;
}

static int keep_history(void *arg, const struct agg_history_row *row)
{
    (void)arg;
    (void)row;
    return 0;
}

/* Keep race leaderboards and Alleycat messages in the order sent. */
static int keep_message(void *arg, const struct agg_message *msg)
{
    struct sink_log *log = arg;
    if (msg->kind != AGG_MSG_RACE_LEADERBOARD && msg->kind != AGG_MSG_ALLEYCAT)
        return 0;
    if (msg->kind == AGG_MSG_ALLEYCAT) {
        ASSERT_TRUE(msg->race != NULL);
        ASSERT_TRUE(msg->class_id != NULL);
    }
    ASSERT_TRUE(log->count < MAX_MESSAGES);
    struct sent *s = &log->messages[log->count++];
    s->kind = msg->kind;
    s->second = msg->second;
    s->revision = msg->revision;
    s->payload = strndup(msg->payload, msg->payload_len);
    ASSERT_TRUE(s->payload != NULL);
    return 0;
}

static void log_free(struct sink_log *log)
{
    for (int i = 0; i < log->count; i++)
        free(log->messages[i].payload);
    log->count = 0;
}

static struct agg *alleycat_agg(struct sink_log *log, int32_t top_n,
                                int32_t allowed_lateness_s)
{
    struct agg_config cfg = {
        .max_seconds = 3600,
        .allowed_lateness_s = allowed_lateness_s,
        .idle_close_s = 30,
        .max_future_skew_s = 60,
        .max_second_jump = 600,
        .late_policy = AGG_LATE_AMEND,
        .amend_window_s = 10,
        .top_n = top_n,
        .alleycat = true,
    };
    struct agg_sink sink = {log,          keep_sample, keep_state,
                            keep_message, keep_state,  keep_history};
    struct agg *agg = agg_new(&cfg, &sink);
    ASSERT_TRUE(agg != NULL);
    return agg;
}

/* Apply one record of race 5402746; racer and class are JSON ids. */
static void feed(struct agg *agg, const char *uuid, int second,
                 const char *racer, const char *class_id, const char *cadence,
                 const char *resistance, int64_t arrival_ms)
{
    char json[1024];
    struct agg_record rec;
    struct agg_reject_info why;
    enum agg_outcome outcome;

    snprintf(json, sizeof json,
             "{\"uuid\":\"%s\",\"event\":\"update\",\"deviceTimestamp\":%d,"
             "\"second\":%d,\"raceId\":5402746,\"name\":\"Rider\","
             "\"racerId\":%s,\"classId\":%s,\"cadence\":%s,"
             "\"resistance\":%s}",
             uuid, second * 1000, second, racer, class_id, cadence, resistance);
    if (agg_record_parse((const uint8_t *)json, strlen(json), 3600, &rec,
                         &why) != 0)
        test_fail(__FILE__, __LINE__, "rejected %s: %s", json, why.detail);
    ASSERT_EQ(agg_apply(agg, &rec, arrival_ms, &outcome), 0);
}

TEST(alleycat_message_bytes)
{
    struct sink_log log = {0};
    struct agg *agg = alleycat_agg(&log, 10, 1);

    /* Outputs: (90 + 35) x (0 + 65) / 100 = 81.25; (10.12 + 35) x
     * (41.3 + 65) / 100 = 47.96256 -> 47.9626; (1.00005 + 35) x (35 + 65)
     * / 100 = 36.00005 -> 36.0001; (0 + 35) x (0 + 65) / 100 = 22.75. */
    feed(agg, "u-1", 1, "7", "1", "90", "0", 1001);
    feed(agg, "u-2", 1, "\"b\"", "\"A\"", "10.12", "41.3", 1002);
    feed(agg, "u-3", 1, "12", "1", "0", "0", 1003);
    feed(agg, "u-4", 1, "\"q\\\"x\\\\\"", "\"A\"", "1.00005", "35", 1004);
    ASSERT_EQ(log.count, 0);
    /* Second 2 closes second 1 (allowed lateness 1). */
    feed(agg, "u-5", 2, "7", "1", "65", "35", 2001);

    ASSERT_EQ(log.count, 3);
    ASSERT_EQ(log.messages[0].kind, AGG_MSG_RACE_LEADERBOARD);
    ASSERT_EQ(log.messages[1].kind, AGG_MSG_ALLEYCAT);
    ASSERT_EQ(log.messages[2].kind, AGG_MSG_ALLEYCAT);
    ASSERT_EQ(log.messages[1].second, 1);
    /* Class 1 (numbers before strings), entries in leaderboard order:
     * {"msg":"results","classId":"1","raceId":"race-5402746","ts":"1004",
     *  "results":"{\"7\":81.25,\"12\":22.75}"} */
    ASSERT_STR_EQ(log.messages[1].payload,
                  "{\"msg\":\"results\",\"classId\":\"1\",\"raceId\":\"race-"
                  "5402746\",\"ts\":\"1004\",\"results\":\"{\\\"7\\\":81.25,"
                  "\\\"12\\\":22.75}\"}");
    /* Class "A"; the racerId q"x\ is escaped once as a key and once more
     * inside the results string:
     * {"msg":"results","classId":"A","raceId":"race-5402746","ts":"1004",
     *  "results":"{\"b\":47.9626,\"q\\\"x\\\\\":36.0001}"} */
    ASSERT_STR_EQ(log.messages[2].payload,
                  "{\"msg\":\"results\",\"classId\":\"A\",\"raceId\":\"race-"
                  "5402746\",\"ts\":\"1004\",\"results\":\"{\\\"b\\\":47."
                  "9626,\\\"q\\\\\\\"x\\\\\\\\\\\":36.0001}\"}");

    /* Second 3 closes second 2, where only rider 7 has a new sample:
     * (65 + 35) x (35 + 65) / 100 = 100 is its output there, while its
     * total is 181.25. The others show their output at second 1. */
    feed(agg, "u-6", 3, "7", "1", "0", "0", 3001);
    ASSERT_EQ(log.count, 6);
    ASSERT_STR_EQ(log.messages[4].payload,
                  "{\"msg\":\"results\",\"classId\":\"1\",\"raceId\":\"race-"
                  "5402746\",\"ts\":\"2001\",\"results\":\"{\\\"7\\\":100,"
                  "\\\"12\\\":22.75}\"}");
    agg_free(agg);
    log_free(&log);
}

TEST(alleycat_string_race_and_integer_output)
{
    struct sink_log log = {0};
    struct agg *agg = alleycat_agg(&log, 10, 0);
    struct agg_record rec;
    struct agg_reject_info why;
    enum agg_outcome outcome;
    const char *json =
        "{\"uuid\":\"u-1\",\"event\":\"update\",\"deviceTimestamp\":5,"
        "\"second\":1,\"raceId\":\"R-7\",\"name\":\"Rider\",\"racerId\":3,"
        "\"classId\":\"7\",\"cadence\":65,\"resistance\":35}";
    ASSERT_EQ(
        agg_record_parse((const uint8_t *)json, strlen(json), 3600, &rec, &why),
        0);
    /* Allowed lateness 0 closes second 1 at once. */
    ASSERT_EQ(agg_apply(agg, &rec, 1620824038331, &outcome), 0);

    ASSERT_EQ(log.count, 2);
    /* (65 + 35) x (35 + 65) / 100 = 100, printed without decimals. */
    ASSERT_STR_EQ(log.messages[1].payload,
                  "{\"msg\":\"results\",\"classId\":\"7\",\"raceId\":\"race-R-"
                  "7\",\"ts\":\"1620824038331\",\"results\":\"{\\\"3\\\":"
                  "100}\"}");
    agg_free(agg);
    log_free(&log);
}

TEST(alleycat_equal_key_keeps_higher)
{
    struct sink_log log = {0};
    struct agg *agg = alleycat_agg(&log, 10, 1);

    /* The string "7" and the number 7 both become the key "7"; the
     * higher-ranked one is kept. "-0" and 0 are different keys. */
    feed(agg, "u-1", 1, "\"7\"", "1", "90", "0", 1001);
    feed(agg, "u-2", 1, "0", "1", "10.12", "41.3", 1002);
    feed(agg, "u-3", 1, "\"-0\"", "1", "1.00005", "35", 1003);
    feed(agg, "u-4", 1, "7", "1", "0", "0", 1004);
    /* In another class, a racer whose text twin is listed keeps its key. */
    feed(agg, "u-5", 1, "\"0\"", "2", "0", "0", 1005);
    feed(agg, "u-6", 2, "7", "1", "0", "0", 2001);

    ASSERT_EQ(log.count, 3);
    ASSERT_STR_EQ(log.messages[1].payload,
                  "{\"msg\":\"results\",\"classId\":\"1\",\"raceId\":\"race-"
                  "5402746\",\"ts\":\"1005\",\"results\":\"{\\\"7\\\":81.25,"
                  "\\\"0\\\":47.9626,\\\"-0\\\":36.0001}\"}");
    ASSERT_STR_EQ(log.messages[2].payload,
                  "{\"msg\":\"results\",\"classId\":\"2\",\"raceId\":\"race-"
                  "5402746\",\"ts\":\"1005\",\"results\":\"{\\\"0\\\":22."
                  "75}\"}");
    agg_free(agg);
    log_free(&log);
}

TEST(alleycat_follows_top_n)
{
    struct sink_log log = {0};
    struct agg *agg = alleycat_agg(&log, 1, 1);

    /* Only rider 7 is listed, so class 2 gets no message. */
    feed(agg, "u-1", 1, "7", "1", "90", "0", 1001);
    feed(agg, "u-2", 1, "8", "2", "0", "0", 1002);
    feed(agg, "u-3", 2, "7", "1", "90", "0", 2001);

    ASSERT_EQ(log.count, 2);
    ASSERT_EQ(log.messages[1].kind, AGG_MSG_ALLEYCAT);
    ASSERT_STR_EQ(log.messages[1].payload,
                  "{\"msg\":\"results\",\"classId\":\"1\",\"raceId\":\"race-"
                  "5402746\",\"ts\":\"1002\",\"results\":\"{\\\"7\\\":81."
                  "25}\"}");
    agg_free(agg);
    log_free(&log);
}

TEST(alleycat_follows_amended_leaderboard)
{
    struct sink_log log = {0};
    struct agg *agg = alleycat_agg(&log, 10, 1);

    feed(agg, "u-1", 1, "7", "1", "90", "0", 1001);
    feed(agg, "u-2", 2, "7", "1", "90", "0", 2001);
    ASSERT_EQ(log.count, 2);
    /* A late sample of rider 12 at second 1 republishes second 1. */
    feed(agg, "u-3", 1, "12", "1", "0", "0", 2002);

    ASSERT_EQ(log.count, 4);
    ASSERT_EQ(log.messages[2].kind, AGG_MSG_RACE_LEADERBOARD);
    ASSERT_EQ(log.messages[2].revision, 1);
    ASSERT_EQ(log.messages[3].kind, AGG_MSG_ALLEYCAT);
    ASSERT_EQ(log.messages[3].revision, 1);
    /* ts is the leaderboard's: the newest arrival among the samples at or
     * before second 1, now the late one. */
    ASSERT_STR_EQ(log.messages[3].payload,
                  "{\"msg\":\"results\",\"classId\":\"1\",\"raceId\":\"race-"
                  "5402746\",\"ts\":\"2002\",\"results\":\"{\\\"7\\\":81.25,"
                  "\\\"12\\\":22.75}\"}");
    agg_free(agg);
    log_free(&log);
}
