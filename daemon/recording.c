/*
 * The recording format of `podium record`, `podium simulate --out` and
 * `podium replay`: JSON lines, one Kinesis record a line, with the field
 * names and types of the Kinesis API. Members, in this order: ShardId,
 * SequenceNumber (decimal string), SubSequenceNumber (only on a user record
 * of a KPL aggregate), ApproximateArrivalTimestamp (seconds since the epoch
 * with exactly three decimals), PartitionKey and Data (standard base64 with
 * padding).
 *
 * Also here: reading an ApproximateArrivalTimestamp as the AWS CLI prints
 * it, either epoch seconds (AWS CLI v1, or cli_timestamp_format=none) or an
 * ISO 8601 text (the default of AWS CLI v2).
 */
#include "daemon/daemon.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/base64.h"

/* 9999-12-31T23:59:59.999Z, the last millisecond that replay accepts. */
#define RECORDING_MAX_ARRIVAL_MS 253402300799999LL

int recording_append_line(struct strbuf *sb, const struct recording_line *line)
{
    size_t b64_len = BASE64_ENCODED_LEN(line->len);
    char *b64 = malloc(b64_len + 1);
    if (b64 == NULL)
        return -1;
    base64_encode(line->data, line->len, b64);

    sb_puts(sb, "{\"ShardId\":");
    sb_json_string(sb, line->shard_id, strlen(line->shard_id));
    sb_puts(sb, ",\"SequenceNumber\":");
    sb_json_string(sb, line->seq, strlen(line->seq));
    if (line->subseq >= 0)
        sb_printf(sb, ",\"SubSequenceNumber\":%" PRId64, line->subseq);
    sb_printf(sb,
              ",\"ApproximateArrivalTimestamp\":%" PRId64 ".%03" PRId64
              ",\"PartitionKey\":",
              line->arrival_ms / 1000, line->arrival_ms % 1000);
    sb_json_string(sb, line->partition_key, line->partition_key_len);
    sb_puts(sb, ",\"Data\":\"");
    sb_append(sb, b64, b64_len);
    sb_puts(sb, "\"}\n");
    free(b64);
    return sb_error(sb) != 0 ? -1 : 0;
}

/* ---- reading arrival times ----------------------------------------------- */

/* Read exactly n digits at *p into *out and move *p past them. */
static bool read_digits(const char **p, const char *end, int n, int *out)
{
    int value = 0;
    for (int i = 0; i < n; i++) {
        if (*p >= end || !isdigit((unsigned char)**p))
            return false;
        value = value * 10 + (**p - '0');
        (*p)++;
    }
    *out = value;
    return true;
}

static bool is_leap_year(int year)
{
    return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
}

static int days_in_month(int year, int month)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30,
                                 31, 31, 30, 31, 30, 31};
    return month == 2 && is_leap_year(year) ? 29 : days[month - 1];
}

/* Days from 1970-01-01 to year-month-day of the proleptic Gregorian
 * calendar (days_from_civil of Howard Hinnant's date algorithms). */
static int64_t days_from_civil(int64_t year, int month, int day)
{
    year -= month <= 2;
    int64_t era = (year >= 0 ? year : year - 399) / 400;
    int64_t yoe = year - era * 400;
    int64_t doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/*
 * Read the fraction of a second after the decimal point: 1 to 9 digits, of
 * which those past the third must be zero. Returns 0 with *ms, or -1.
 */
static int read_fraction_ms(const char **p, const char *end, int *ms, char *err,
                            size_t err_len)
{
    int digits = 0;
    *ms = 0;
    while (*p < end && isdigit((unsigned char)**p)) {
        int digit = **p - '0';
        if (digits < 3) {
            *ms = *ms * 10 + digit;
        } else if (digit != 0) {
            snprintf(err, err_len,
                     "has digits below the millisecond, but Kinesis arrival "
                     "times have millisecond precision");
            return -1;
        }
        digits++;
        (*p)++;
    }
    if (digits == 0 || digits > 9) {
        snprintf(err, err_len,
                 "needs 1 to 9 digits after the decimal point, got %d", digits);
        return -1;
    }
    for (; digits < 3; digits++)
        *ms *= 10;
    return 0;
}

/* Read a UTC offset: Z, +HH:MM, -HH:MM, +HHMM or -HHMM. Returns 0 with the
 * offset in minutes east of UTC, or -1. */
static int read_utc_offset(const char **p, const char *end, int *minutes)
{
    if (*p < end && (**p == 'Z' || **p == 'z')) {
        (*p)++;
        *minutes = 0;
        return 0;
    }
    if (*p >= end || (**p != '+' && **p != '-'))
        return -1;
    int sign = **p == '-' ? -1 : 1;
    int hours, mins;
    (*p)++;
    if (!read_digits(p, end, 2, &hours))
        return -1;
    if (*p < end && **p == ':')
        (*p)++;
    if (!read_digits(p, end, 2, &mins) || hours > 23 || mins > 59)
        return -1;
    *minutes = sign * (hours * 60 + mins);
    return 0;
}

int recording_parse_iso8601(const char *text, size_t len, int64_t *ms,
                            char *err, size_t err_len)
{
    const char *p = text, *end = text + len;
    int year, month, day, hour, minute, second, frac_ms = 0, offset_min;

    if (!read_digits(&p, end, 4, &year) || p >= end || *p++ != '-' ||
        !read_digits(&p, end, 2, &month) || p >= end || *p++ != '-' ||
        !read_digits(&p, end, 2, &day) || p >= end ||
        (*p != 'T' && *p != 't' && *p != ' ')) {
        snprintf(err, err_len,
                 "is not an ISO 8601 date and time such as "
                 "2026-12-04T10:15:30.123000+00:00");
        return -1;
    }
    p++;
    if (!read_digits(&p, end, 2, &hour) || p >= end || *p++ != ':' ||
        !read_digits(&p, end, 2, &minute) || p >= end || *p++ != ':' ||
        !read_digits(&p, end, 2, &second)) {
        snprintf(err, err_len,
                 "has no time of day HH:MM:SS after the date, as in "
                 "2026-12-04T10:15:30.123000+00:00");
        return -1;
    }
    if (p < end && *p == '.') {
        p++;
        if (read_fraction_ms(&p, end, &frac_ms, err, err_len) != 0)
            return -1;
    }
    if (p >= end) {
        snprintf(err, err_len,
                 "has no UTC offset such as +00:00 or Z, so the time is "
                 "ambiguous");
        return -1;
    }
    if (read_utc_offset(&p, end, &offset_min) != 0 || p != end) {
        snprintf(err, err_len,
                 "has an invalid UTC offset or text after it; expected Z, "
                 "+HH:MM or -HH:MM at the end");
        return -1;
    }
    if (month < 1 || month > 12 || day < 1 ||
        day > days_in_month(year, month) || hour > 23 || minute > 59 ||
        second > 59) {
        snprintf(err, err_len, "is not a valid calendar date and time");
        return -1;
    }
    int64_t seconds = days_from_civil(year, month, day) * 86400 + hour * 3600 +
                      minute * 60 + second - (int64_t)offset_min * 60;
    int64_t result = seconds * 1000 + frac_ms;
    if (result < 0 || result > RECORDING_MAX_ARRIVAL_MS) {
        snprintf(err, err_len, "is outside 1970-01-01 to 9999-12-31 UTC");
        return -1;
    }
    *ms = result;
    return 0;
}

int recording_parse_epoch(const char *text, size_t len, int64_t *ms, char *err,
                          size_t err_len)
{
    const char *p = text, *end = text + len;
    /* The value is digits[] x 10^exponent, read exactly. */
    char digits[40];
    int count = 0, exponent = 0;
    bool nonzero_dropped = false;

    if (p < end && *p == '-') {
        snprintf(err, err_len, "is before 1970-01-01");
        return -1;
    }
    for (; p < end && isdigit((unsigned char)*p); p++) {
        if (count == (int)sizeof digits) {
            snprintf(err, err_len, "is after 9999-12-31");
            return -1;
        }
        digits[count++] = *p;
    }
    if (p < end && *p == '.') {
        for (p++; p < end && isdigit((unsigned char)*p); p++) {
            if (count < (int)sizeof digits) {
                digits[count++] = *p;
                exponent--;
            } else if (*p != '0') {
                nonzero_dropped = true;
            }
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        char *exp_end;
        long e = strtol(p + 1, &exp_end, 10);
        if (exp_end != end || e < -1000 || e > 1000) {
            snprintf(err, err_len, "is not a number of seconds");
            return -1;
        }
        exponent += (int)e;
        p = end;
    }
    if (p != end || count == 0) {
        snprintf(err, err_len, "is not a number of seconds");
        return -1;
    }
    /* Milliseconds: shift by three more places, then every digit that
     * falls below the decimal point must be zero. */
    int shift = exponent + 3;
    int64_t value = 0;
    for (int i = 0; i < count; i++) {
        int place = count - 1 - i + shift; /* power of ten of digit i */
        int digit = digits[i] - '0';
        if (place < 0) {
            if (digit != 0)
                nonzero_dropped = true;
            continue;
        }
        if (digit == 0 && value == 0)
            continue;
        if (place > 18) {
            snprintf(err, err_len, "is after 9999-12-31");
            return -1;
        }
        int64_t term = digit;
        for (int k = 0; k < place; k++)
            term *= 10;
        value += term;
        if (value > RECORDING_MAX_ARRIVAL_MS) {
            snprintf(err, err_len, "is after 9999-12-31");
            return -1;
        }
    }
    if (nonzero_dropped) {
        snprintf(err, err_len,
                 "has digits below the millisecond, but Kinesis arrival "
                 "times have millisecond precision");
        return -1;
    }
    *ms = value;
    return 0;
}
