/*
 * Batch log entries. A sample is
 *
 *   flags     1 byte: FINAL, then one bit per optional text that is present
 *   second, device_ts_ms, arrival_ms, cadence4, resistance4, output4
 *   texts     race_id, racer_id, then each optional text that is present,
 *             as its length, the bytes and a NUL
 *
 * and a class history row is
 *
 *   flags     1 byte: DELETED, then RACE when race_id is present
 *   second, output4
 *   texts     class_id, racer_id, then race_id when present
 *
 * Numbers are varints: 7 bits per byte, low bits first, the high bit set on
 * every byte but the last. Signed numbers are zigzag-encoded first (0, -1,
 * 1, -2 ... become 0, 1, 2, 3 ...), so small values of either sign take one
 * or two bytes, and the bytes do not depend on the machine. The NUL after
 * each text lets a decoded entry point into the BLOB instead of copying it.
 */
#include "store/batch_log.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum {
    HISTORY_DELETED = 1u << 0,
    HISTORY_RACE = 1u << 1,
    HISTORY_ALL = (1u << 2) - 1,
};

enum {
    FLAG_FINAL = 1u << 0,
    FLAG_CLASS = 1u << 1,
    FLAG_NAME = 1u << 2,
    FLAG_UUID = 1u << 3,
    FLAG_CADENCE = 1u << 4,
    FLAG_RESISTANCE = 1u << 5,
    FLAG_ALL = (1u << 6) - 1,
};

/* Maximum size of one varint of 64 bits. */
#define MAX_VARINT_BYTES 10
/* Maximum size of a sample besides its texts: flags and six varints. */
#define MAX_SAMPLE_FIXED_BYTES (1 + 6 * MAX_VARINT_BYTES)
/* Maximum size of a history row besides its texts: flags and two varints. */
#define MAX_HISTORY_FIXED_BYTES (1 + 2 * MAX_VARINT_BYTES)
/* Maximum size a text adds besides its bytes: its length and a NUL. */
#define MAX_TEXT_OVERHEAD (5 + 1)

static unsigned char *put_varint(unsigned char *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *p++ = (unsigned char)v;
    return p;
}

static unsigned char *put_signed(unsigned char *p, int64_t v)
{
    uint64_t u = (uint64_t)v;
    return put_varint(p, (u << 1) ^ (v < 0 ? UINT64_MAX : 0));
}

/* Read a varint at data[*pos]; -1 when it is cut short or too long. */
static int get_varint(const unsigned char *data, size_t len, size_t *pos,
                      uint64_t *out)
{
    uint64_t v = 0;

    for (unsigned shift = 0; shift < 64 && *pos < len; shift += 7) {
        unsigned char b = data[(*pos)++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

static int get_signed(const unsigned char *data, size_t len, size_t *pos,
                      int64_t *out)
{
    uint64_t u;

    if (get_varint(data, len, pos, &u) != 0)
        return -1;
    *out = (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
    return 0;
}

static unsigned char *put_text(unsigned char *p, const char *s, size_t len)
{
    p = put_varint(p, len);
    memcpy(p, s, len);
    p[len] = '\0';
    return p + len + 1;
}

/* Make room for need more bytes. Returns 0 or -ENOMEM. */
static int reserve(struct batch_log_buf *b, size_t need)
{
    if (need > SIZE_MAX - b->len)
        return -ENOMEM;
    if (b->len + need > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + need)
            cap *= 2;
        unsigned char *p = realloc(b->data, cap);
        if (p == NULL)
            return -ENOMEM;
        b->data = p;
        b->cap = cap;
    }
    return 0;
}

int batch_log_put_sample(struct batch_log_buf *b, const struct store_sample *s)
{
    if (s->race_id == NULL || s->racer_id == NULL)
        return -EINVAL;

    const char *texts[7] = {
        s->race_id, s->racer_id,      s->class_id,        s->name,
        s->uuid,    s->cadence_exact, s->resistance_exact};
    size_t lens[7];
    unsigned flags = s->final ? FLAG_FINAL : 0;
    size_t need = MAX_SAMPLE_FIXED_BYTES;

    for (int i = 0; i < 7; i++) {
        if (texts[i] == NULL)
            continue;
        if (i >= 2)
            flags |= 1u << (i - 1);
        lens[i] = i == 3   ? s->name_len
                  : i == 4 ? s->uuid_len
                           : strlen(texts[i]);
        if (lens[i] > UINT32_MAX)
            return -EINVAL;
        need += lens[i] + MAX_TEXT_OVERHEAD;
    }
    if (reserve(b, need) != 0)
        return -ENOMEM;

    unsigned char *p = b->data + b->len;
    *p++ = (unsigned char)flags;
    p = put_signed(p, s->second);
    p = put_signed(p, s->device_ts_ms);
    p = put_signed(p, s->arrival_ms);
    p = put_signed(p, s->cadence4);
    p = put_signed(p, s->resistance4);
    p = put_signed(p, s->output4);
    for (int i = 0; i < 7; i++) {
        if (texts[i] != NULL)
            p = put_text(p, texts[i], lens[i]);
    }
    b->len = (size_t)(p - b->data);
    b->count++;
    return 0;
}

int batch_log_put_history(struct batch_log_buf *b,
                          const struct store_history_row *row, bool deleted)
{
    if (row->class_id == NULL || row->racer_id == NULL)
        return -EINVAL;

    const char *race = deleted ? NULL : row->race_id;
    size_t lens[3] = {strlen(row->class_id), strlen(row->racer_id),
                      race ? strlen(race) : 0};
    size_t need = MAX_HISTORY_FIXED_BYTES;
    for (int i = 0; i < 3; i++) {
        if (lens[i] > UINT32_MAX)
            return -EINVAL;
        need += lens[i] + MAX_TEXT_OVERHEAD;
    }
    if (reserve(b, need) != 0)
        return -ENOMEM;

    unsigned char *p = b->data + b->len;
    *p++ = (unsigned char)((deleted ? HISTORY_DELETED : 0) |
                           (race ? HISTORY_RACE : 0));
    p = put_signed(p, row->second);
    p = put_signed(p, deleted ? 0 : row->output4);
    p = put_text(p, row->class_id, lens[0]);
    p = put_text(p, row->racer_id, lens[1]);
    if (race != NULL)
        p = put_text(p, race, lens[2]);
    b->len = (size_t)(p - b->data);
    b->count++;
    return 0;
}

void batch_log_reset(struct batch_log_buf *b)
{
    b->len = 0;
    b->count = 0;
}

void batch_log_free(struct batch_log_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* Read one text at data[*pos]; NULL with *reason set when it does not fit. */
static const char *get_text(const unsigned char *data, size_t len, size_t *pos,
                            size_t *text_len, const char **reason)
{
    uint64_t n;

    if (get_varint(data, len, pos, &n) != 0) {
        *reason = "a text length is cut short";
        return NULL;
    }
    if (n > UINT32_MAX || len - *pos < (size_t)n + 1) {
        *reason = "a text is longer than the rest of the entry";
        return NULL;
    }
    if (data[*pos + n] != '\0') {
        *reason = "a text lacks its NUL terminator";
        return NULL;
    }
    const char *s = (const char *)data + *pos;
    *pos += (size_t)n + 1;
    *text_len = n;
    return s;
}

/* Read an entry's flags byte, which may set only the bits in allowed. */
static int get_flags(const unsigned char *data, size_t len, size_t *pos,
                     unsigned allowed, unsigned *flags, const char **reason)
{
    if (*pos >= len) {
        *reason = "an entry is cut short";
        return -1;
    }
    *flags = data[(*pos)++];
    if (*flags & ~allowed) {
        *reason = "an entry has unknown flags";
        return -1;
    }
    return 0;
}

/* Read a second, which must fit in 32 bits. */
static int get_second(const unsigned char *data, size_t len, size_t *pos,
                      int32_t *second, const char **reason)
{
    int64_t v;

    if (get_signed(data, len, pos, &v) != 0) {
        *reason = "an entry is cut short";
        return -1;
    }
    if (v < INT32_MIN || v > INT32_MAX) {
        *reason = "a second is outside the 32-bit range";
        return -1;
    }
    *second = (int32_t)v;
    return 0;
}

int batch_log_next_sample(const unsigned char *data, size_t len, size_t *pos,
                          struct store_sample *out, const char **reason)
{
    size_t at = *pos;
    unsigned flags;

    memset(out, 0, sizeof *out);
    if (get_flags(data, len, &at, FLAG_ALL, &flags, reason) != 0 ||
        get_second(data, len, &at, &out->second, reason) != 0)
        return -1;
    out->final = (flags & FLAG_FINAL) != 0;
    int64_t *numbers[] = {&out->device_ts_ms, &out->arrival_ms, &out->cadence4,
                          &out->resistance4, &out->output4};
    for (size_t i = 0; i < sizeof numbers / sizeof numbers[0]; i++) {
        if (get_signed(data, len, &at, numbers[i]) != 0) {
            *reason = "an entry is cut short";
            return -1;
        }
    }

    const char **texts[7] = {
        &out->race_id, &out->racer_id,      &out->class_id,        &out->name,
        &out->uuid,    &out->cadence_exact, &out->resistance_exact};
    for (int i = 0; i < 7; i++) {
        if (i >= 2 && !(flags & (1u << (i - 1))))
            continue;
        size_t n;
        *texts[i] = get_text(data, len, &at, &n, reason);
        if (*texts[i] == NULL)
            return -1;
        if (i == 3)
            out->name_len = n;
        else if (i == 4)
            out->uuid_len = n;
        else if (memchr(*texts[i], '\0', n) != NULL) {
            *reason = "an id or exact value contains a NUL byte";
            return -1;
        }
    }
    *pos = at;
    return 0;
}

int batch_log_next_history(const unsigned char *data, size_t len, size_t *pos,
                           struct store_history_row *out, bool *deleted,
                           const char **reason)
{
    size_t at = *pos;
    unsigned flags;
    size_t n;

    memset(out, 0, sizeof *out);
    if (get_flags(data, len, &at, HISTORY_ALL, &flags, reason) != 0 ||
        get_second(data, len, &at, &out->second, reason) != 0)
        return -1;
    if (get_signed(data, len, &at, &out->output4) != 0) {
        *reason = "an entry is cut short";
        return -1;
    }

    const char **texts[] = {&out->class_id, &out->racer_id, &out->race_id};
    int count = (flags & HISTORY_RACE) ? 3 : 2;
    for (int i = 0; i < count; i++) {
        *texts[i] = get_text(data, len, &at, &n, reason);
        if (*texts[i] == NULL)
            return -1;
        if (memchr(*texts[i], '\0', n) != NULL) {
            *reason = "an id contains a NUL byte";
            return -1;
        }
    }
    *deleted = (flags & HISTORY_DELETED) != 0;
    *pos = at;
    return 0;
}
