/*
 * Tests of the /metrics text (daemon/metrics.c) without a running daemon:
 * label escaping, and the families written before any module exists.
 * tests/e2e/metrics.sh checks the values of a real run.
 */
#include "tests/testlib.h"

#include "daemon/daemon.h"

static char *render_label(const char *value)
{
    struct strbuf out;
    sb_init(&out, 1024);
    metrics_append_label_value(&out, value);
    ASSERT_EQ(sb_error(&out), 0);
    return sb_take(&out, NULL);
}

TEST(metrics_label_value_escaping)
{
    char *plain = render_label("shardId-000000000001");
    ASSERT_STR_EQ(plain, "shardId-000000000001");
    free(plain);

    char *quote = render_label("a\"b");
    ASSERT_STR_EQ(quote, "a\\\"b");
    free(quote);

    char *backslash = render_label("a\\b");
    ASSERT_STR_EQ(backslash, "a\\\\b");
    free(backslash);

    char *newline = render_label("a\nb");
    ASSERT_STR_EQ(newline, "a\\nb");
    free(newline);

    /* Tabs and other bytes pass unchanged in the text format. */
    char *tab = render_label("a\tb\xc3\xa9");
    ASSERT_STR_EQ(tab, "a\tb\xc3\xa9");
    free(tab);
}

static bool contains(const char *text, const char *part)
{
    return strstr(text, part) != NULL;
}

TEST(metrics_before_start_zeros)
{
    struct http_status status = {0};
    struct strbuf out;
    sb_init(&out, 1024 * 1024);
    metrics_render(&status, &out);
    ASSERT_EQ(sb_error(&out), 0);
    char *text = sb_take(&out, NULL);

    ASSERT_TRUE(contains(text, "# TYPE podium_ready gauge\npodium_ready 0\n"));
    ASSERT_TRUE(contains(text, "# TYPE podium_records_read_total counter\n"
                               "podium_records_read_total 0\n"));
    ASSERT_TRUE(contains(
        text, "podium_records_rejected_total{reason=\"not_json\"} 0\n"));
    ASSERT_TRUE(contains(
        text, "podium_records_rejected_total{reason=\"missing_key\"} 0\n"));
    ASSERT_TRUE(
        contains(text, "podium_kinesis_errors_total{cause=\"throttled\"} 0\n"));
    ASSERT_TRUE(contains(
        text, "# TYPE podium_batch_commit_duration_seconds histogram\n"));
    ASSERT_TRUE(contains(
        text,
        "podium_batch_commit_duration_seconds_bucket{le=\"0.001000\"} 0\n"));
    ASSERT_TRUE(contains(
        text, "podium_batch_commit_duration_seconds_bucket{le=\"+Inf\"} 0\n"));
    ASSERT_TRUE(
        contains(text, "podium_batch_commit_duration_seconds_sum 0.000000\n"));
    ASSERT_TRUE(contains(text, "podium_outbox_depth 0\n"));
    ASSERT_TRUE(contains(text, "podium_publish_pending 0\n"));
    /* No reader, so no shard has a MillisBehindLatest sample. */
    ASSERT_TRUE(
        contains(text, "# TYPE podium_shard_millis_behind_latest gauge\n"));
    ASSERT_FALSE(contains(text, "podium_shard_millis_behind_latest{"));
    ASSERT_EQ(text[strlen(text) - 1], '\n');
    free(text);
}

TEST(metrics_stopping_not_ready)
{
    struct http_status status = {.reader_ready = true, .stopping = true};
    struct strbuf out;
    sb_init(&out, 1024 * 1024);
    metrics_render(&status, &out);
    ASSERT_EQ(sb_error(&out), 0);
    ASSERT_TRUE(contains(out.data, "podium_ready 0\n"));
    sb_free(&out);
}

/* ---- CloudWatch EMF lines (daemon/emf.c) ------------------------------ */

static char *render_emf(const struct metrics_snapshot *now,
                        const struct metrics_snapshot *prev)
{
    struct strbuf out;
    sb_init(&out, 1024 * 1024);
    emf_render(now, prev, "podium", "race-telemetry", 1796400000123, &out);
    ASSERT_EQ(sb_error(&out), 0);
    return sb_take(&out, NULL);
}

static size_t count_lines(const char *text)
{
    size_t lines = 0;
    for (const char *p = text; *p != '\0'; p++)
        lines += *p == '\n';
    return lines;
}

TEST(emf_counters_are_increases)
{
    struct metrics_snapshot prev = {.records_read = 5, .duplicates = 1};
    struct metrics_snapshot now = {.ready = true,
                                   .records_read = 12,
                                   .duplicates = 1,
                                   .outbox_depth = 3,
                                   .commit_count = 2,
                                   .commit_us_sum = 3500};
    now.rejected[AGG_REJECT_NOT_JSON] = 2;
    now.outcomes[AGG_LATE_AMENDED] = 4;
    now.publisher.failed_auth = 6;
    char *text = render_emf(&now, &prev);

    ASSERT_EQ(count_lines(text), 1);
    ASSERT_TRUE(contains(text, "{\"_aws\":{\"Timestamp\":1796400000123,"
                               "\"CloudWatchMetrics\":[{\"Namespace\":"
                               "\"podium\",\"Dimensions\":[[\"Stream\"]],"
                               "\"Metrics\":[{\"Name\":\"Ready\",\"Unit\":"
                               "\"None\"},"));
    ASSERT_TRUE(
        contains(text, "{\"Name\":\"RecordsRead\",\"Unit\":\"Count\"}"));
    ASSERT_TRUE(contains(text, ",\"Stream\":\"race-telemetry\","));
    ASSERT_TRUE(contains(text, ",\"Ready\":1,"));
    ASSERT_TRUE(contains(text, ",\"RecordsRead\":7,"));
    ASSERT_TRUE(contains(text, ",\"Duplicates\":0,"));
    ASSERT_TRUE(contains(text, ",\"RecordsRejected.not_json\":2,"));
    ASSERT_TRUE(contains(text, ",\"RecordsLate.amended\":4,"));
    ASSERT_TRUE(contains(text, ",\"PublishFailures.auth\":6,"));
    /* A gauge is its value, not an increase. */
    ASSERT_TRUE(contains(text, ",\"OutboxDepth\":3,"));
    /* 3500 us over 2 jobs is 1.75 ms. */
    ASSERT_TRUE(contains(
        text, "{\"Name\":\"CommitLatency\",\"Unit\":\"Milliseconds\"}"));
    ASSERT_TRUE(contains(text, ",\"CommitLatency\":1.750,"));
    ASSERT_TRUE(contains(text, "}\n"));
    free(text);
}

TEST(emf_first_line_counts_from_zero)
{
    struct metrics_snapshot now = {.records_read = 12};
    char *text = render_emf(&now, NULL);
    ASSERT_TRUE(contains(text, ",\"RecordsRead\":12,"));
    /* No job committed, so there is no latency to report. */
    ASSERT_FALSE(contains(text, "CommitLatency"));
    ASSERT_TRUE(contains(text, ",\"Ready\":0,"));
    free(text);
}

TEST(emf_shard_lines)
{
    struct metrics_shard shards[2] = {{"shardId-000000000000", 0},
                                      {"shard \"b\"", 42}};
    struct metrics_snapshot now = {.shards = shards, .shard_count = 2};
    char *text = render_emf(&now, NULL);

    ASSERT_EQ(count_lines(text), 3);
    const char *second = strchr(text, '\n') + 1;
    ASSERT_TRUE(contains(
        second, "\"Dimensions\":[[\"Stream\",\"ShardId\"]],\"Metrics\":"
                "[{\"Name\":\"MillisBehindLatest\",\"Unit\":"
                "\"Milliseconds\"}]}]},\"Stream\":\"race-telemetry\","
                "\"ShardId\":\"shardId-000000000000\","
                "\"MillisBehindLatest\":0}\n"));
    /* Shard ids are JSON strings with their quotes escaped. */
    ASSERT_TRUE(contains(second, "\"ShardId\":\"shard \\\"b\\\"\","
                                 "\"MillisBehindLatest\":42}\n"));
    free(text);
}

TEST(emf_metric_limit)
{
    /* One directive may list at most 100 metrics. */
    size_t count = emf_stream_metric_count();
    ASSERT_TRUE(count > 40);
    ASSERT_TRUE(count <= 100);
}

/* ---- docs/operations.md ------------------------------------------------ */

static char *read_operations_doc(void)
{
    const char *source = getenv("PODIUM_SOURCE_DIR");
    ASSERT_TRUE(source != NULL);
    char path[4096];
    snprintf(path, sizeof path, "%s/docs/operations.md", source);
    FILE *file = fopen(path, "rb");
    if (file == NULL)
        test_fail(__FILE__, __LINE__, "cannot open %s", path);
    struct strbuf doc;
    sb_init(&doc, 1024 * 1024);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, file)) > 0)
        sb_append(&doc, chunk, n);
    fclose(file);
    ASSERT_EQ(sb_error(&doc), 0);
    return sb_take(&doc, NULL);
}

TEST(metrics_names_documented)
{
    char *doc = read_operations_doc();
    struct http_status status = {0};
    struct strbuf out;
    sb_init(&out, 1024 * 1024);
    metrics_render(&status, &out);
    ASSERT_EQ(sb_error(&out), 0);

    /* Each family, as "`podium_NAME`" in the metrics table. */
    size_t families = 0;
    for (const char *p = strstr(out.data, "# TYPE "); p != NULL;
         p = strstr(p + 1, "# TYPE ")) {
        const char *name = p + strlen("# TYPE ");
        size_t len = strcspn(name, " ");
        char quoted[128];
        snprintf(quoted, sizeof quoted, "`%.*s`", (int)len, name);
        if (!contains(doc, quoted))
            test_fail(__FILE__, __LINE__,
                      "docs/operations.md does not list the metric %s", quoted);
        families++;
    }
    ASSERT_TRUE(families > 20);
    sb_free(&out);
    free(doc);
}

TEST(emf_names_documented)
{
    char *doc = read_operations_doc();
    struct metrics_shard shard = {"shardId-000000000000", 0};
    struct metrics_snapshot now = {
        .commit_count = 1, .shards = &shard, .shard_count = 1};
    char *text = render_emf(&now, NULL);

    /* Each metric as "`Name`", or "`FAMILY.` for a labelled counter. */
    size_t names = 0;
    for (const char *p = strstr(text, "{\"Name\":\""); p != NULL;
         p = strstr(p + 1, "{\"Name\":\"")) {
        const char *name = p + strlen("{\"Name\":\"");
        size_t len = strcspn(name, "\"");
        size_t family_len = strcspn(name, ".\"");
        char quoted[128];
        if (family_len < len)
            snprintf(quoted, sizeof quoted, "`%.*s.", (int)family_len, name);
        else
            snprintf(quoted, sizeof quoted, "`%.*s`", (int)len, name);
        if (!contains(doc, quoted))
            test_fail(__FILE__, __LINE__,
                      "docs/operations.md does not list the EMF metric %.*s",
                      (int)len, name);
        names++;
    }
    ASSERT_TRUE(names > 40);
    free(text);
    free(doc);
}
