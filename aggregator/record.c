/*
 * Decoding and validation of one telemetry record. The strict parser in
 * common/sjson.c already rejects invalid UTF-8, duplicate keys at any depth,
 * NaN and Infinity, and nesting past the limit. This file maps its errors
 * to reject reasons and checks every field. Each reject detail names the
 * field and quotes the value, with bytes outside printable ASCII written
 * as \xNN.
 */
#include "aggregator/internal.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "common/sjson.h"
#include "common/strbuf.h"

#define RECORD_MAX_DEPTH 32
/* Significant digits and decimal exponents of cadence and resistance:
 * what a double can hold, with room for its shortest round-trip text. */
#define VALUE_MAX_DIGITS   40
#define VALUE_MIN_EXPONENT (-324)
#define VALUE_MAX_EXPONENT 308
/* Latest deviceTimestamp: 9999-12-31T23:59:59.999Z. */
#define DEVICE_TS_MAX INT64_C(253402300799999)
/* Bytes of a value quoted in a detail before it is cut. */
#define DETAIL_VALUE_MAX 48
/* Largest canonical text of cadence or resistance that is examined: far
 * more digits than accepted, so the digit count decides, and a longer
 * text fails for the same reason. */
#define VALUE_TEXT_MAX 1024
/* Largest canonical form of a record. Escapes can make it longer than the
 * input: a two-byte "\n" becomes the six-byte "\u000a". */
#define CANONICAL_MAX (4 * (size_t)AGG_MAX_RECORD_BYTES)

struct agg_decoder {
    struct strbuf value;     /* canonical cadence or resistance */
    struct strbuf canonical; /* canonical form of the record */
    EVP_MD_CTX *sha256;
};

static const char *const reject_names[AGG_REJECT_COUNT] = {
    [AGG_REJECT_NONE] = "none",
    [AGG_REJECT_TOO_LARGE] = "too_large",
    [AGG_REJECT_NOT_JSON] = "not_json",
    [AGG_REJECT_TOO_DEEP] = "too_deep",
    [AGG_REJECT_INVALID_UTF8] = "invalid_utf8",
    [AGG_REJECT_NOT_OBJECT] = "not_object",
    [AGG_REJECT_DUPLICATE_KEY] = "duplicate_key",
    [AGG_REJECT_MISSING_FIELD] = "missing_field",
    [AGG_REJECT_WRONG_TYPE] = "wrong_type",
    [AGG_REJECT_BAD_NUMBER] = "bad_number",
    [AGG_REJECT_BAD_EVENT] = "bad_event",
    [AGG_REJECT_BAD_ID] = "bad_id",
    [AGG_REJECT_TOO_LONG] = "too_long",
    [AGG_REJECT_SECOND_RANGE] = "second_range",
    [AGG_REJECT_VALUE_RANGE] = "value_range",
};

const char *agg_reject_name(enum agg_reject reason)
{
    if ((unsigned)reason >= AGG_REJECT_COUNT)
        return "unknown";
    return reject_names[reason];
}

static int reject(struct agg_reject_info *why, enum agg_reject reason,
                  const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int reject(struct agg_reject_info *why, enum agg_reject reason,
                  const char *fmt, ...)
{
    va_list ap;

    why->reason = reason;
    va_start(ap, fmt);
    vsnprintf(why->detail, sizeof why->detail, fmt, ap);
    va_end(ap);
    return -1;
}

/* Quote bytes for a detail: printable ASCII as is, others as \xNN, cut
 * after DETAIL_VALUE_MAX bytes with "...". */
static const char *quote(char *out, size_t out_len, const char *s, size_t n)
{
    size_t o = 0;

    out[o++] = '"';
    for (size_t i = 0; i < n && o + 8 < out_len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i == DETAIL_VALUE_MAX) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, out_len - o, "\\x%02X", c);
    }
    out[o++] = '"';
    out[o] = '\0';
    return out;
}

static const char *type_name(enum sjson_type type)
{
    switch (type) {
    case SJSON_NULL:
        return "null";
    case SJSON_FALSE:
    case SJSON_TRUE:
        return "a boolean";
    case SJSON_NUMBER:
        return "a number";
    case SJSON_STRING:
        return "a string";
    case SJSON_ARRAY:
        return "an array";
    case SJSON_OBJECT:
        return "an object";
    }
    return "unknown";
}

/* Whether the parser stopped at NaN or Infinity, which are numbers that
 * JSON cannot carry rather than random syntax errors. */
static bool at_non_finite(const uint8_t *data, size_t len, size_t offset)
{
    static const char *const words[] = {"NaN", "Infinity", "-Infinity"};

    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        size_t n = strlen(words[i]);
        if (offset <= len && len - offset >= n &&
            memcmp(data + offset, words[i], n) == 0)
            return true;
    }
    return false;
}

/* Map a parser failure to a reject reason. Returns -1, or -ENOMEM. */
static int reject_parse(const uint8_t *data, size_t len, int code,
                        const struct sjson_err *err,
                        struct agg_reject_info *why)
{
    switch (code) {
    case SJSON_ERR_DEPTH:
        return reject(why, AGG_REJECT_TOO_DEEP,
                      "record nests deeper than %d levels at byte %zu",
                      RECORD_MAX_DEPTH, err->offset);
    case SJSON_ERR_DUPLICATE_KEY:
        return reject(why, AGG_REJECT_DUPLICATE_KEY, "%s at byte %zu",
                      err->message, err->offset);
    case SJSON_ERR_UTF8:
        return reject(why, AGG_REJECT_INVALID_UTF8, "%s at byte %zu",
                      err->message, err->offset);
    case SJSON_ERR_TOO_LARGE:
        return reject(why, AGG_REJECT_TOO_LARGE, "%s", err->message);
    case SJSON_ERR_NOMEM:
        why->reason = AGG_REJECT_NONE;
        snprintf(why->detail, sizeof why->detail, "out of memory");
        return -ENOMEM;
    default:
        break;
    }
    if (at_non_finite(data, len, err->offset))
        return reject(why, AGG_REJECT_BAD_NUMBER,
                      "number at byte %zu is not finite", err->offset);
    return reject(why, AGG_REJECT_NOT_JSON, "%s at byte %zu", err->message,
                  err->offset);
}

/* The members of a record that decode_fields reads, each NULL when
 * missing. */
struct record_members {
    const struct sjson_value *uuid, *event, *device_ts, *second, *race, *name,
        *racer, *class_id, *cadence, *resistance;
};

/* Find the members of root in one pass, rather than one search for each.
 * The parser has rejected duplicate keys, so each name matches at most
 * one member. */
static void find_members(const struct sjson_value *root,
                         struct record_members *m)
{
    memset(m, 0, sizeof *m);
    for (size_t i = 0; i < root->count; i++) {
        const struct sjson_value *v = &root->items[i];
        const char *k = v->key;
        switch (v->key_len) {
        case 4:
            if (memcmp(k, "uuid", 4) == 0)
                m->uuid = v;
            else if (memcmp(k, "name", 4) == 0)
                m->name = v;
            break;
        case 5:
            if (memcmp(k, "event", 5) == 0)
                m->event = v;
            break;
        case 6:
            if (memcmp(k, "second", 6) == 0)
                m->second = v;
            else if (memcmp(k, "raceId", 6) == 0)
                m->race = v;
            break;
        case 7:
            if (memcmp(k, "racerId", 7) == 0)
                m->racer = v;
            else if (memcmp(k, "classId", 7) == 0)
                m->class_id = v;
            else if (memcmp(k, "cadence", 7) == 0)
                m->cadence = v;
            break;
        case 10:
            if (memcmp(k, "resistance", 10) == 0)
                m->resistance = v;
            break;
        case 15:
            if (memcmp(k, "deviceTimestamp", 15) == 0)
                m->device_ts = v;
            break;
        default:
            break;
        }
    }
}

/* The member v named key, or a MISSING_FIELD / WRONG_TYPE reject and
 * NULL. */
static const struct sjson_value *field(const struct sjson_value *v,
                                       const char *key, enum sjson_type type,
                                       struct agg_reject_info *why)
{
    if (v == NULL) {
        reject(why, AGG_REJECT_MISSING_FIELD, "missing field \"%s\"", key);
        return NULL;
    }
    if (v->type != type) {
        reject(why, AGG_REJECT_WRONG_TYPE, "%s is %s, expected %s", key,
               type_name(v->type), type_name(type));
        return NULL;
    }
    return v;
}

/* Read an integer field. A value outside [min, max] is rejected with
 * out_reason. */
static int int_field(const struct sjson_value *member, const char *key,
                     int64_t min, int64_t max, enum agg_reject out_reason,
                     int64_t *out, struct agg_reject_info *why)
{
    const struct sjson_value *v = field(member, key, SJSON_NUMBER, why);
    char q[DETAIL_VALUE_MAX + 16];

    if (v == NULL)
        return -1;
    if (strpbrk(v->str, ".eE") != NULL)
        return reject(why, AGG_REJECT_WRONG_TYPE, "%s %s is not an integer",
                      key, quote(q, sizeof q, v->str, v->len));
    if (agg_parse_int64(v->str, v->len, out) != 0)
        return reject(why, AGG_REJECT_BAD_NUMBER,
                      "%s %s is outside the 64-bit integer range", key,
                      quote(q, sizeof q, v->str, v->len));
    if (*out < min || *out > max)
        return reject(why, out_reason,
                      "%s %" PRId64 " is outside %" PRId64 "..%" PRId64, key,
                      *out, min, max);
    return 0;
}

static int string_field(const struct sjson_value *member, const char *key,
                        bool is_id, char *out, uint8_t *out_len,
                        struct agg_reject_info *why)
{
    const struct sjson_value *v = field(member, key, SJSON_STRING, why);
    char q[DETAIL_VALUE_MAX + 16];

    if (v == NULL)
        return -1;
    if (v->len > AGG_MAX_ID_BYTES)
        return reject(why, AGG_REJECT_TOO_LONG,
                      "%s is %zu bytes, over the limit of %d", key, v->len,
                      AGG_MAX_ID_BYTES);
    if (is_id && agg_id_check_string(v->str, v->len) != AGG_REJECT_NONE)
        return reject(why, AGG_REJECT_BAD_ID,
                      "%s %s is empty or contains a control character", key,
                      quote(q, sizeof q, v->str, v->len));
    memcpy(out, v->str, v->len);
    out[v->len] = '\0';
    *out_len = (uint8_t)v->len;
    return 0;
}

static int id_field(const struct sjson_value *v, const char *key,
                    struct agg_id *id, struct agg_reject_info *why)
{
    char q[DETAIL_VALUE_MAX + 16];

    if (v == NULL)
        return reject(why, AGG_REJECT_MISSING_FIELD, "missing field \"%s\"",
                      key);
    enum agg_reject reason = agg_id_from_value(v, id);
    if (reason == AGG_REJECT_NONE)
        return 0;
    if (v->type == SJSON_STRING || v->type == SJSON_NUMBER)
        quote(q, sizeof q, v->str, v->len);
    switch (reason) {
    case AGG_REJECT_WRONG_TYPE:
        if (v->type == SJSON_NUMBER)
            return reject(why, reason, "%s %s is not an integer", key, q);
        return reject(why, reason, "%s is %s, expected an integer or a string",
                      key, type_name(v->type));
    case AGG_REJECT_BAD_NUMBER:
        return reject(why, reason, "%s %s is outside the 64-bit integer range",
                      key, q);
    case AGG_REJECT_TOO_LONG:
        return reject(why, reason, "%s is %zu bytes, over the limit of %d", key,
                      v->len, AGG_MAX_ID_BYTES);
    default:
        return reject(why, reason,
                      "%s %s is empty or contains a control character", key, q);
    }
}

/* The upper limit of cadence or resistance as a decoded value. */
struct value_limit {
    int max;
    char text[AGG_MAX_EXACT_TEXT]; /* dec.digits points into it */
    struct fixed_dec dec;
};

/* Both limits are decoded once, not for every record. */
static pthread_once_t limits_once = PTHREAD_ONCE_INIT;
static struct value_limit cadence_limit, resistance_limit;

static void make_limit(int max, struct value_limit *limit)
{
    limit->max = max;
    fixed_format4((int64_t)max * 10000, limit->text, sizeof limit->text);
    fixed_parse(limit->text, &limit->dec);
}

static void make_limits(void)
{
    make_limit(AGG_MAX_CADENCE, &cadence_limit);
    make_limit(AGG_MAX_RESISTANCE, &resistance_limit);
}

/*
 * Check the canonical text of cadence or resistance v: at most
 * VALUE_MAX_DIGITS significant digits, a leading digit within the range of
 * a double, then 0 <= value <= limit. Rejects quote the value as written.
 */
static int check_value(const char *key, const char *text,
                       const struct sjson_value *v,
                       const struct value_limit *limit,
                       struct agg_reject_info *why)
{
    bool negative = text[0] == '-';
    const char *digits = text + negative;
    int ndigits = (int)strcspn(digits, "e");
    int max = limit->max;
    struct fixed_dec value;
    char q[DETAIL_VALUE_MAX + 16];

    if (ndigits > VALUE_MAX_DIGITS)
        return reject(why, AGG_REJECT_BAD_NUMBER,
                      "%s %s has %d significant digits, more than %d", key,
                      quote(q, sizeof q, v->str, v->len), ndigits,
                      VALUE_MAX_DIGITS);
    if (fixed_parse(digits, &value) != 0 ||
        fixed_adjusted_exponent(&value) < VALUE_MIN_EXPONENT ||
        fixed_adjusted_exponent(&value) > VALUE_MAX_EXPONENT)
        return reject(why, AGG_REJECT_BAD_NUMBER,
                      "%s %s has an exponent outside %d..%d", key,
                      quote(q, sizeof q, v->str, v->len), VALUE_MIN_EXPONENT,
                      VALUE_MAX_EXPONENT);

    if ((negative && value.ndigits > 0) || fixed_cmp(&value, &limit->dec) > 0)
        return reject(why, AGG_REJECT_VALUE_RANGE, "%s %s is outside 0..%d",
                      key, quote(q, sizeof q, v->str, v->len), max);
    return 0;
}

/* Read cadence or resistance as a canonical exact text into out, by way
 * of dec->value. */
static int value_field(struct agg_decoder *dec,
                       const struct sjson_value *member, const char *key,
                       const struct value_limit *limit, char *out,
                       struct agg_reject_info *why)
{
    const struct sjson_value *v = field(member, key, SJSON_NUMBER, why);
    char q[DETAIL_VALUE_MAX + 16];
    struct strbuf *sb = &dec->value;

    if (v == NULL)
        return -1;

    sb_reset(sb);
    if (sjson_number_canonical(v->str, v->len, sb) != 0)
        return reject(why, AGG_REJECT_BAD_NUMBER,
                      "%s %s has too many digits or too large an exponent", key,
                      quote(q, sizeof q, v->str, v->len));
    int rc = check_value(key, sb->data, v, limit, why);
    if (rc == 0 && sb->len >= AGG_MAX_EXACT_TEXT)
        rc = reject(why, AGG_REJECT_BAD_NUMBER, "%s %s is too long", key,
                    quote(q, sizeof q, v->str, v->len));
    if (rc == 0)
        memcpy(out, sb->data, sb->len + 1);
    return rc;
}

static int event_field(const struct sjson_value *member, bool *final,
                       struct agg_reject_info *why)
{
    const struct sjson_value *v = field(member, "event", SJSON_STRING, why);
    char q[DETAIL_VALUE_MAX + 16];

    if (v == NULL)
        return -1;
    if (v->len == 6 && memcmp(v->str, "update", 6) == 0) {
        *final = false;
        return 0;
    }
    if (v->len == 5 && memcmp(v->str, "final", 5) == 0) {
        *final = true;
        return 0;
    }
    return reject(why, AGG_REJECT_BAD_EVENT,
                  "event %s is not \"update\" or \"final\"",
                  quote(q, sizeof q, v->str, v->len));
}

/* Read and check every field, in a fixed order so that a record with
 * several problems always reports the same one. */
static int decode_fields(struct agg_decoder *dec,
                         const struct sjson_value *root, int32_t max_seconds,
                         struct agg_record *rec, struct agg_reject_info *why)
{
    struct record_members m;
    int64_t second;

    pthread_once(&limits_once, make_limits);
    find_members(root, &m);
    if (string_field(m.uuid, "uuid", true, rec->uuid, &rec->uuid_len, why) ||
        event_field(m.event, &rec->final, why) ||
        int_field(m.device_ts, "deviceTimestamp", 0, DEVICE_TS_MAX,
                  AGG_REJECT_BAD_NUMBER, &rec->device_ts_ms, why) ||
        int_field(m.second, "second", 1, max_seconds, AGG_REJECT_SECOND_RANGE,
                  &second, why) ||
        id_field(m.race, "raceId", &rec->race, why) ||
        string_field(m.name, "name", false, rec->name, &rec->name_len, why) ||
        id_field(m.racer, "racerId", &rec->racer, why) ||
        id_field(m.class_id, "classId", &rec->class_id, why) ||
        value_field(dec, m.cadence, "cadence", &cadence_limit,
                    rec->cadence_exact, why) ||
        value_field(dec, m.resistance, "resistance", &resistance_limit,
                    rec->resistance_exact, why))
        return -1;
    rec->second = (int32_t)second;
    return 0;
}

/* SHA-256 fetched once. With EVP_sha256(), OpenSSL 3 fetches the
 * algorithm from its providers again on every digest. */
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
static EVP_MD *sha256_md;

static void fetch_sha256(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

/* The fetched SHA-256, or EVP_sha256() when the fetch failed. */
static const EVP_MD *record_sha256(void)
{
    pthread_once(&sha256_once, fetch_sha256);
    return sha256_md != NULL ? sha256_md : EVP_sha256();
}

struct agg_decoder *agg_decoder_new(void)
{
    struct agg_decoder *dec = calloc(1, sizeof *dec);

    if (dec == NULL)
        return NULL;
    sb_init(&dec->value, VALUE_TEXT_MAX);
    sb_init(&dec->canonical, CANONICAL_MAX);
    dec->sha256 = EVP_MD_CTX_new();
    if (dec->sha256 == NULL) {
        free(dec);
        return NULL;
    }
    return dec;
}

void agg_decoder_free(struct agg_decoder *dec)
{
    if (dec == NULL)
        return;
    sb_free(&dec->value);
    sb_free(&dec->canonical);
    EVP_MD_CTX_free(dec->sha256);
    free(dec);
}

/* Hash bytes with SHA-256 into out, reusing the context of dec. Returns 0
 * or -1.
 * NOTE: OpenSSL 3.0.22 still allocates and frees the digest state in each
 * EVP_DigestInit_ex (counted with callgrind), so one allocation per record
 * remains here. */
static int hash_bytes(struct agg_decoder *dec, const char *bytes, size_t len,
                      uint8_t out[32])
{
    if (EVP_DigestInit_ex(dec->sha256, record_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(dec->sha256, bytes, len) != 1 ||
        EVP_DigestFinal_ex(dec->sha256, out, NULL) != 1)
        return -1;
    return 0;
}

/* Derive the 4-decimal values, the output and the hash. Returns 0, -1
 * for a value that cannot be scored, or -ENOMEM. */
static int derive(struct agg_decoder *dec, const struct sjson_value *root,
                  struct agg_record *rec, struct agg_reject_info *why)
{
    bool exact;

    if (fixed_round4(rec->cadence_exact, &rec->cadence4, &exact) != 0 ||
        fixed_round4(rec->resistance_exact, &rec->resistance4, &exact) != 0 ||
        agg_output4(rec->cadence_exact, rec->resistance_exact, &rec->output4) !=
            0)
        return reject(why, AGG_REJECT_BAD_NUMBER,
                      "cadence %s or resistance %s cannot be scored",
                      rec->cadence_exact, rec->resistance_exact);

    sb_reset(&dec->canonical);
    if (sjson_canonical(root, &dec->canonical) != 0 ||
        hash_bytes(dec, dec->canonical.data, dec->canonical.len, rec->hash) !=
            0) {
        why->reason = AGG_REJECT_NONE;
        snprintf(why->detail, sizeof why->detail,
                 "hashing the record failed: out of memory");
        return -ENOMEM;
    }
    return 0;
}

int agg_record_decode(struct agg_decoder *dec, const uint8_t *data, size_t len,
                      int32_t max_seconds, struct agg_record *rec,
                      struct agg_reject_info *why, struct sjson_doc **doc)
{
    struct sjson_limits limits = {AGG_MAX_RECORD_BYTES, RECORD_MAX_DEPTH};
    struct sjson_err err;

    memset(rec, 0, sizeof *rec);
    why->reason = AGG_REJECT_NONE;
    why->detail[0] = '\0';
    if (len > AGG_MAX_RECORD_BYTES)
        return reject(why, AGG_REJECT_TOO_LARGE,
                      "record is %zu bytes, over the limit of %d", len,
                      AGG_MAX_RECORD_BYTES);
    int code = sjson_parse_reuse((const char *)data, len, &limits, doc, &err);
    if (code != 0)
        return reject_parse(data, len, code, &err, why);

    const struct sjson_value *root = sjson_doc_root(*doc);
    int rc;
    if (root->type != SJSON_OBJECT)
        rc = reject(why, AGG_REJECT_NOT_OBJECT,
                    "record is %s, expected an object", type_name(root->type));
    else
        rc = decode_fields(dec, root, max_seconds, rec, why);
    if (rc == 0)
        rc = derive(dec, root, rec, why);
    return rc;
}

int agg_record_parse(const uint8_t *data, size_t len, int32_t max_seconds,
                     struct agg_record *rec, struct agg_reject_info *why)
{
    struct agg_decoder *dec = agg_decoder_new();
    struct sjson_doc *doc = NULL;

    if (dec == NULL) {
        memset(rec, 0, sizeof *rec);
        why->reason = AGG_REJECT_NONE;
        snprintf(why->detail, sizeof why->detail, "out of memory");
        return -ENOMEM;
    }
    int rc = agg_record_decode(dec, data, len, max_seconds, rec, why, &doc);
    sjson_doc_free(doc);
    agg_decoder_free(dec);
    return rc;
}
