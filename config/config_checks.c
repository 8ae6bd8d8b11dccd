/* Validators of string settings and the ISO 8601 time parser. */
#include "config/config_internal.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

/* Read exactly count decimal digits. */
static bool take_digits(const char **p, int count, int *out)
{
    int value = 0;
    for (int i = 0; i < count; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return false;
        value = value * 10 + (c - '0');
    }
    *p += count;
    *out = value;
    return true;
}

/* Read one expected character, case-insensitively for the T and Z. */
static bool take_char(const char **p, char expected)
{
    if (toupper((unsigned char)**p) != expected)
        return false;
    (*p)++;
    return true;
}

static bool is_leap_year(int year)
{
    return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
}

static bool is_valid_date(int year, int month, int day)
{
    static const int days_in_month[] = {31, 28, 31, 30, 31, 30,
                                        31, 31, 30, 31, 30, 31};
    if (month < 1 || month > 12 || day < 1)
        return false;
    int last = days_in_month[month - 1];
    if (month == 2 && is_leap_year(year))
        last = 29;
    return day <= last;
}

/*
 * Days since 1970-01-01 of a proleptic Gregorian date, after Howard
 * Hinnant's days_from_civil algorithm.
 */
static int64_t days_from_civil(int year, int month, int day)
{
    int64_t y = month <= 2 ? year - 1 : year;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t year_of_era = y - era * 400;
    int64_t day_of_year =
        (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1;
    int64_t day_of_era =
        year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    return era * 146097 + day_of_era - 719468;
}

/* Read ".fraction" if present, keeping milliseconds (extra digits cut). */
static bool take_fraction(const char **p, int *millis)
{
    *millis = 0;
    if (**p != '.')
        return true;
    (*p)++;
    int digits = 0;
    for (; **p >= '0' && **p <= '9'; (*p)++, digits++) {
        if (digits < 3)
            *millis = *millis * 10 + (**p - '0');
    }
    for (int i = digits; i < 3; i++)
        *millis *= 10;
    return digits > 0 && digits <= 9;
}

/* Read "Z" or "+hh:mm" / "-hh:mm" as seconds east of UTC. */
static bool take_offset(const char **p, int *offset_s)
{
    *offset_s = 0;
    if (take_char(p, 'Z'))
        return true;
    char sign = **p;
    if (sign != '+' && sign != '-')
        return false;
    (*p)++;
    int hours, minutes;
    if (!take_digits(p, 2, &hours) || !take_char(p, ':') ||
        !take_digits(p, 2, &minutes) || hours > 23 || minutes > 59)
        return false;
    *offset_s = (hours * 60 + minutes) * 60 * (sign == '-' ? -1 : 1);
    return true;
}

int cfg_parse_timestamp(const char *text, int64_t *ms)
{
    const char *p = text;
    int year, month, day, hour, minute, second, millis, offset_s;
    if (!take_digits(&p, 4, &year) || !take_char(&p, '-') ||
        !take_digits(&p, 2, &month) || !take_char(&p, '-') ||
        !take_digits(&p, 2, &day) || !take_char(&p, 'T') ||
        !take_digits(&p, 2, &hour) || !take_char(&p, ':') ||
        !take_digits(&p, 2, &minute) || !take_char(&p, ':') ||
        !take_digits(&p, 2, &second) || !take_fraction(&p, &millis) ||
        !take_offset(&p, &offset_s) || *p != '\0')
        return -1;
    /* Leap seconds (:60) are rejected because Unix time has no slot. */
    if (!is_valid_date(year, month, day) || hour > 23 || minute > 59 ||
        second > 59)
        return -1;

    int64_t seconds = days_from_civil(year, month, day) * 86400 + hour * 3600 +
                      minute * 60 + second - offset_s;
    if (seconds < 0)
        return -1;
    *ms = seconds * 1000 + millis;
    return 0;
}

bool cfg_check_nonempty(const char *value)
{
    return value[0] != '\0';
}

/* AWS region names are lower-case letters, digits and dashes. */
bool cfg_check_region(const char *value)
{
    if (value[0] == '\0')
        return false;
    for (const char *p = value; *p != '\0'; p++) {
        if (!(*p >= 'a' && *p <= 'z') && !(*p >= '0' && *p <= '9') && *p != '-')
            return false;
    }
    return true;
}

static bool has_space_or_control(const char *value)
{
    for (const char *p = value; *p != '\0'; p++) {
        if (isspace((unsigned char)*p) || iscntrl((unsigned char)*p))
            return true;
    }
    return false;
}

/*
 * Check "host:port" with port 0..65535. An IPv6 host must be bracketed
 * ("[::1]:9464") so the port separator stays the last colon.
 */
static bool is_host_port(const char *value, int min_port)
{
    const char *colon = strrchr(value, ':');
    if (colon == NULL || colon == value || has_space_or_control(value))
        return false;
    if (value[0] == '[') {
        if (colon[-1] != ']' || colon - value < 3)
            return false;
    } else if (memchr(value, ':', (size_t)(colon - value)) != NULL ||
               memchr(value, '/', (size_t)(colon - value)) != NULL) {
        return false;
    }

    const char *digits = colon + 1;
    size_t n = strlen(digits);
    int port = 0;
    if (n == 0 || n > 5 || !take_digits(&digits, (int)n, &port))
        return false;
    return port >= min_port && port <= 65535;
}

bool cfg_check_host_port(const char *value)
{
    return is_host_port(value, 0);
}

bool cfg_check_mqtt_url(const char *value)
{
    if (strncasecmp(value, "mqtt://", 7) == 0)
        return is_host_port(value + 7, 1);
    if (strncasecmp(value, "mqtts://", 8) == 0)
        return is_host_port(value + 8, 1);
    return false;
}

/*
 * Check an MQTT topic template: not empty, free of the + and # wildcards,
 * and with no placeholder other than {allowed}.
 */
static bool is_topic_template(const char *value, const char *allowed)
{
    if (value[0] == '\0' || strpbrk(value, "+#") != NULL)
        return false;
    size_t allowed_len = strlen(allowed);
    for (const char *p = value; *p != '\0'; p++) {
        if (*p == '}')
            return false;
        if (*p != '{')
            continue;
        const char *close = strchr(p, '}');
        if (close == NULL || (size_t)(close - p - 1) != allowed_len ||
            strncmp(p + 1, allowed, allowed_len) != 0)
            return false;
        p = close;
    }
    return true;
}

bool cfg_check_race_topic(const char *value)
{
    return is_topic_template(value, "raceId");
}

bool cfg_check_class_topic(const char *value)
{
    return is_topic_template(value, "classId");
}

bool cfg_check_cloudwatch_namespace(const char *value)
{
    size_t len = strlen(value);
    if (len == 0 || len > 255 || strncmp(value, "AWS/", 4) == 0)
        return false;
    for (const char *p = value; *p != '\0'; p++) {
        if (!isalnum((unsigned char)*p) && strchr("._-/#: ", *p) == NULL)
            return false;
    }
    return true;
}
