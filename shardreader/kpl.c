/*
 * KPL deaggregation with a small bounded protobuf decoder. The messages,
 * from messages.proto of the KPL and KCL (proto2):
 *
 *     message AggregatedRecord {
 *         repeated string partition_key_table     = 1;
 *         repeated string explicit_hash_key_table = 2;
 *         repeated Record records                 = 3;
 *     }
 *     message Record {
 *         required uint64 partition_key_index     = 1;
 *         optional uint64 explicit_hash_key_index = 2;
 *         required bytes  data                    = 3;
 *         repeated Tag    tags                    = 4;
 *     }
 *     message Tag { required string key = 1; optional string value = 2; }
 *
 * Data that fails any check is reported as not an aggregate, so the reader
 * passes it on unchanged. Unknown fields are skipped as protobuf requires,
 * but a known field with the wrong wire type is rejected.
 */
#include "shardreader/kpl.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

static const uint8_t kpl_magic[4] = {0xF3, 0x89, 0x9A, 0xC2};
#define KPL_MAGIC_LEN  sizeof kpl_magic
#define KPL_DIGEST_LEN 16

/* A varint is at most 10 bytes for 64 bits (protobuf encoding guide). */
#define PB_MAX_VARINT_BYTES 10

enum pb_wire_type { PB_VARINT = 0, PB_FIXED64 = 1, PB_LEN = 2, PB_FIXED32 = 5 };

/* Unread bytes of one message. */
struct pb_reader {
    const uint8_t *pos;
    const uint8_t *end;
};

/* One decoded field: value for varints, bytes and len for PB_LEN. */
struct pb_field {
    uint32_t number;
    unsigned wire_type;
    uint64_t value;
    const uint8_t *bytes;
    size_t len;
};

/* The fields of one Record that deaggregation uses. */
struct kpl_record_fields {
    bool has_key_index;
    bool has_data;
    bool has_hash_key_index;
    uint64_t key_index;
    uint64_t hash_key_index;
    const uint8_t *data;
    size_t len;
};

/* Counts and the partition key table of one AggregatedRecord. */
struct kpl_tables {
    size_t key_count;
    size_t hash_key_count;
    size_t record_count;
    struct pb_field *keys; /* key_count entries, NULL in the first pass */
};

static bool pb_read_varint(struct pb_reader *r, uint64_t *out)
{
    uint64_t value = 0;

    for (unsigned i = 0; i < PB_MAX_VARINT_BYTES; i++) {
        if (r->pos == r->end)
            return false;
        uint8_t byte = *r->pos++;
        /* The tenth byte can carry only bit 63, so a larger byte overflows
         * 64 bits or announces an eleventh byte. */
        if (i == PB_MAX_VARINT_BYTES - 1 && byte > 1)
            return false;
        value |= (uint64_t)(byte & 0x7F) << (7 * i);
        if ((byte & 0x80) == 0) {
            *out = value;
            return true;
        }
    }
    return false;
}

static bool pb_skip(struct pb_reader *r, size_t n)
{
    if ((size_t)(r->end - r->pos) < n)
        return false;
    r->pos += n;
    return true;
}

/*
 * Read the next field of r into f. Returns false on a truncated field, a
 * field number of 0 or above 2^29 - 1, a length past the end of the
 * message, or a group or undefined wire type.
 */
static bool pb_read_field(struct pb_reader *r, struct pb_field *f)
{
    uint64_t tag, len;

    if (!pb_read_varint(r, &tag) || tag > UINT32_MAX || (tag >> 3) == 0)
        return false;
    f->number = (uint32_t)(tag >> 3);
    f->wire_type = (unsigned)(tag & 7);
    switch (f->wire_type) {
    case PB_VARINT:
        return pb_read_varint(r, &f->value);
    case PB_FIXED64:
        return pb_skip(r, 8);
    case PB_FIXED32:
        return pb_skip(r, 4);
    case PB_LEN:
        if (!pb_read_varint(r, &len) || len > (uint64_t)(r->end - r->pos))
            return false;
        f->bytes = r->pos;
        f->len = (size_t)len;
        r->pos += len;
        return true;
    default:
        return false;
    }
}

static struct pb_reader pb_reader_of(const uint8_t *bytes, size_t len)
{
    struct pb_reader r = {bytes, bytes + len};
    return r;
}

/* Check a Tag message: a key, an optional value, nothing malformed. */
static bool parse_tag(const uint8_t *bytes, size_t len)
{
    struct pb_reader r = pb_reader_of(bytes, len);
    struct pb_field f;
    bool has_key = false;

    while (r.pos < r.end) {
        if (!pb_read_field(&r, &f))
            return false;
        if ((f.number == 1 || f.number == 2) && f.wire_type != PB_LEN)
            return false;
        has_key |= f.number == 1;
    }
    return has_key;
}

/* Read the fields of one Record message. Returns false when malformed. */
static bool parse_record(const uint8_t *bytes, size_t len,
                         struct kpl_record_fields *out)
{
    struct pb_reader r = pb_reader_of(bytes, len);
    struct pb_field f;
    static const unsigned wire_types[] = {0, PB_VARINT, PB_VARINT, PB_LEN,
                                          PB_LEN};

    memset(out, 0, sizeof *out);
    while (r.pos < r.end) {
        if (!pb_read_field(&r, &f))
            return false;
        if (f.number > 4)
            continue; /* unknown field */
        if (f.wire_type != wire_types[f.number])
            return false;
        if (f.number == 1) {
            out->has_key_index = true;
            out->key_index = f.value;
        } else if (f.number == 2) {
            out->has_hash_key_index = true;
            out->hash_key_index = f.value;
        } else if (f.number == 3) {
            out->has_data = true;
            out->data = f.bytes;
            out->len = f.len;
        } else if (!parse_tag(f.bytes, f.len)) {
            return false;
        }
    }
    return out->has_key_index && out->has_data;
}

/* True when a partition key table entry can be a C string and a Kinesis
 * partition key. */
static bool valid_partition_key(const struct pb_field *f)
{
    return f->len <= KPL_MAX_PARTITION_KEY_BYTES &&
           memchr(f->bytes, '\0', f->len) == NULL;
}

/*
 * Walk the AggregatedRecord fields once. Without t->keys, count the table
 * entries and records. With t->keys (sized by a counting pass), store the
 * partition keys and put each record's raw message in records[i].data.
 */
static bool walk_aggregate(const uint8_t *bytes, size_t len,
                           struct kpl_tables *t,
                           struct kpl_user_record *records)
{
    struct pb_reader r = pb_reader_of(bytes, len);
    struct pb_field f;
    size_t keys = 0, hash_keys = 0, count = 0;

    while (r.pos < r.end) {
        if (!pb_read_field(&r, &f))
            return false;
        if (f.number > 3)
            continue; /* unknown field */
        if (f.wire_type != PB_LEN)
            return false;
        if (f.number == 1) {
            if (!valid_partition_key(&f))
                return false;
            if (t->keys != NULL)
                t->keys[keys] = f;
            keys++;
        } else if (f.number == 2) {
            hash_keys++;
        } else {
            if (count == KPL_MAX_USER_RECORDS)
                return false;
            if (records != NULL) {
                records[count].data = f.bytes;
                records[count].len = f.len;
            }
            count++;
        }
    }
    t->key_count = keys;
    t->hash_key_count = hash_keys;
    t->record_count = count;
    return true;
}

/* Replace each raw Record message in records with its user record. */
static bool resolve_records(const struct kpl_tables *t,
                            struct kpl_user_record *records)
{
    struct kpl_record_fields fields;

    for (size_t i = 0; i < t->record_count; i++) {
        struct kpl_user_record *rec = &records[i];
        if (!parse_record(rec->data, rec->len, &fields) ||
            fields.key_index >= t->key_count ||
            (fields.has_hash_key_index &&
             fields.hash_key_index >= t->hash_key_count))
            return false;
        /* The explicit hash key only routed the aggregate to its shard,
         * so the reader has no use for it beyond the range check. */
        const struct pb_field *key = &t->keys[fields.key_index];
        rec->data = fields.data;
        rec->len = fields.len;
        rec->partition_key = (const char *)key->bytes;
        rec->partition_key_len = key->len;
    }
    return true;
}

/* Return 1 when the 16 bytes at digest are the MD5 of bytes, 0 when not,
 * and -1 when MD5 is unavailable (for example, in a FIPS configuration). */
static int digest_matches(const uint8_t *bytes, size_t len,
                          const uint8_t *digest)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;

    if (EVP_Digest(bytes, len, md, &md_len, EVP_md5(), NULL) != 1 ||
        md_len != KPL_DIGEST_LEN)
        return -1;
    return memcmp(md, digest, KPL_DIGEST_LEN) == 0;
}

/* Decode a checked protobuf body into user records. */
static enum kpl_result decode_body(const uint8_t *body, size_t len,
                                   struct kpl_user_record **records,
                                   size_t *count)
{
    struct kpl_tables t = {0};

    /*
     * An aggregate without user records is passed on as an ordinary record,
     * because a producer has no reason to write one. Dropping it would
     * leave no trace, while a dead letter records what arrived.
     */
    if (!walk_aggregate(body, len, &t, NULL) || t.record_count == 0)
        return KPL_NOT_AGGREGATE;

    struct kpl_user_record *out = calloc(t.record_count, sizeof *out);
    t.keys = calloc(t.key_count ? t.key_count : 1, sizeof *t.keys);
    if (out == NULL || t.keys == NULL) {
        free(out);
        free(t.keys);
        return KPL_ERROR;
    }
    bool valid = walk_aggregate(body, len, &t, out) && resolve_records(&t, out);
    free(t.keys);
    if (!valid) {
        free(out);
        return KPL_NOT_AGGREGATE;
    }
    *records = out;
    *count = t.record_count;
    return KPL_AGGREGATE;
}

enum kpl_result kpl_deaggregate(const uint8_t *data, size_t len,
                                struct kpl_user_record **records, size_t *count)
{
    *records = NULL;
    *count = 0;
    if (len < KPL_MAGIC_LEN || memcmp(data, kpl_magic, KPL_MAGIC_LEN) != 0)
        return KPL_NOT_AGGREGATE;
    if (len - KPL_MAGIC_LEN <= KPL_DIGEST_LEN)
        return KPL_NOT_AGGREGATE;

    const uint8_t *body = data + KPL_MAGIC_LEN;
    size_t body_len = len - KPL_MAGIC_LEN - KPL_DIGEST_LEN;
    int match = digest_matches(body, body_len, body + body_len);
    if (match < 0)
        return KPL_ERROR;
    if (match == 0)
        return KPL_NOT_AGGREGATE;
    return decode_body(body, body_len, records, count);
}
