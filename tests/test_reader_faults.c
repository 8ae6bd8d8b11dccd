/*
 * Fault-injection tests of the shard reader. kinesalite never throttles or
 * fails on purpose, so each case puts tests/kinesis-fault-proxy.js between
 * the reader and kinesalite. The proxy logs every request with its arrival
 * time in ms, so a case can check which iterator each GetRecords sent,
 * how long the reader waited between calls, and which GetShardIterator
 * calls followed.
 *
 * Delays are checked as lower bounds (the backoff floors), never as upper
 * bounds, except for two limits of the protocol: at most 5 GetRecords per
 * second per shard, and a backoff of at most 30 s.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "common/base64.h"
#include "common/log.h"
#include "shardreader/kinesis.h"
#include "shardreader/shardreader.h"
#include "tests/kinesis_testlib.h"
#include "tests/testlib.h"

#define STREAM "race"

/* The reader's backoff cap (SHARD_BACKOFF_CAP_MS in shardreader/reader.c). */
#define BACKOFF_CAP_MS 30000

/*
 * The proxy stamps requests with Date.now() and the reader's timers count
 * libuv's loop time, both in whole milliseconds, so a gap in the log can
 * read up to 1 ms shorter than the delay the reader waited.
 */
#define STAMP_SLACK_MS 2

/* Kinesis serves at most 5 GetRecords per second per shard. */
#define MAX_GET_RECORDS_PER_S 5

/* ---- records in a chosen shard ------------------------------------------ */

/*
 * Put record i (payload and partition key as put_records() makes them)
 * into shard SHARD0 or SHARD1 of a 2-shard stream, through e. kinesalite
 * splits the hash key range in half, so ExplicitHashKey 0 lands in shard 0
 * and 2^127 in shard 1.
 */
static void put_record_in(struct env *e, int i, const char *shard)
{
    uint8_t data[128];
    char encoded[BASE64_ENCODED_LEN(sizeof data) + 1], request[1024];
    char *reply = NULL;
    size_t len = make_payload(i, data);
    const char *hash_key = strcmp(shard, SHARD0) == 0 ? "0" : MID_HASH_KEY;

    base64_encode(data, len, encoded);
    snprintf(request, sizeof request,
             "{\"StreamName\":\"" STREAM "\",\"Data\":\"%s\","
             "\"PartitionKey\":\"key-%d\",\"ExplicitHashKey\":\"%s\"}",
             encoded, i, hash_key);
    ASSERT_EQ(kinesis_call(e, "PutRecord", request, &reply), 200);

    json_t *root = json_loads(reply, 0, NULL);
    ASSERT_TRUE(root != NULL);
    ASSERT_STR_EQ(json_string_value(json_object_get(root, "ShardId")), shard);
    json_decref(root);
    free(reply);
}

/* ---- the proxy's log ----------------------------------------------------- */

static int64_t entry_time(const json_t *entry)
{
    const json_t *t = json_object_get(entry, "t");
    ASSERT_TRUE(json_is_integer(t));
    return json_integer_value(t);
}

/* The fault the proxy applied to a logged request, or NULL for none. */
static const char *entry_fault(const json_t *entry)
{
    return json_string_value(json_object_get(entry, "fault"));
}

static const char *entry_iterator(const json_t *entry)
{
    const json_t *input = json_object_get(entry, "input");
    const char *it = json_string_value(json_object_get(input, "ShardIterator"));
    ASSERT_TRUE(it != NULL);
    return it;
}

/* Check that the logged requests first to first + count - 1 of reqs all
 * sent the same ShardIterator. */
static void check_same_iterator(const json_t *reqs, size_t first, size_t count)
{
    ASSERT_TRUE(json_array_size(reqs) >= first + count);
    const char *it = entry_iterator(json_array_get(reqs, first));
    for (size_t i = first + 1; i < first + count; i++)
        ASSERT_STR_EQ(entry_iterator(json_array_get(reqs, i)), it);
}

/*
 * Check the gaps between the logged requests first to first + count - 1:
 * retry n (1 for the first) waits at least base_ms * 2^(n-1), the floor of
 * kinesis_backoff_ms(), and less than the 30 s cap.
 */
static void check_backoff_gaps(const json_t *reqs, size_t first, size_t count,
                               int64_t base_ms)
{
    ASSERT_TRUE(json_array_size(reqs) >= first + count);
    int64_t floor_ms = base_ms;
    for (size_t i = first + 1; i < first + count; i++) {
        int64_t gap = entry_time(json_array_get(reqs, i)) -
                      entry_time(json_array_get(reqs, i - 1));
        if (gap < floor_ms - STAMP_SLACK_MS)
            test_fail(__FILE__, __LINE__,
                      "retry %zu came %" PRId64 " ms after the failure, "
                      "expected at least %" PRId64 " ms",
                      i - first, gap, floor_ms);
        ASSERT_TRUE(gap < BACKOFF_CAP_MS + STAMP_SLACK_MS);
        floor_ms *= 2;
    }
}

/* Check that no window of 1 s contains more than 5 GetRecords of shard_id. */
static void check_get_records_rate(const char *shard_id)
{
    json_t *reqs = logged_requests("GetRecords", shard_id);
    size_t n = json_array_size(reqs);

    ASSERT_TRUE(n > 0);
    for (size_t i = 0; i < n; i++) {
        int64_t start = entry_time(json_array_get(reqs, i));
        size_t in_window = 0;
        for (size_t j = i; j < n; j++) {
            if (entry_time(json_array_get(reqs, j)) < start + 1000)
                in_window++;
        }
        if (in_window > MAX_GET_RECORDS_PER_S)
            test_fail(__FILE__, __LINE__,
                      "%zu GetRecords of %s within 1 s from t=%" PRId64,
                      in_window, shard_id, start);
    }
    json_decref(reqs);
}

/* Number of the logged requests in reqs that the proxy failed with fault. */
static size_t count_fault(const json_t *reqs, const char *fault)
{
    size_t i, n = 0;
    json_t *entry;
    json_array_foreach(reqs, i, entry)
    {
        const char *f = entry_fault(entry);
        n += f != NULL && strcmp(f, fault) == 0;
    }
    return n;
}

static const char *iterator_type(const json_t *request)
{
    return json_string_value(kinesis_member(request, "ShardIteratorType"));
}

static const char *starting_seq(const json_t *request)
{
    return json_string_value(kinesis_member(request, "StartingSequenceNumber"));
}

/* ---- podium's log lines -------------------------------------------------- */

static int captured_fd = -1;
static char captured_path[4300];

/* Copy the captured log to stderr, so that a failed case shows it. */
static void dump_captured_log(void)
{
    char buf[4096];
    size_t n;

    if (captured_fd < 0)
        return;
    FILE *f = fopen(captured_path, "r");
    if (f == NULL)
        return;
    fprintf(stderr, "---- podium log (%s) ----\n", captured_path);
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, n, stderr);
    fclose(f);
}

/* Send podium's log lines to a file of the case's tmpdir, which
 * captured_lines() reads back. */
static void capture_log(void)
{
    snprintf(captured_path, sizeof captured_path, "%s/podium.log",
             test_tmpdir());
    captured_fd =
        open(captured_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
    ASSERT_TRUE(captured_fd >= 0);
    log_set_fd(captured_fd);
    atexit(dump_captured_log);
}

/* Send podium's log lines to stderr again. */
static void release_log(void)
{
    log_set_fd(2);
    close(captured_fd);
    captured_fd = -1;
}

/* The captured lines of level whose message starts with prefix, as an
 * owned array of JSON objects, oldest first. */
static json_t *captured_lines(const char *level, const char *prefix)
{
    json_t *out = json_array();
    char line[8192];
    FILE *f = fopen(captured_path, "r");

    ASSERT_TRUE(f != NULL);
    while (fgets(line, sizeof line, f) != NULL) {
        json_t *entry = json_loads(line, 0, NULL);
        ASSERT_TRUE(entry != NULL);
        const char *lvl = json_string_value(json_object_get(entry, "level"));
        const char *msg = json_string_value(json_object_get(entry, "message"));
        if (lvl != NULL && strcmp(lvl, level) == 0 && msg != NULL &&
            strncmp(msg, prefix, strlen(prefix)) == 0)
            json_array_append(out, entry);
        json_decref(entry);
    }
    fclose(f);
    return out;
}

/*
 * Read the delay and the number of suppressed warnings from a retry
 * warning: "failed to ...: REASON; retrying in N ms", followed by " (M
 * similar warnings suppressed)" when M is not 0.
 */
static void parse_retry_warning(const json_t *line, uint64_t *delay_ms,
                                unsigned *suppressed)
{
    const char *msg = json_string_value(json_object_get(line, "message"));
    const char *tail = msg != NULL ? strstr(msg, "; retrying in ") : NULL;

    int end = 0;
    if (tail == NULL ||
        sscanf(tail, "; retrying in %" SCNu64 " ms%n", delay_ms, &end) != 1 ||
        end == 0)
        test_fail(__FILE__, __LINE__, "not a retry warning: %s",
                  msg != NULL ? msg : "(no message)");
    *suppressed = 0;
    if (tail[end] == '\0')
        return;
    if (sscanf(tail + end, " (%u similar warnings suppressed)", suppressed) !=
            1 ||
        *suppressed == 0)
        test_fail(__FILE__, __LINE__,
                  "expected nothing or \" (M similar warnings suppressed)\" "
                  "with M > 0 after the delay: %s",
                  msg);
}

/* Milliseconds since the epoch of a log line's "time" member. */
static int64_t line_time(const json_t *line)
{
    const char *text = json_string_value(json_object_get(line, "time"));
    struct tm tm = {0};
    int ms = 0;

    ASSERT_TRUE(text != NULL);
    ASSERT_EQ(sscanf(text, "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon,
                     &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms),
              7);
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm) * 1000 + ms;
}

/* ---- backoff ------------------------------------------------------------ */

TEST(kinesis_backoff_floor_and_jitter)
{
    const uint64_t base = 250, cap = 30000;
    uint64_t rng = kinesis_rng_seed(&cap);

    for (uint32_t attempt = 1; attempt <= 12; attempt++) {
        uint64_t step = base << (attempt - 1);
        if (step > cap / 2)
            step = cap / 2;
        uint64_t lowest = UINT64_MAX, highest = 0;
        for (int draw = 0; draw < 2000; draw++) {
            uint64_t ms = kinesis_backoff_ms(&rng, attempt, base, cap);
            if (ms < step || ms > 2 * step)
                test_fail(__FILE__, __LINE__,
                          "attempt %u: %" PRIu64 " ms is outside [%" PRIu64
                          ", %" PRIu64 "]",
                          attempt, ms, step, 2 * step);
            ASSERT_TRUE(ms <= cap);
            lowest = ms < lowest ? ms : lowest;
            highest = ms > highest ? ms : highest;
        }
        /* Jitter: 2,000 uniform draws reach both ends of the range (a
         * quarter of it each) except with a chance of about 2^-830. */
        ASSERT_TRUE(lowest < highest);
        ASSERT_TRUE(lowest < step + step / 4);
        ASSERT_TRUE(highest > 2 * step - step / 4);
    }
}

/* ---- throttling ---------------------------------------------------------- */

TEST(reader_survives_throttle_storm)
{
    struct env e, direct;
    struct consumer c = {.auto_commit = true};
    int kport = start_kinesalite();

    env_init(&direct, kport);
    create_stream(&direct, STREAM, 2);
    put_record_in(&direct, 0, SHARD0);
    put_record_in(&direct, 1, SHARD1);

    /* The next 3 GetRecords of shard 0 are throttled, the 4th passes. */
    int pport =
        start_proxy(kport, "[{\"action\":\"GetRecords\",\"shard\":\"" SHARD0
                           "\",\"fault\":\"throttle\",\"times\":3}]");
    env_init(&e, pport);
    capture_log();
    struct reader_config cfg = reader_config(&e, STREAM);
    cfg.poll_interval_ms = 250;
    consumer_start(&c, &e, &cfg, NULL, 0);

    /* Shard 1 goes on while shard 0 backs off. Records put after the
     * first throttle arrive from shard 1 before shard 0 delivers, since
     * shard 0's 4th call comes at least 250 + 500 + 1000 ms after its
     * first. */
    WAIT_FOR(&e, counters_of(c.rd).throttled >= 1);
    for (int i = 2; i < 5; i++)
        put_record_in(&direct, i, SHARD1);
    WAIT_FOR(&e, shard_records(&c, SHARD1) == 4);
    ASSERT_EQ(shard_records(&c, SHARD0), 0);

    WAIT_FOR(&e, c.records == 5 && reader_caught_up(c.rd));
    check_records(&c, 0, 5);
    ASSERT_EQ(shard_records(&c, SHARD0), 1);
    struct reader_counters counters = counters_of(c.rd);
    ASSERT_EQ(counters.throttled, 3);
    ASSERT_EQ(counters.server_errors, 0);
    ASSERT_EQ(counters.get_shard_iterator_calls, 2);
    ASSERT_TRUE(c.fatal == NULL);

    /* The 3 throttled calls and the 4th that passed sent the same
     * iterator, after growing backoffs. */
    json_t *reqs = logged_requests("GetRecords", SHARD0);
    ASSERT_TRUE(json_array_size(reqs) >= 4);
    for (size_t i = 0; i < 3; i++)
        ASSERT_STR_EQ(entry_fault(json_array_get(reqs, i)), "throttle");
    ASSERT_TRUE(entry_fault(json_array_get(reqs, 3)) == NULL);
    check_same_iterator(reqs, 0, 4);
    check_backoff_gaps(reqs, 0, 4, 250);
    json_decref(reqs);
    json_t *iterators = iterator_requests(SHARD0);
    ASSERT_EQ(json_array_size(iterators), 1);
    json_decref(iterators);

    /* Run a few more polls, then check the rate over the whole run. */
    uint64_t calls = shard_calls(c.rd, SHARD0);
    WAIT_FOR(&e, shard_calls(c.rd, SHARD0) >= calls + 4);
    check_get_records_rate(SHARD0);
    check_get_records_rate(SHARD1);

    /* One warning per throttle names the delay before the retry. The
     * reader allows 10 warnings in 10 s, so none is suppressed. */
    json_t *warnings = captured_lines("warn", "failed to get records");
    ASSERT_EQ(json_array_size(warnings), 3);
    uint64_t floor_ms = 250;
    for (size_t i = 0; i < 3; i++) {
        const json_t *line = json_array_get(warnings, i);
        const char *msg = json_string_value(json_object_get(line, "message"));
        uint64_t delay;
        unsigned suppressed;
        ASSERT_STR_EQ(json_string_value(json_object_get(line, "shard")),
                      SHARD0);
        ASSERT_TRUE(strstr(msg, "ProvisionedThroughputExceededException") !=
                    NULL);
        parse_retry_warning(line, &delay, &suppressed);
        ASSERT_TRUE(delay >= floor_ms);
        ASSERT_TRUE(delay <= 2 * floor_ms);
        ASSERT_EQ(suppressed, 0);
        floor_ms *= 2;
    }
    json_decref(warnings);

    consumer_finish(&c, &e);
    release_log();
    env_close(&e);
    env_close(&direct);
}

TEST(reader_rate_limits_retry_warnings)
{
    struct env e, direct;
    struct consumer c = {.auto_commit = true};
    int kport = start_kinesalite();

    env_init(&direct, kport);
    create_stream(&direct, STREAM, 4);
    env_close(&direct);

    /* Every GetRecords of every shard is throttled. */
    int pport = start_proxy(
        kport, "[{\"action\":\"GetRecords\",\"fault\":\"throttle\"}]");
    env_init(&e, pport);
    capture_log();
    struct reader_config cfg = reader_config(&e, STREAM);
    consumer_start(&c, &e, &cfg, NULL, 0);

    /*
     * Each of the 4 shards is throttled 4 times within 2.8 s, the sum of
     * its first 3 backoffs at their maximum of 400, 800 and 1600 ms. So 14
     * throttles come well inside the reader's window of 10 s, which
     * allows 10 warnings.
     */
    WAIT_FOR(&e, counters_of(c.rd).throttled >= 14);
    set_proxy_rules("[]");
    WAIT_FOR(&e, reader_caught_up(c.rd));
    uint64_t storm_end = now_ms();
    uint64_t storm = counters_of(c.rd).throttled;

    json_t *lines = captured_lines("warn", "failed to get records");
    size_t logged = json_array_size(lines);
    ASSERT_TRUE(logged >= 10);
    ASSERT_TRUE(logged < storm);
    int64_t first = line_time(json_array_get(lines, 0));
    size_t in_first_window = 0;
    for (size_t i = 0; i < logged; i++) {
        if (line_time(json_array_get(lines, i)) < first + 10000 - 10)
            in_first_window++;
    }
    ASSERT_EQ(in_first_window, 10);
    json_decref(lines);

    /* Once the window has passed, the next warning reports how many were
     * suppressed, so every throttle is accounted for. */
    WAIT_FOR(&e, now_ms() > storm_end + 10000 + 100);
    set_proxy_rules("[{\"action\":\"GetRecords\",\"shard\":\"" SHARD0
                    "\",\"fault\":\"throttle\",\"times\":1}]");
    WAIT_FOR(&e, counters_of(c.rd).throttled == storm + 1);

    lines = captured_lines("warn", "failed to get records");
    uint64_t total = 0;
    unsigned last_suppressed = 0;
    for (size_t i = 0; i < json_array_size(lines); i++) {
        uint64_t delay;
        parse_retry_warning(json_array_get(lines, i), &delay, &last_suppressed);
        total += 1 + last_suppressed;
    }
    ASSERT_TRUE(last_suppressed > 0);
    ASSERT_EQ(total, storm + 1);
    json_decref(lines);

    consumer_finish(&c, &e);
    release_log();
    env_close(&e);
}

/* ---- server errors ------------------------------------------------------- */

TEST(reader_retries_server_errors)
{
    struct env e, direct;
    struct consumer c = {.auto_commit = true};
    int kport = start_kinesalite();

    env_init(&direct, kport);
    create_stream(&direct, STREAM, 2);
    put_record_in(&direct, 0, SHARD0);
    put_record_in(&direct, 1, SHARD0);
    put_record_in(&direct, 2, SHARD1);
    env_close(&direct);

    /*
     * Shard 0 gets a 500 with InternalFailure, a 503, a 500 with an empty
     * body (kinesis-local 0.6.2's reply to an iterator it cannot decode)
     * and a LimitExceededException, in that order. That is 3 failures that
     * count towards renewing the iterator, one fewer than needed. Shard 1
     * gets 2 LimitExceededException.
     */
    int pport =
        start_proxy(kport, "[{\"action\":\"GetRecords\",\"shard\":\"" SHARD0
                           "\",\"fault\":\"internal\",\"times\":1},"
                           "{\"action\":\"GetRecords\",\"shard\":\"" SHARD0
                           "\",\"fault\":\"unavailable\",\"times\":1},"
                           "{\"action\":\"GetRecords\",\"shard\":\"" SHARD0
                           "\",\"fault\":\"empty500\",\"times\":1},"
                           "{\"action\":\"GetRecords\",\"shard\":\"" SHARD0
                           "\",\"fault\":\"limit\",\"times\":1},"
                           "{\"action\":\"GetRecords\",\"shard\":\"" SHARD1
                           "\",\"fault\":\"limit\",\"times\":2}]");
    env_init(&e, pport);
    struct reader_config cfg = reader_config(&e, STREAM);
    cfg.poll_interval_ms = 250;
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, c.records == 3 && reader_caught_up(c.rd));
    check_records(&c, 0, 3);

    struct reader_counters counters = counters_of(c.rd);
    ASSERT_EQ(counters.server_errors, 3);
    ASSERT_EQ(counters.throttled, 3);
    ASSERT_EQ(counters.connection_errors, 0);
    ASSERT_EQ(counters.other_errors, 0);
    ASSERT_EQ(counters.timeouts, 0);
    ASSERT_EQ(counters.get_shard_iterator_calls, 2);
    ASSERT_TRUE(c.fatal == NULL);

    json_t *reqs = logged_requests("GetRecords", SHARD0);
    static const char *const faults0[] = {"internal", "unavailable", "empty500",
                                          "limit"};
    for (size_t i = 0; i < 4; i++)
        ASSERT_STR_EQ(entry_fault(json_array_get(reqs, i)), faults0[i]);
    ASSERT_TRUE(entry_fault(json_array_get(reqs, 4)) == NULL);
    check_same_iterator(reqs, 0, 5);
    check_backoff_gaps(reqs, 0, 5, 250);
    json_decref(reqs);

    reqs = logged_requests("GetRecords", SHARD1);
    ASSERT_EQ(count_fault(reqs, "limit"), 2);
    ASSERT_TRUE(entry_fault(json_array_get(reqs, 2)) == NULL);
    check_same_iterator(reqs, 0, 3);
    check_backoff_gaps(reqs, 0, 3, 250);
    json_decref(reqs);

    check_get_records_rate(SHARD0);
    check_get_records_rate(SHARD1);
    consumer_finish(&c, &e);
    env_close(&e);
}

/* ---- broken connections and replies -------------------------------------- */

TEST(reader_retries_broken_replies)
{
    struct env e, direct;
    struct consumer c = {.auto_commit = true};
    int kport = start_kinesalite();

    env_init(&direct, kport);
    create_stream(&direct, STREAM, 1);
    put_records(&direct, STREAM, 0, 5);

    /* The proxy closes the connection of every GetRecords without a reply
     * until the reader has counted one connection error. */
    int pport =
        start_proxy(kport, "[{\"action\":\"GetRecords\",\"fault\":\"reset\"}]");
    env_init(&e, pport);
    struct reader_config cfg = reader_config(&e, STREAM);
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, counters_of(c.rd).connection_errors >= 1);
    set_proxy_rules("[]");
    WAIT_FOR(&e, c.records == 5 && reader_caught_up(c.rd));

    /*
     * libcurl sends a request again on a new connection, without telling
     * the reader, when a reused connection closes before any byte of the
     * reply came back. Such a reset shows in the proxy's log as a request
     * that the reader did not count, so every logged reset is either a
     * connection error of the reader or one of those silent repeats.
     * Nothing is in flight here: the reader waits for its next poll.
     */
    json_t *reqs = logged_requests("GetRecords", SHARD0);
    struct reader_counters counters = counters_of(c.rd);
    size_t resets = count_fault(reqs, "reset");
    size_t silent = json_array_size(reqs) - counters.get_records_calls;
    ASSERT_TRUE(json_array_size(reqs) >= counters.get_records_calls);
    ASSERT_EQ(counters.connection_errors + silent, resets);
    ASSERT_EQ(counters.other_errors, 0);
    /* The reader kept its iterator through the resets. */
    ASSERT_EQ(counters.get_shard_iterator_calls, 1);
    check_same_iterator(reqs, 0, resets + 1);
    uint64_t connection_errors = counters.connection_errors;
    size_t logged_before = json_array_size(reqs);
    json_decref(reqs);

    /*
     * The next reply is cut in half after headers that promise all of it,
     * and the one after is a complete reply of half a JSON body. The
     * records are put while the reader's loop is not running, so both
     * faults hit replies that contain them.
     */
    set_proxy_rules("[{\"action\":\"GetRecords\",\"fault\":\"truncated\","
                    "\"times\":1},"
                    "{\"action\":\"GetRecords\",\"fault\":\"garbled\","
                    "\"times\":1}]");
    put_records(&direct, STREAM, 5, 5);
    /* Wait for at least 10 records, so that check_records() reports
     * repeats at once rather than after WAIT_MS. */
    WAIT_FOR(&e, c.records >= 10 && reader_caught_up(c.rd));
    check_records(&c, 0, 10);

    /* A truncated reply is a transfer failure and libcurl does not send
     * it again, because the status line had come back. A garbled body is
     * an invalid reply. */
    counters = counters_of(c.rd);
    ASSERT_EQ(counters.connection_errors, connection_errors + 1);
    ASSERT_EQ(counters.other_errors, 1);
    ASSERT_EQ(counters.server_errors, 0);
    ASSERT_EQ(counters.get_shard_iterator_calls, 1);
    reqs = logged_requests("GetRecords", SHARD0);
    ASSERT_STR_EQ(entry_fault(json_array_get(reqs, logged_before)),
                  "truncated");
    ASSERT_STR_EQ(entry_fault(json_array_get(reqs, logged_before + 1)),
                  "garbled");
    ASSERT_TRUE(entry_fault(json_array_get(reqs, logged_before + 2)) == NULL);
    check_same_iterator(reqs, logged_before, 3);
    json_decref(reqs);
    ASSERT_TRUE(c.fatal == NULL);

    consumer_finish(&c, &e);
    env_close(&e);
    env_close(&direct);
}

/* ---- slow replies -------------------------------------------------------- */

TEST(reader_times_out_slow_replies)
{
    struct env e, direct;
    struct consumer c = {.auto_commit = true};
    int kport = start_kinesalite();

    env_init(&direct, kport);
    create_stream(&direct, STREAM, 2);
    put_record_in(&direct, 0, SHARD0);
    put_record_in(&direct, 1, SHARD1);
    env_close(&direct);

    /* Shard 0's first reply comes after the request timeout, shard 1's
     * within it. */
    int pport =
        start_proxy(kport, "[{\"action\":\"GetRecords\",\"shard\":\"" SHARD0
                           "\",\"fault\":\"slow\",\"delay_ms\":4000,"
                           "\"times\":1},"
                           "{\"action\":\"GetRecords\",\"shard\":\"" SHARD1
                           "\",\"fault\":\"slow\",\"delay_ms\":500,"
                           "\"times\":1}]");
    env_init(&e, pport);
    struct reader_config cfg = reader_config(&e, STREAM);
    cfg.request_timeout_ms = 1500;
    consumer_start(&c, &e, &cfg, NULL, 0);

    /* Shard 1 is read while shard 0's request is still waiting. */
    WAIT_FOR(&e, shard_records(&c, SHARD1) == 1);
    ASSERT_EQ(counters_of(c.rd).timeouts, 0);
    ASSERT_EQ(shard_records(&c, SHARD0), 0);

    WAIT_FOR(&e, c.records == 2 && reader_caught_up(c.rd));
    check_records(&c, 0, 2);
    struct reader_counters counters = counters_of(c.rd);
    ASSERT_EQ(counters.timeouts, 1);
    ASSERT_EQ(counters.get_shard_iterator_calls, 2);

    /* Shard 0 sent the same iterator again after the timeout. */
    json_t *reqs = logged_requests("GetRecords", SHARD0);
    ASSERT_STR_EQ(entry_fault(json_array_get(reqs, 0)), "slow");
    check_same_iterator(reqs, 0, 2);
    ASSERT_TRUE(entry_time(json_array_get(reqs, 1)) -
                    entry_time(json_array_get(reqs, 0)) >=
                cfg.request_timeout_ms - STAMP_SLACK_MS);
    json_decref(reqs);

    /* Shard 1 waited for its slow reply and went on with the next
     * iterator. */
    reqs = logged_requests("GetRecords", SHARD1);
    ASSERT_STR_EQ(entry_fault(json_array_get(reqs, 0)), "slow");
    ASSERT_TRUE(json_array_size(reqs) >= 2);
    ASSERT_TRUE(entry_time(json_array_get(reqs, 1)) -
                    entry_time(json_array_get(reqs, 0)) >=
                500 - STAMP_SLACK_MS);
    ASSERT_TRUE(strcmp(entry_iterator(json_array_get(reqs, 0)),
                       entry_iterator(json_array_get(reqs, 1))) != 0);
    json_decref(reqs);

    consumer_finish(&c, &e);
    env_close(&e);
}

/* ---- iterator renewal ---------------------------------------------------- */

/*
 * Read records 0..4 of a 1-shard stream through a proxy without faults
 * and return the committed checkpoint (owned).
 */
static char *read_first_records(struct env *e, struct env *direct,
                                struct consumer *c)
{
    int kport = start_kinesalite();

    env_init(direct, kport);
    create_stream(direct, STREAM, 1);
    put_records(direct, STREAM, 0, 5);
    env_init(e, start_proxy(kport, "[]"));
    struct reader_config cfg = reader_config(e, STREAM);
    cfg.poll_interval_ms = 250;
    consumer_start(c, e, &cfg, NULL, 0);
    WAIT_FOR(e, c->records == 5 && reader_caught_up(c->rd));
    return strdup(c->batches[c->batch_count - 1]->checkpoint_seq);
}

/* Check that the second GetShardIterator of shard 0 started after seq. */
static void check_renewed_after(const char *seq)
{
    json_t *iterators = iterator_requests(SHARD0);
    ASSERT_EQ(json_array_size(iterators), 2);
    ASSERT_STR_EQ(iterator_type(json_array_get(iterators, 0)), "TRIM_HORIZON");
    ASSERT_STR_EQ(iterator_type(json_array_get(iterators, 1)),
                  "AFTER_SEQUENCE_NUMBER");
    ASSERT_STR_EQ(starting_seq(json_array_get(iterators, 1)), seq);
    json_decref(iterators);
}

/* Time of the n-th (0-based) logged GetShardIterator of shard 0. */
static int64_t iterator_request_time(size_t n)
{
    json_t *reqs = logged_requests("GetShardIterator", SHARD0);
    ASSERT_TRUE(json_array_size(reqs) > n);
    int64_t t = entry_time(json_array_get(reqs, n));
    json_decref(reqs);
    return t;
}

TEST(reader_renews_failing_iterator)
{
    struct env e, direct;
    struct consumer c = {.auto_commit = true};
    char *checkpoint = read_first_records(&e, &direct, &c);

    /* 4 GetRecords in a row fail with a 500. Records put meanwhile can only
     * arrive through a new iterator. */
    set_proxy_rules("[{\"action\":\"GetRecords\",\"fault\":\"internal\","
                    "\"times\":4}]");
    put_records(&direct, STREAM, 5, 5);
    /* Wait for at least 10 records, so that check_records() reports
     * repeats at once rather than after WAIT_MS. */
    WAIT_FOR(&e, c.records >= 10 && reader_caught_up(c.rd));
    check_records(&c, 0, 10);

    struct reader_counters counters = counters_of(c.rd);
    ASSERT_EQ(counters.server_errors, 4);
    ASSERT_EQ(counters.get_shard_iterator_calls, 2);
    check_renewed_after(checkpoint);

    /* The 4 failures sent the old iterator, and the new one was requested
     * only after the 4th. */
    json_t *reqs = logged_requests("GetRecords", SHARD0);
    size_t n = json_array_size(reqs), first_failure = n;
    for (size_t i = 0; i < n && first_failure == n; i++) {
        if (entry_fault(json_array_get(reqs, i)) != NULL)
            first_failure = i;
    }
    ASSERT_TRUE(first_failure + 4 < n);
    ASSERT_EQ(count_fault(reqs, "internal"), 4);
    check_same_iterator(reqs, first_failure, 4);
    int64_t renewed_at = iterator_request_time(1);
    ASSERT_TRUE(renewed_at >=
                entry_time(json_array_get(reqs, first_failure + 3)));
    ASSERT_TRUE(renewed_at <=
                entry_time(json_array_get(reqs, first_failure + 4)));
    ASSERT_TRUE(strcmp(entry_iterator(json_array_get(reqs, first_failure + 4)),
                       entry_iterator(json_array_get(reqs, first_failure))) !=
                0);
    json_decref(reqs);

    free(checkpoint);
    consumer_finish(&c, &e);
    env_close(&e);
    env_close(&direct);
}

TEST(reader_keeps_iterator_when_throttled)
{
    struct env e, direct;
    struct consumer c = {.auto_commit = true};
    int kport = start_kinesalite();

    env_init(&direct, kport);
    create_stream(&direct, STREAM, 1);
    put_records(&direct, STREAM, 0, 5);
    env_close(&direct);

    /* A 500, then 3 throttles. That is 4 failures in a row, but a throttle
     * does not mean the iterator is bad, so only the 500 counts towards
     * renewing it. */
    int pport = start_proxy(kport, "[{\"action\":\"GetRecords\","
                                   "\"fault\":\"internal\",\"times\":1},"
                                   "{\"action\":\"GetRecords\","
                                   "\"fault\":\"throttle\",\"times\":3}]");
    env_init(&e, pport);
    struct reader_config cfg = reader_config(&e, STREAM);
    cfg.poll_interval_ms = 250;
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, c.records == 5 && reader_caught_up(c.rd));
    check_records(&c, 0, 5);

    struct reader_counters counters = counters_of(c.rd);
    ASSERT_EQ(counters.server_errors, 1);
    ASSERT_EQ(counters.throttled, 3);
    ASSERT_EQ(counters.get_shard_iterator_calls, 1);
    ASSERT_EQ(count_requests("GetShardIterator"), 1);
    json_t *reqs = logged_requests("GetRecords", SHARD0);
    ASSERT_TRUE(entry_fault(json_array_get(reqs, 4)) == NULL);
    check_same_iterator(reqs, 0, 5);
    check_backoff_gaps(reqs, 0, 5, 250);
    json_decref(reqs);

    consumer_finish(&c, &e);
    env_close(&e);
}

TEST(reader_renews_invalid_iterator)
{
    struct env e, direct;
    struct consumer c = {.auto_commit = true};
    char *checkpoint = read_first_records(&e, &direct, &c);

    /* One InvalidArgumentException: the request itself is wrong, so the
     * reader must not send that iterator again. */
    set_proxy_rules("[{\"action\":\"GetRecords\",\"fault\":\"invalid\","
                    "\"times\":1}]");
    put_records(&direct, STREAM, 5, 5);
    /* Wait for at least 10 records, so that check_records() reports
     * repeats at once rather than after WAIT_MS. */
    WAIT_FOR(&e, c.records >= 10 && reader_caught_up(c.rd));
    check_records(&c, 0, 10);

    struct reader_counters counters = counters_of(c.rd);
    ASSERT_EQ(counters.other_errors, 1);
    ASSERT_EQ(counters.get_shard_iterator_calls, 2);
    check_renewed_after(checkpoint);

    /* No GetRecords came between the rejected one and the renewal, and
     * the next one sent the new iterator. */
    json_t *reqs = logged_requests("GetRecords", SHARD0);
    size_t n = json_array_size(reqs), rejected = n;
    for (size_t i = 0; i < n && rejected == n; i++) {
        if (entry_fault(json_array_get(reqs, i)) != NULL)
            rejected = i;
    }
    ASSERT_TRUE(rejected + 1 < n);
    ASSERT_STR_EQ(entry_fault(json_array_get(reqs, rejected)), "invalid");
    int64_t renewed_at = iterator_request_time(1);
    ASSERT_TRUE(renewed_at >= entry_time(json_array_get(reqs, rejected)));
    ASSERT_TRUE(renewed_at <= entry_time(json_array_get(reqs, rejected + 1)));
    ASSERT_TRUE(strcmp(entry_iterator(json_array_get(reqs, rejected)),
                       entry_iterator(json_array_get(reqs, rejected + 1))) !=
                0);
    json_decref(reqs);

    free(checkpoint);
    consumer_finish(&c, &e);
    env_close(&e);
    env_close(&direct);
}

/* ---- MillisBehindLatest -------------------------------------------------- */

TEST(reader_reports_millis_behind)
{
    struct env e, direct;
    struct consumer c = {.auto_commit = true};
    int kport = start_kinesalite();

    env_init(&direct, kport);
    create_stream(&direct, STREAM, 2);
    put_record_in(&direct, 0, SHARD0);
    put_record_in(&direct, 1, SHARD0);
    put_record_in(&direct, 2, SHARD1);
    env_close(&direct);

    /* Every reply of shard 0 reports 12,345 ms behind the latest record. */
    int pport =
        start_proxy(kport, "[{\"action\":\"GetRecords\",\"shard\":\"" SHARD0
                           "\",\"fault\":\"behind\",\"value\":12345}]");
    env_init(&e, pport);
    struct reader_config cfg = reader_config(&e, STREAM);
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, c.records == 3 && shard_info(c.rd, SHARD1).caught_up);

    /* Shard 0 has no more records, but keeps reporting that it is behind
     * in empty replies. */
    uint64_t calls = shard_calls(c.rd, SHARD0);
    WAIT_FOR(&e, shard_calls(c.rd, SHARD0) >= calls + 2);
    check_records(&c, 0, 3);
    ASSERT_EQ(reader_millis_behind(c.rd, SHARD0), 12345);
    ASSERT_EQ(reader_millis_behind(c.rd, SHARD1), 0);
    ASSERT_FALSE(shard_info(c.rd, SHARD0).caught_up);
    ASSERT_EQ(shard_info(c.rd, SHARD0).millis_behind, 12345);
    ASSERT_FALSE(reader_caught_up(c.rd));
    for (size_t b = 0; b < c.batch_count; b++) {
        const struct shard_batch *batch = c.batches[b];
        int64_t expected = strcmp(batch->shard_id, SHARD0) == 0 ? 12345 : 0;
        ASSERT_EQ(batch->millis_behind, expected);
    }

    /* Without the rule, kinesalite's own value (0) comes through. */
    set_proxy_rules("[]");
    WAIT_FOR(&e, reader_caught_up(c.rd));
    ASSERT_EQ(reader_millis_behind(c.rd, SHARD0), 0);
    ASSERT_TRUE(shard_info(c.rd, SHARD0).caught_up);
    ASSERT_EQ(c.records, 3);

    consumer_finish(&c, &e);
    env_close(&e);
}

/* ---- initial positions --------------------------------------------------- */

TEST(reader_starts_at_latest)
{
    struct env e, direct;
    struct consumer c = {.auto_commit = true};
    int kport = start_kinesalite();

    env_init(&direct, kport);
    create_stream(&direct, STREAM, 2);
    for (int i = 0; i < 4; i++)
        put_record_in(&direct, i, i % 2 ? SHARD1 : SHARD0);

    int pport = start_proxy(kport, "[]");
    env_init(&e, pport);
    struct reader_config cfg = reader_config(&e, STREAM);
    cfg.initial_position = READER_LATEST;
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, reader_caught_up(c.rd));
    ASSERT_EQ(c.records, 0);

    for (int i = 4; i < 8; i++)
        put_record_in(&direct, i, i % 2 ? SHARD1 : SHARD0);
    WAIT_FOR(&e, c.records == 4 && reader_caught_up(c.rd));
    check_records(&c, 4, 4);
    ASSERT_EQ(shard_records(&c, SHARD0), 2);
    ASSERT_EQ(shard_records(&c, SHARD1), 2);

    static const char *const shards[] = {SHARD0, SHARD1};
    for (size_t s = 0; s < 2; s++) {
        json_t *iterators = iterator_requests(shards[s]);
        ASSERT_EQ(json_array_size(iterators), 1);
        ASSERT_STR_EQ(iterator_type(json_array_get(iterators, 0)), "LATEST");
        json_decref(iterators);
    }

    consumer_finish(&c, &e);
    env_close(&e);
    env_close(&direct);
}

TEST(reader_retries_hung_at_timestamp)
{
    struct env e, direct;
    struct consumer c = {.auto_commit = true};
    int kport = start_kinesalite();

    env_init(&direct, kport);
    create_stream(&direct, STREAM, 2);
    put_record_in(&direct, 0, SHARD0);
    put_record_in(&direct, 1, SHARD1);

    /* A start time after both records, and before record 2 of shard 1. */
    run_for(&direct, 20);
    int64_t start_ms = log_now_ms() - 10;
    run_for(&direct, 20);
    put_record_in(&direct, 2, SHARD1);

    /*
     * kinesalite 3.3.3 never replies to GetShardIterator AT_TIMESTAMP for
     * a time after the shard's last record, so shard 0's request times out
     * and is sent again until a record arrives after the start time.
     */
    int pport = start_proxy(kport, "[]");
    env_init(&e, pport);
    struct reader_config cfg = reader_config(&e, STREAM);
    cfg.initial_position = READER_AT_TIMESTAMP;
    cfg.initial_timestamp_ms = start_ms;
    cfg.request_timeout_ms = 1000;
    consumer_start(&c, &e, &cfg, NULL, 0);

    /* Shard 1 reads on, new records too, while shard 0 waits. */
    WAIT_FOR(&e, shard_records(&c, SHARD1) == 1);
    WAIT_FOR(&e, counters_of(c.rd).timeouts >= 2);
    put_record_in(&direct, 3, SHARD1);
    WAIT_FOR(&e, shard_records(&c, SHARD1) == 2);
    ASSERT_EQ(shard_records(&c, SHARD0), 0);
    ASSERT_EQ(shard_calls(c.rd, SHARD0), 0);

    put_record_in(&direct, 4, SHARD0);
    WAIT_FOR(&e, c.records == 3 && reader_caught_up(c.rd));
    check_records(&c, 2, 3);
    ASSERT_EQ(shard_records(&c, SHARD0), 1);

    /* Each attempt of shard 0 carried the start time in seconds, and all
     * but the last one timed out. */
    json_t *iterators = iterator_requests(SHARD0);
    size_t attempts = json_array_size(iterators);
    ASSERT_TRUE(attempts >= 3);
    for (size_t i = 0; i < attempts; i++) {
        const json_t *req = json_array_get(iterators, i);
        const json_t *ts = kinesis_member(req, "Timestamp");
        ASSERT_STR_EQ(iterator_type(req), "AT_TIMESTAMP");
        ASSERT_TRUE(json_is_number(ts));
        ASSERT_EQ(llround(json_number_value(ts) * 1000), start_ms);
    }
    json_decref(iterators);
    struct reader_counters counters = counters_of(c.rd);
    ASSERT_EQ(counters.timeouts, attempts - 1);
    ASSERT_EQ(counters.get_shard_iterator_calls, attempts + 1);
    ASSERT_TRUE(c.fatal == NULL);

    consumer_finish(&c, &e);
    env_close(&e);
    env_close(&direct);
}
