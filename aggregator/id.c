/*
 * Race, racer and class ids: comparison, JSON form and a hash index.
 */
#include "aggregator/internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/sjson.h"

int agg_id_cmp(const struct agg_id *a, const struct agg_id *b)
{
    if (a->is_num != b->is_num)
        return a->is_num ? -1 : 1;
    if (a->is_num)
        return (a->num > b->num) - (a->num < b->num);

    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->str, b->str, n);
    if (c != 0)
        return c < 0 ? -1 : 1;
    return (a->len > b->len) - (a->len < b->len);
}

int agg_id_to_json(const struct agg_id *id, struct strbuf *sb)
{
    /* agg_id_set_num keeps the decimal text of a numeric id in str. */
    if (id->is_num)
        return sb_append(sb, id->str, id->len);
    return sb_json_string(sb, id->str, id->len);
}

void agg_id_set_num(struct agg_id *id, int64_t num)
{
    memset(id, 0, sizeof *id);
    id->is_num = true;
    id->num = num;

    /* Decimal text as "%" PRId64 writes it, without the cost of snprintf:
     * three ids per record. The magnitude of INT64_MIN does not fit in
     * int64_t, so it is taken as uint64_t. */
    char digits[20];
    size_t start = sizeof digits, n = 0;
    uint64_t magnitude = num < 0 ? (uint64_t)0 - (uint64_t)num : (uint64_t)num;
    do {
        digits[--start] = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude != 0);
    if (num < 0)
        id->str[n++] = '-';
    memcpy(id->str + n, digits + start, sizeof digits - start);
    n += sizeof digits - start;
    id->str[n] = '\0';
    id->len = (uint8_t)n;
}

void agg_id_set_string(struct agg_id *id, const char *s, size_t len)
{
    memset(id, 0, sizeof *id);
    memcpy(id->str, s, len);
    id->len = (uint8_t)len;
}

enum agg_reject agg_id_check_string(const char *s, size_t len)
{
    if (len > AGG_MAX_ID_BYTES)
        return AGG_REJECT_TOO_LONG;
    if (len == 0)
        return AGG_REJECT_BAD_ID;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return AGG_REJECT_BAD_ID;
    }
    return AGG_REJECT_NONE;
}

/* Strict JSON integer: optional '-', no leading zeros, within int64. */
int agg_parse_int64(const char *text, size_t len, int64_t *out)
{
    size_t i = 0;
    bool negative = len > 0 && text[0] == '-';
    uint64_t limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    uint64_t v = 0;

    if (negative)
        i++;
    if (i == len || (text[i] == '0' && len - i > 1))
        return -1;
    for (; i < len; i++) {
        if (text[i] < '0' || text[i] > '9')
            return -1;
        unsigned digit = (unsigned)(text[i] - '0');
        if (v > (limit - digit) / 10)
            return -1;
        v = v * 10 + digit;
    }
    *out = negative ? (int64_t)(0 - v) : (int64_t)v;
    return 0;
}

int agg_id_from_json(const char *text, size_t len, struct agg_id *id)
{
    int64_t num;

    if (len == 0)
        return -1;
    if (text[0] != '"') {
        if (agg_parse_int64(text, len, &num) != 0)
            return -1;
        agg_id_set_num(id, num);
        return 0;
    }

    /* Strings may hold escapes, so let the strict parser decode them. */
    struct sjson_doc *doc = NULL;
    if (sjson_parse(text, len, NULL, &doc, NULL) != 0)
        return -1;
    const struct sjson_value *v = sjson_doc_root(doc);
    int rc = -1;
    if (v->type == SJSON_STRING && agg_id_from_value(v, id) == AGG_REJECT_NONE)
        rc = 0;
    sjson_doc_free(doc);
    return rc;
}

enum agg_reject agg_id_from_value(const struct sjson_value *v,
                                  struct agg_id *id)
{
    if (v->type == SJSON_STRING) {
        enum agg_reject why = agg_id_check_string(v->str, v->len);
        if (why == AGG_REJECT_NONE)
            agg_id_set_string(id, v->str, v->len);
        return why;
    }
    if (v->type != SJSON_NUMBER)
        return AGG_REJECT_WRONG_TYPE;
    if (strpbrk(v->str, ".eE") != NULL)
        return AGG_REJECT_WRONG_TYPE;

    int64_t num;
    if (agg_parse_int64(v->str, v->len, &num) != 0)
        return AGG_REJECT_BAD_NUMBER;
    agg_id_set_num(id, num);
    return AGG_REJECT_NONE;
}

/* FNV-1a over the type and the value. */
uint32_t agg_id_hash(const struct agg_id *id)
{
    uint32_t h = 2166136261u;
    uint8_t bytes[8];
    const uint8_t *p = (const uint8_t *)id->str;
    size_t n = id->len;

    if (id->is_num) {
        for (int i = 0; i < 8; i++)
            bytes[i] = (uint8_t)((uint64_t)id->num >> (8 * i));
        p = bytes;
        n = sizeof bytes;
    }
    h = (h ^ (id->is_num ? 1u : 2u)) * 16777619u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

int64_t id_index_find(const struct id_index *index, const struct agg_id *id,
                      const struct agg_id *(*key_at)(const void *, uint32_t),
                      const void *owner)
{
    if (index->cap == 0)
        return -1;
    uint32_t hash = agg_id_hash(id);
    uint32_t mask = index->cap - 1;
    for (uint32_t b = hash & mask;; b = (b + 1) & mask) {
        uint32_t position = index->positions[b];
        if (position == 0)
            return -1;
        if (index->hashes[b] == hash &&
            agg_id_cmp(key_at(owner, position - 1), id) == 0)
            return position - 1;
    }
}

static void bucket_put(uint32_t *hashes, uint32_t *positions, uint32_t cap,
                       uint32_t hash, uint32_t position)
{
    uint32_t mask = cap - 1;
    uint32_t b = hash & mask;
    while (positions[b] != 0)
        b = (b + 1) & mask;
    hashes[b] = hash;
    positions[b] = position + 1;
}

/* Double the buckets and move every entry; load stays below one half. */
static int index_grow(struct id_index *index)
{
    uint32_t cap = index->cap ? index->cap * 2 : 16;
    uint32_t *hashes = calloc(cap, sizeof *hashes);
    uint32_t *positions = calloc(cap, sizeof *positions);

    if (hashes == NULL || positions == NULL) {
        free(hashes);
        free(positions);
        return -ENOMEM;
    }
    for (uint32_t b = 0; b < index->cap; b++) {
        if (index->positions[b] != 0)
            bucket_put(hashes, positions, cap, index->hashes[b],
                       index->positions[b] - 1);
    }
    free(index->hashes);
    free(index->positions);
    index->hashes = hashes;
    index->positions = positions;
    index->cap = cap;
    return 0;
}

int id_index_add(struct id_index *index, const struct agg_id *id,
                 uint32_t position)
{
    if ((index->count + 1) * 2 > index->cap && index_grow(index) != 0)
        return -ENOMEM;
    bucket_put(index->hashes, index->positions, index->cap, agg_id_hash(id),
               position);
    index->count++;
    return 0;
}

void id_index_free(struct id_index *index)
{
    free(index->hashes);
    free(index->positions);
    memset(index, 0, sizeof *index);
}
