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
