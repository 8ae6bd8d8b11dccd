/*
 * Growable byte buffer with a hard maximum size. Every append that would pass
 * the maximum, or fails to allocate, sets a sticky error: later appends do
 * nothing, and sb_error() tells why. Callers check once at the end.
 */
#ifndef PODIUM_COMMON_STRBUF_H
#define PODIUM_COMMON_STRBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct strbuf {
    char *data; /* NUL-terminated when not NULL; owned by the buffer */
    size_t len;
    size_t cap;
    size_t max; /* largest allowed len */
    int error;  /* 0, -ENOMEM or -EMSGSIZE */
};

void sb_init(struct strbuf *sb, size_t max);
void sb_free(struct strbuf *sb);
void sb_reset(struct strbuf *sb);
int sb_error(const struct strbuf *sb);

int sb_append(struct strbuf *sb, const void *bytes, size_t n);
int sb_puts(struct strbuf *sb, const char *s);
int sb_putc(struct strbuf *sb, char c);
int sb_printf(struct strbuf *sb, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Append v in decimal, as printf's PRIu64 and PRId64 would, without the
 * cost of printf on hot paths. */
int sb_uint64(struct strbuf *sb, uint64_t v);
int sb_int64(struct strbuf *sb, int64_t v);

/*
 * Append bytes as a quoted JSON string. Bytes >= 0x80 are copied as they are
 * (the caller has checked UTF-8); '"', '\\' and control characters, U+0000
 * included, are escaped, so the result is never cut short.
 */
int sb_json_string(struct strbuf *sb, const char *s, size_t n);

/*
 * Append v / 10000 as an exact JSON number with at most 4 decimals and no
 * trailing zeros: 1234500 -> "123.45", -5 -> "-0.0005", 0 -> "0".
 */
int sb_fixed4(struct strbuf *sb, int64_t v);

/* Hand the data over to the caller (owned, free with free()). */
char *sb_take(struct strbuf *sb, size_t *len);

#endif
