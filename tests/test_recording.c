/*
 * Tests of the recording format helpers: one line as podium record writes
 * it, and the arrival times of aws kinesis get-records output in both
 * forms that the AWS CLI prints.
 */
#include <stdint.h>
#include <string.h>

#include "common/strbuf.h"
#include "daemon/daemon.h"
#include "tests/testlib.h"

/* 2026-12-04T10:15:30.123Z in milliseconds since the epoch. */
#define DEC_4_MS 1796379330123LL

static int64_t iso_ms(const char *text)
{
    char err[200];
    int64_t ms = -1;
    if (recording_parse_iso8601(text, strlen(text), &ms, err, sizeof err))
        test_fail(__FILE__, __LINE__, "\"%s\" rejected: %s", text, err);
    return ms;
}

static int64_t epoch_ms(const char *text)
{
    char err[200];
    int64_t ms = -1;
    if (recording_parse_epoch(text, strlen(text), &ms, err, sizeof err))
        test_fail(__FILE__, __LINE__, "%s rejected: %s", text, err);
    return ms;
}

/* The reason a bad value is rejected with, or "" when it is accepted. */
static const char *iso_error(const char *text)
{
    static char err[200];
    int64_t ms;
    err[0] = '\0';
    if (recording_parse_iso8601(text, strlen(text), &ms, err, sizeof err) == 0)
        return "";
    return err;
}

static const char *epoch_error(const char *text)
{
    static char err[200];
    int64_t ms;
    err[0] = '\0';
    if (recording_parse_epoch(text, strlen(text), &ms, err, sizeof err) == 0)
        return "";
    return err;
}

TEST(recording_line_has_kinesis_fields)
{
    static const uint8_t data[] = {0x00, 0x01, 0xff, 0xfe, '"'};
    struct recording_line line = {
        .shard_id = "shardId-000000000001",
        .seq = "49590338271490256608559692538361571095921575989136588898",
        .subseq = -1,
        .arrival_ms = 1620824038001,
        .partition_key = "k\"\n",
        .partition_key_len = 3,
        .data = data,
        .len = sizeof data,
    };
    struct strbuf sb;
    sb_init(&sb, 4096);

    ASSERT_EQ(recording_append_line(&sb, &line), 0);
    ASSERT_STR_EQ(
        sb.data,
        "{\"ShardId\":\"shardId-000000000001\",\"SequenceNumber\":"
        "\"49590338271490256608559692538361571095921575989136588898\","
        "\"ApproximateArrivalTimestamp\":1620824038.001,\"PartitionKey\":"
        "\"k\\\"\\n\",\"Data\":\"AAH//iI=\"}\n");

    sb_reset(&sb);
    line.subseq = 2;
    line.arrival_ms = 0;
    line.len = 0;
    ASSERT_EQ(recording_append_line(&sb, &line), 0);
    ASSERT_TRUE(strstr(sb.data,
                       "\"SubSequenceNumber\":2,"
                       "\"ApproximateArrivalTimestamp\":0.000,") != NULL);
    ASSERT_TRUE(strstr(sb.data, "\"Data\":\"\"}\n") != NULL);
    sb_free(&sb);
}

TEST(iso8601_reads_cli_v2_form)
{
    ASSERT_EQ(iso_ms("2026-12-04T10:15:30.123000+00:00"), DEC_4_MS);
    ASSERT_EQ(iso_ms("2026-12-04T10:15:30.123Z"), DEC_4_MS);
    ASSERT_EQ(iso_ms("2026-12-04t10:15:30.123z"), DEC_4_MS);
    ASSERT_EQ(iso_ms("2026-12-04 10:15:30.123+00:00"), DEC_4_MS);
    ASSERT_EQ(iso_ms("2026-12-04T10:15:30.1230+0000"), DEC_4_MS);
    ASSERT_EQ(iso_ms("2026-12-04T10:15:30+00:00"), DEC_4_MS - 123);
    ASSERT_EQ(iso_ms("2026-12-04T10:15:30.1+00:00"), DEC_4_MS - 23);
    ASSERT_EQ(iso_ms("1970-01-01T00:00:00+00:00"), 0);
}

TEST(iso8601_applies_utc_offsets)
{
    ASSERT_EQ(iso_ms("2026-12-04T11:15:30.123000+01:00"), DEC_4_MS);
    ASSERT_EQ(iso_ms("2026-12-04T02:15:30.123000-08:00"), DEC_4_MS);
    ASSERT_EQ(iso_ms("2026-12-04T15:45:30.123+05:30"), DEC_4_MS);
    /* The offset moves the time across a day and a year. */
    ASSERT_EQ(iso_ms("2026-12-31T23:30:00-01:00"),
              iso_ms("2027-01-01T00:30:00Z"));
}

TEST(iso8601_knows_leap_years)
{
    ASSERT_EQ(iso_ms("2024-02-29T00:00:00Z") + 86400000,
              iso_ms("2024-03-01T00:00:00Z"));
    ASSERT_EQ(iso_ms("2000-02-29T00:00:00Z"), 951782400000LL);
    ASSERT_TRUE(strstr(iso_error("2026-02-29T00:00:00Z"),
                       "not a valid calendar date") != NULL);
    ASSERT_TRUE(strstr(iso_error("1900-02-29T00:00:00Z"),
                       "not a valid calendar date") != NULL);
}

TEST(iso8601_rejects_bad_text)
{
    ASSERT_TRUE(strstr(iso_error("yesterday"), "not an ISO 8601 date") != NULL);
    ASSERT_TRUE(strstr(iso_error("2026-12-04"), "not an ISO 8601 date") !=
                NULL);
    ASSERT_TRUE(strstr(iso_error("2026-12-04T10:15"), "no time of day") !=
                NULL);
    ASSERT_TRUE(strstr(iso_error("2026-12-04T10:15:30.123"), "no UTC offset") !=
                NULL);
    ASSERT_TRUE(strstr(iso_error("2026-12-04T10:15:30.123+0"),
                       "invalid UTC offset") != NULL);
    ASSERT_TRUE(strstr(iso_error("2026-12-04T10:15:30.123+00:00 "),
                       "invalid UTC offset") != NULL);
    ASSERT_TRUE(strstr(iso_error("2026-12-04T10:15:30.+00:00"),
                       "1 to 9 digits") != NULL);
    ASSERT_TRUE(strstr(iso_error("2026-13-04T10:15:30Z"),
                       "not a valid calendar date") != NULL);
    ASSERT_TRUE(strstr(iso_error("2026-12-04T24:00:00Z"),
                       "not a valid calendar date") != NULL);
    ASSERT_TRUE(strstr(iso_error("2026-12-04T10:15:30.123400+00:00"),
                       "below the millisecond") != NULL);
    ASSERT_TRUE(strstr(iso_error("1969-12-31T23:59:59Z"), "outside") != NULL);
}

TEST(epoch_reads_cli_v1_form)
{
    ASSERT_EQ(epoch_ms("1796379330.123"), DEC_4_MS);
    ASSERT_EQ(epoch_ms("1796379330.12300"), DEC_4_MS);
    ASSERT_EQ(epoch_ms("1.796379330123E9"), DEC_4_MS);
    ASSERT_EQ(epoch_ms("1.796379330123e+9"), DEC_4_MS);
    ASSERT_EQ(epoch_ms("1796379330123e-3"), DEC_4_MS);
    ASSERT_EQ(epoch_ms("1796379330"), DEC_4_MS - 123);
    ASSERT_EQ(epoch_ms("0"), 0);
    ASSERT_EQ(epoch_ms("0.001"), 1);
}

TEST(epoch_rejects_bad_numbers)
{
    ASSERT_TRUE(strstr(epoch_error("1796379330.1234"),
                       "below the millisecond") != NULL);
    ASSERT_TRUE(strstr(epoch_error("-1"), "before 1970") != NULL);
    ASSERT_TRUE(strstr(epoch_error("253402300800"), "after 9999") != NULL);
    ASSERT_TRUE(strstr(epoch_error("1e30"), "after 9999") != NULL);
    ASSERT_TRUE(strstr(epoch_error("12abc"), "not a number") != NULL);
    ASSERT_TRUE(strstr(epoch_error(""), "not a number") != NULL);
}
