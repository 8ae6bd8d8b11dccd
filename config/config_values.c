/*
 * Parsing, validation and formatting of single setting values. These
 * functions do not see where a value came from, so config.c adds that to
 * error messages.
 */
#include "config/config_internal.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static void *field_of(struct podium_config *cfg,
                      const struct cfg_setting *setting)
{
    return (char *)cfg + setting->offset;
}

static const void *const_field_of(const struct podium_config *cfg,
                                  const struct cfg_setting *setting)
{
    return (const char *)cfg + setting->offset;
}

/*
 * Parse a decimal integer with an optional leading '-'. Rejects empty text,
 * other signs, whitespace, trailing characters and values outside int64_t.
 */
static int parse_int64(const char *text, int64_t *out)
{
    const char *p = text;
    bool negative = *p == '-';
    if (negative)
        p++;
    if (*p == '\0')
        return -1;

    /* Accumulate as a negative number so INT64_MIN is reachable. */
    int64_t value = 0;
    for (; *p != '\0'; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        int digit = *p - '0';
        if (value < (INT64_MIN + digit) / 10)
            return -1;
        value = value * 10 - digit;
    }
    if (!negative) {
        if (value == INT64_MIN)
            return -1;
        value = -value;
    }
    *out = value;
    return 0;
}

static int parse_bool(const char *text, bool *out)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(text, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(text, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

static int parse_enum(const char *const *names, const char *text, int *out)
{
    for (int i = 0; names[i] != NULL; i++) {
        if (strcasecmp(text, names[i]) == 0) {
            *out = i;
            return 0;
        }
    }
    return -1;
}

static int parse_position(struct podium_config *cfg, const char *text)
{
    static const char prefix[] = "AT_TIMESTAMP:";
    if (strcasecmp(text, "TRIM_HORIZON") == 0) {
        cfg->initial_position = CFG_POSITION_TRIM_HORIZON;
        cfg->initial_timestamp_ms = 0;
        return 0;
    }
    if (strcasecmp(text, "LATEST") == 0) {
        cfg->initial_position = CFG_POSITION_LATEST;
        cfg->initial_timestamp_ms = 0;
        return 0;
    }
    int64_t ms;
    if (strncasecmp(text, prefix, sizeof prefix - 1) != 0 ||
        cfg_parse_timestamp(text + sizeof prefix - 1, &ms) != 0)
        return -1;
    cfg->initial_position = CFG_POSITION_AT_TIMESTAMP;
    cfg->initial_timestamp_ms = ms;
    return 0;
}

static int parse_string(struct podium_config *cfg,
                        const struct cfg_setting *setting, const char *text)
{
    char **field = field_of(cfg, setting);
    char *copy = NULL;
    bool unset = text[0] == '\0' && (setting->flags & CFG_FLAG_OPTIONAL);
    if (!unset) {
        if (setting->check != NULL && !setting->check(text))
            return -1;
        copy = strdup(text);
        /* NOTE: out of memory is reported like an invalid value. */
        if (copy == NULL)
            return -1;
    }
    free(*field);
    *field = copy;
    return 0;
}

static int parse_integer(struct podium_config *cfg,
                         const struct cfg_setting *setting, const char *text)
{
    int64_t value;
    if (parse_int64(text, &value) != 0 || value < setting->min ||
        value > setting->max)
        return -1;
    /* The table keeps min and max of INT32 settings within int32_t. */
    if (setting->type == CFG_TYPE_INT32)
        *(int32_t *)field_of(cfg, setting) = (int32_t)value;
    else
        *(int64_t *)field_of(cfg, setting) = value;
    return 0;
}

int cfg_parse_value(struct podium_config *cfg,
                    const struct cfg_setting *setting, const char *value)
{
    switch (setting->type) {
    case CFG_TYPE_STRING:
        return parse_string(cfg, setting, value);
    case CFG_TYPE_INT32:
    case CFG_TYPE_INT64:
        return parse_integer(cfg, setting, value);
    case CFG_TYPE_BOOL:
        return parse_bool(value, (bool *)field_of(cfg, setting));
    case CFG_TYPE_ENUM:
        return parse_enum(setting->enum_names, value,
                          (int *)field_of(cfg, setting));
    case CFG_TYPE_POSITION:
        return parse_position(cfg, value);
    }
    return -1;
}

/* Write "a, b or c" from a NULL-terminated list of names. */
static void join_names(const char *const *names, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; names[i] != NULL && used < len; i++) {
        const char *sep = ", ";
        if (i == 0)
            sep = "";
        else if (names[i + 1] == NULL)
            sep = " or ";
        int n = snprintf(buf + used, len - used, "%s%s", sep, names[i]);
        if (n < 0)
            return;
        used += (size_t)n;
    }
}

void cfg_describe_expected(const struct cfg_setting *setting, char *buf,
                           size_t len)
{
    switch (setting->type) {
    case CFG_TYPE_INT32:
    case CFG_TYPE_INT64:
        snprintf(buf, len, "an integer from %" PRId64 " to %" PRId64,
                 setting->min, setting->max);
        return;
    case CFG_TYPE_BOOL:
        snprintf(buf, len, "true, false, yes, no, on, off, 1 or 0");
        return;
    case CFG_TYPE_ENUM:
        join_names(setting->enum_names, buf, len);
        return;
    case CFG_TYPE_POSITION:
        snprintf(buf, len,
                 "TRIM_HORIZON, LATEST or AT_TIMESTAMP:<ISO 8601 time> such "
                 "as AT_TIMESTAMP:2026-01-01T00:00:00Z");
        return;
    case CFG_TYPE_STRING:
        break;
    }
    snprintf(buf, len, "%s",
             setting->expected != NULL ? setting->expected : "a string");
}

/* Bounded output that, like snprintf, counts what did not fit. */
struct text_out {
    char *buf;
    size_t len;
    size_t used; /* characters produced, fitting or not */
};

static void put_char(struct text_out *out, char c)
{
    if (out->used + 1 < out->len)
        out->buf[out->used] = c;
    out->used++;
}

static void put_text(struct text_out *out, const char *text)
{
    for (; *text != '\0'; text++)
        put_char(out, *text);
}

/* A value must be quoted when the unquoted form would read back otherwise. */
static bool needs_quotes(const char *text)
{
    size_t n = strlen(text);
    if (n == 0 || isspace((unsigned char)text[0]) ||
        isspace((unsigned char)text[n - 1]))
        return true;
    return strpbrk(text, "\"\\#") != NULL;
}

static void put_string(struct text_out *out, const char *text)
{
    if (!needs_quotes(text)) {
        put_text(out, text);
        return;
    }
    put_char(out, '"');
    for (; *text != '\0'; text++) {
        if (*text == '"' || *text == '\\')
            put_char(out, '\\');
        put_char(out, *text);
    }
    put_char(out, '"');
}

static void put_position(struct text_out *out, const struct podium_config *cfg)
{
    if (cfg->initial_position == CFG_POSITION_TRIM_HORIZON) {
        put_text(out, "TRIM_HORIZON");
        return;
    }
    if (cfg->initial_position == CFG_POSITION_LATEST) {
        put_text(out, "LATEST");
        return;
    }
    char text[64];
    struct tm tm;
    time_t seconds = (time_t)(cfg->initial_timestamp_ms / 1000);
    int millis = (int)(cfg->initial_timestamp_ms % 1000);
    if (gmtime_r(&seconds, &tm) == NULL ||
        strftime(text, sizeof text, "AT_TIMESTAMP:%Y-%m-%dT%H:%M:%S", &tm) ==
            0) {
        put_text(out, "AT_TIMESTAMP:?");
        return;
    }
    put_text(out, text);
    if (millis != 0) {
        snprintf(text, sizeof text, ".%03d", millis);
        put_text(out, text);
    }
    put_char(out, 'Z');
}

static void put_value(struct text_out *out, const struct podium_config *cfg,
                      const struct cfg_setting *setting)
{
    const void *field = const_field_of(cfg, setting);
    char number[32];
    switch (setting->type) {
    case CFG_TYPE_STRING: {
        const char *text = *(char *const *)field;
        put_string(out, text != NULL ? text : "");
        return;
    }
    case CFG_TYPE_INT32:
        snprintf(number, sizeof number, "%" PRId32, *(const int32_t *)field);
        put_text(out, number);
        return;
    case CFG_TYPE_INT64:
        snprintf(number, sizeof number, "%" PRId64, *(const int64_t *)field);
        put_text(out, number);
        return;
    case CFG_TYPE_BOOL:
        put_text(out, *(const bool *)field ? "true" : "false");
        return;
    case CFG_TYPE_ENUM: {
        int index = *(const int *)field;
        int count = 0;
        while (setting->enum_names[count] != NULL)
            count++;
        put_text(out, index >= 0 && index < count ? setting->enum_names[index]
                                                  : "?");
        return;
    }
    case CFG_TYPE_POSITION:
        put_position(out, cfg);
        return;
    }
}

/*
 * Write the value into buf (truncated to len - 1 characters and terminated
 * when len > 0). Returns the length of the whole value, as snprintf does.
 */
static size_t format_value(const struct podium_config *cfg,
                           const struct cfg_setting *setting, char *buf,
                           size_t len)
{
    struct text_out out = {buf, len, 0};
    bool unset = setting->type == CFG_TYPE_STRING &&
                 *(char *const *)const_field_of(cfg, setting) == NULL;
    if ((setting->flags & CFG_FLAG_SECRET) && !unset)
        put_text(&out, "********");
    else
        put_value(&out, cfg, setting);
    if (len > 0)
        buf[out.used < len ? out.used : len - 1] = '\0';
    return out.used;
}

void cfg_format_value(const struct podium_config *cfg,
                      const struct cfg_setting *setting, char *buf, size_t len)
{
    format_value(cfg, setting, buf, len);
}

static const char *source_name(enum cfg_source source)
{
    switch (source) {
    case CFG_SOURCE_DEFAULT:
        return "default";
    case CFG_SOURCE_FILE:
        return "file";
    case CFG_SOURCE_ENV:
        return "env";
    case CFG_SOURCE_FLAG:
        return "--set";
    }
    return "?";
}

void cfg_print_setting(const struct podium_config *cfg,
                       const struct cfg_setting *setting,
                       enum cfg_source source, FILE *out)
{
    char small[256];
    size_t needed = format_value(cfg, setting, small, sizeof small);
    char *text = small;
    /* Long paths and URLs get a buffer of their own instead of a cut. */
    if (needed >= sizeof small) {
        text = malloc(needed + 1);
        if (text == NULL)
            text = small;
        else
            format_value(cfg, setting, text, needed + 1);
    }
    fprintf(out, "%s = %s  # %s\n", setting->name, text, source_name(source));
    if (text != small)
        free(text);
}
