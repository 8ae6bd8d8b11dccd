/*
 * Topic checks and topic template expansion. The limits are those of AWS
 * IoT Core (publisher.h). The character rules are those of MQTT 3.1.1 for a
 * PUBLISH topic, checked with libmosquitto, so that mosquitto_publish never
 * rejects a queued message.
 */
#include "publisher/internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <mosquitto.h>

#define QUOTE_MAX 80 /* bytes of a value or topic shown in a message */

static void set_err(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t err_len, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || err_len == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

/*
 * Write s as a quoted string for a message into buf: printable ASCII as it
 * is, other bytes as \xHH, cut with "..." after QUOTE_MAX bytes.
 */
static const char *quote(const char *s, size_t len, char *buf, size_t size)
{
    size_t n = 0;

    buf[n++] = '"';
    for (size_t i = 0; i < len && n + 8 < size; i++) {
        unsigned char c = (unsigned char)s[i];

        if (i == QUOTE_MAX) {
            memcpy(buf + n, "...", 3);
            n += 3;
            break;
        }
        if (c == '"' || c == '\\') {
            buf[n++] = '\\';
            buf[n++] = (char)c;
        } else if (c >= 0x20 && c < 0x7f) {
            buf[n++] = (char)c;
        } else {
            n += (size_t)snprintf(buf + n, size - n, "\\x%02x", c);
        }
    }
    buf[n++] = '"';
    buf[n] = '\0';
    return buf;
}

/*
 * Check that a topic can be published: 1 to PUB_MAX_TOPIC bytes, at most
 * PUB_MAX_TOPIC_SLASHES slashes, no wildcard, valid UTF-8 without U+0000
 * or control characters. Returns 0, or -1 with a message in err (err may
 * be NULL).
 */
int pub_topic_check(const char *topic, size_t len, char *err, size_t err_len)
{
    size_t slashes = 0;

    if (len == 0) {
        set_err(err, err_len, "topic is empty");
        return -1;
    }
    if (len > PUB_MAX_TOPIC) {
        set_err(err, err_len, "topic is %zu bytes; the limit is %d bytes", len,
                PUB_MAX_TOPIC);
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        if (topic[i] == '/')
            slashes++;
    }
    if (slashes > PUB_MAX_TOPIC_SLASHES) {
        set_err(err, err_len, "topic has %zu slashes; the limit is %d", slashes,
                PUB_MAX_TOPIC_SLASHES);
        return -1;
    }
    if (memchr(topic, '\0', len) != NULL) {
        set_err(err, err_len, "topic contains U+0000");
        return -1;
    }
    if (mosquitto_pub_topic_check2(topic, len) != MOSQ_ERR_SUCCESS) {
        set_err(err, err_len,
                "topic contains the wildcard '+' or '#', "
                "which only subscriptions may use");
        return -1;
    }
    if (mosquitto_validate_utf8(topic, (int)len) != MOSQ_ERR_SUCCESS) {
        set_err(err, err_len,
                "topic is not valid UTF-8 or contains a control character");
        return -1;
    }
    return 0;
}

/* Append one placeholder's value after checking that it is one level. */
static int append_value(const char *name, const char *value, size_t len,
                        struct strbuf *out, char *err, size_t err_len)
{
    char shown[QUOTE_MAX * 4 + 16];

    if (len == 0) {
        set_err(err, err_len, "{%s} value is empty", name);
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        char c = value[i];
        char what[8];

        if (c != '/' && c != '+' && c != '#' && c != '\0')
            continue;
        if (c == '\0')
            snprintf(what, sizeof what, "U+0000");
        else
            snprintf(what, sizeof what, "'%c'", c);
        set_err(err, err_len,
                "{%s} value %s contains %s; an id in a topic must not "
                "contain '/', '+', '#' or U+0000",
                name, quote(value, len, shown, sizeof shown), what);
        return -1;
    }
    sb_append(out, value, len);
    return 0;
}

/* Append the value of the placeholder name[0..name_len). */
static int expand_placeholder(const char *tmpl, const char *name,
                              size_t name_len, const char *race_id,
                              size_t race_len, const char *class_id,
                              size_t class_len, struct strbuf *out, char *err,
                              size_t err_len)
{
    char shown[QUOTE_MAX * 4 + 16];

    if (name_len == 6 && memcmp(name, "raceId", 6) == 0) {
        if (race_id == NULL) {
            set_err(err, err_len,
                    "topic template %s uses {raceId} but no race id was "
                    "given",
                    quote(tmpl, strlen(tmpl), shown, sizeof shown));
            return -1;
        }
        return append_value("raceId", race_id, race_len, out, err, err_len);
    }
    if (name_len == 7 && memcmp(name, "classId", 7) == 0) {
        if (class_id == NULL) {
            set_err(err, err_len,
                    "topic template %s uses {classId} but no class id was "
                    "given",
                    quote(tmpl, strlen(tmpl), shown, sizeof shown));
            return -1;
        }
        return append_value("classId", class_id, class_len, out, err, err_len);
    }
    set_err(err, err_len,
            "unknown placeholder {%.*s} in topic template %s; the known "
            "placeholders are {raceId} and {classId}",
            (int)(name_len > QUOTE_MAX ? QUOTE_MAX : name_len), name,
            quote(tmpl, strlen(tmpl), shown, sizeof shown));
    return -1;
}

/*
 * Expand tmpl into out (reset first). Any text outside {...} is copied as
 * it is; the result must pass pub_topic_check().
 */
int pub_topic_expand(const char *tmpl, const char *race_id, size_t race_len,
                     const char *class_id, size_t class_len, struct strbuf *out,
                     char *err, size_t err_len)
{
    char shown[QUOTE_MAX * 4 + 16];
    char why[160];
    const char *p = tmpl;

    sb_reset(out);
    while (*p != '\0') {
        const char *open = strchr(p, '{');
        const char *close;

        if (open == NULL) {
            sb_puts(out, p);
            break;
        }
        sb_append(out, p, (size_t)(open - p));
        close = strchr(open, '}');
        if (close == NULL) {
            set_err(err, err_len,
                    "topic template %s has a '{' without a closing '}'",
                    quote(tmpl, strlen(tmpl), shown, sizeof shown));
            return -1;
        }
        if (expand_placeholder(tmpl, open + 1, (size_t)(close - open - 1),
                               race_id, race_len, class_id, class_len, out, err,
                               err_len) != 0)
            return -1;
        p = close + 1;
    }

    if (sb_error(out) != 0) {
        set_err(err, err_len,
                "expanding topic template %s failed: the output buffer is "
                "full or out of memory",
                quote(tmpl, strlen(tmpl), shown, sizeof shown));
        return -1;
    }
    if (pub_topic_check(out->data ? out->data : "", out->len, why,
                        sizeof why) != 0) {
        set_err(
            err, err_len, "invalid expanded topic %s: %s",
            quote(out->data ? out->data : "", out->len, shown, sizeof shown),
            why);
        return -1;
    }
    return 0;
}
