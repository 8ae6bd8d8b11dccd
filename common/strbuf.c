#include "common/strbuf.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sb_init(struct strbuf *sb, size_t max)
{
    sb->data = NULL;
    sb->len = 0;
    sb->cap = 0;
    sb->max = max;
    sb->error = 0;
}

void sb_free(struct strbuf *sb)
{
    free(sb->data);
    sb->data = NULL;
    sb->len = sb->cap = 0;
}

void sb_reset(struct strbuf *sb)
{
    sb->len = 0;
    sb->error = 0;
    if (sb->data != NULL)
        sb->data[0] = '\0';
}

int sb_error(const struct strbuf *sb)
{
    return sb->error;
}

static int sb_reserve(struct strbuf *sb, size_t extra)
{
    if (sb->error != 0)
        return sb->error;
    if (extra > sb->max || sb->len > sb->max - extra) {
        sb->error = -EMSGSIZE;
        return sb->error;
    }
    size_t need = sb->len + extra + 1;
    if (need <= sb->cap)
        return 0;
    size_t cap = sb->cap ? sb->cap : 64;
    while (cap < need)
        cap *= 2;
    char *p = realloc(sb->data, cap);
    if (p == NULL) {
        sb->error = -ENOMEM;
        return sb->error;
    }
    sb->data = p;
    sb->cap = cap;
    return 0;
}

int sb_append(struct strbuf *sb, const void *bytes, size_t n)
{
    int rc = sb_reserve(sb, n);
    if (rc != 0)
        return rc;
    if (n > 0)
        memcpy(sb->data + sb->len, bytes, n);
    sb->len += n;
    sb->data[sb->len] = '\0';
    return 0;
}

int sb_puts(struct strbuf *sb, const char *s)
{
    return sb_append(sb, s, strlen(s));
}

int sb_putc(struct strbuf *sb, char c)
{
    return sb_append(sb, &c, 1);
}

int sb_printf(struct strbuf *sb, const char *fmt, ...)
{
    char small[256];
    va_list ap;

    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return sb->error = -EINVAL;
    if ((size_t)n < sizeof small)
        return sb_append(sb, small, (size_t)n);

    int rc = sb_reserve(sb, (size_t)n);
    if (rc != 0)
        return rc;
    va_start(ap, fmt);
    vsnprintf(sb->data + sb->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb->len += (size_t)n;
    return 0;
}

/* Write v in decimal so that it ends just before end, and return where
 * it starts. It takes at most 20 bytes. */
static char *format_uint64(uint64_t v, char *end)
{
    do {
        *--end = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    return end;
}

int sb_uint64(struct strbuf *sb, uint64_t v)
{
    char digits[20];
    char *end = digits + sizeof digits;
    char *start = format_uint64(v, end);

    return sb_append(sb, start, (size_t)(end - start));
}

int sb_int64(struct strbuf *sb, int64_t v)
{
    char text[21];
    char *end = text + sizeof text;
    /* The magnitude of INT64_MIN does not fit in int64_t. */
    char *start =
        format_uint64(v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v, end);

    if (v < 0)
        *--start = '-';
    return sb_append(sb, start, (size_t)(end - start));
}

int sb_json_string(struct strbuf *sb, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t start = 0;

    sb_putc(sb, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        sb_append(sb, s + start, i - start);
        start = i + 1;
        switch (c) {
        case '"':
            sb_append(sb, "\\\"", 2);
            break;
        case '\\':
            sb_append(sb, "\\\\", 2);
            break;
        case '\n':
            sb_append(sb, "\\n", 2);
            break;
        case '\r':
            sb_append(sb, "\\r", 2);
            break;
        case '\t':
            sb_append(sb, "\\t", 2);
            break;
        default: {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            sb_append(sb, esc, sizeof esc);
        }
        }
    }
    sb_append(sb, s + start, n - start);
    return sb_putc(sb, '"');
}

int sb_fixed4(struct strbuf *sb, int64_t v)
{
    uint64_t mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    unsigned frac = (unsigned)(mag % 10000);
    /* A sign, 20 digits before the point, the point and 4 after it, all
     * written in place and appended at once. */
    char text[26];
    char *end = text + 21;
    char *start = format_uint64(mag / 10000, end);

    if (v < 0)
        *--start = '-';
    if (frac != 0) {
        int n = 4;
        while (frac % 10 == 0) {
            frac /= 10;
            n--;
        }
        *end++ = '.';
        for (int i = n - 1; i >= 0; i--) {
            end[i] = (char)('0' + frac % 10);
            frac /= 10;
        }
        end += n;
    }
    return sb_append(sb, start, (size_t)(end - start));
}

char *sb_take(struct strbuf *sb, size_t *len)
{
    char *p = sb->data;
    if (len != NULL)
        *len = sb->len;
    if (p == NULL)
        p = calloc(1, 1);
    sb->data = NULL;
    sb->len = sb->cap = 0;
    return p;
}
