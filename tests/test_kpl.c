/*
 * Tests of KPL deaggregation on aggregates built here with a small
 * protobuf encoder, following aggregation-format.md of
 * awslabs/amazon-kinesis-producer.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "shardreader/kpl.h"
#include "tests/testlib.h"

/* ---- encoder ------------------------------------------------------------- */

/* A growable protobuf message under construction. */
struct pb_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
};

static void put_raw(struct pb_buf *b, const void *bytes, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->data = realloc(b->data, b->cap);
        ASSERT_TRUE(b->data != NULL);
    }
    if (n > 0)
        memcpy(b->data + b->len, bytes, n);
    b->len += n;
}

static void put_varint(struct pb_buf *b, uint64_t v)
{
    do {
        uint8_t byte = (uint8_t)(v & 0x7F);
        v >>= 7;
        if (v != 0)
            byte |= 0x80;
        put_raw(b, &byte, 1);
    } while (v != 0);
}

static void put_tag(struct pb_buf *b, uint32_t field, unsigned wire_type)
{
    put_varint(b, (uint64_t)field << 3 | wire_type);
}

static void put_len_field(struct pb_buf *b, uint32_t field, const void *bytes,
                          size_t n)
{
    put_tag(b, field, 2);
    put_varint(b, n);
    put_raw(b, bytes, n);
}

static void put_string(struct pb_buf *b, uint32_t field, const char *s)
{
    put_len_field(b, field, s, strlen(s));
}

/* Append a Record message (field 3 of AggregatedRecord). A negative
 * hash_index leaves explicit_hash_key_index out. */
static void put_record(struct pb_buf *b, uint64_t key_index, int64_t hash_index,
                       const char *data)
{
    struct pb_buf rec = {0};
    put_tag(&rec, 1, 0);
    put_varint(&rec, key_index);
    if (hash_index >= 0) {
        put_tag(&rec, 2, 0);
        put_varint(&rec, (uint64_t)hash_index);
    }
    put_string(&rec, 3, data);
    put_len_field(b, 3, rec.data, rec.len);
    free(rec.data);
}

/* Frame body as a Kinesis record's Data: magic, body, MD5 of body. */
static struct pb_buf frame(const struct pb_buf *body)
{
    static const uint8_t magic[4] = {0xF3, 0x89, 0x9A, 0xC2};
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    struct pb_buf out = {0};

    ASSERT_EQ(EVP_Digest(body->data, body->len, md, &md_len, EVP_md5(), NULL),
              1);
    ASSERT_EQ(md_len, 16);
    put_raw(&out, magic, sizeof magic);
    put_raw(&out, body->data, body->len);
    put_raw(&out, md, md_len);
    return out;
}

/* The three user records of the common case: keys "car-7" and "car-9". */
static struct pb_buf three_record_body(void)
{
    struct pb_buf body = {0};
    put_string(&body, 1, "car-7");
    put_string(&body, 1, "car-9");
    put_record(&body, 0, -1, "{\"lap\":1}");
    put_record(&body, 1, -1, "{\"lap\":2}");
    put_record(&body, 0, -1, "{\"lap\":3}");
    return body;
}

static enum kpl_result deaggregate(const struct pb_buf *data,
                                   struct kpl_user_record **records,
                                   size_t *count)
{
    return kpl_deaggregate(data->data, data->len, records, count);
}

/* Frame body and expect it to be rejected as an aggregate. */
static void expect_ordinary_body(struct pb_buf *body, int line)
{
    struct pb_buf data = frame(body);
    struct kpl_user_record *records = NULL;
    size_t count = 7;

    if (deaggregate(&data, &records, &count) != KPL_NOT_AGGREGATE)
        test_fail(__FILE__, line, "body was accepted as an aggregate");
    ASSERT_TRUE(records == NULL);
    ASSERT_EQ(count, 0);
    free(data.data);
    free(body->data);
}

static void expect_user_record(const struct kpl_user_record *r, const char *key,
                               const char *data)
{
    ASSERT_MEM_EQ(r->partition_key, r->partition_key_len, key, strlen(key));
    ASSERT_MEM_EQ(r->data, r->len, data, strlen(data));
}

/* ---- valid aggregates -----------------------------------------------------
 */

TEST(kpl_splits_three_user_records)
{
    struct pb_buf body = three_record_body();
    struct pb_buf data = frame(&body);
    struct kpl_user_record *records;
    size_t count;

    ASSERT_EQ(deaggregate(&data, &records, &count), KPL_AGGREGATE);
    ASSERT_EQ(count, 3);
    expect_user_record(&records[0], "car-7", "{\"lap\":1}");
    expect_user_record(&records[1], "car-9", "{\"lap\":2}");
    expect_user_record(&records[2], "car-7", "{\"lap\":3}");
    /* User records point into the Kinesis record's Data. */
    ASSERT_TRUE(records[0].data > data.data);
    ASSERT_TRUE(records[2].data + records[2].len <= data.data + data.len);
    free(records);
    free(data.data);
    free(body.data);
}

TEST(kpl_accepts_explicit_hash_keys)
{
    struct pb_buf body = {0};
    put_string(&body, 2, "340282366920938463463374607431768211455");
    put_string(&body, 1, "car-1");
    put_string(&body, 2, "0");
    put_record(&body, 0, 1, "a");
    put_record(&body, 0, 0, "b");
    struct pb_buf data = frame(&body);
    struct kpl_user_record *records;
    size_t count;

    ASSERT_EQ(deaggregate(&data, &records, &count), KPL_AGGREGATE);
    ASSERT_EQ(count, 2);
    expect_user_record(&records[0], "car-1", "a");
    expect_user_record(&records[1], "car-1", "b");
    free(records);
    free(data.data);
    free(body.data);
}

TEST(kpl_skips_unknown_fields)
{
    struct pb_buf body = {0}, rec = {0};
    put_tag(&body, 15, 0); /* unknown varint */
    put_varint(&body, 12345);
    put_tag(&body, 16, 1); /* unknown fixed64 */
    put_raw(&body, "12345678", 8);
    put_string(&body, 1, "k");
    put_tag(&rec, 9, 5); /* unknown fixed32 inside Record */
    put_raw(&rec, "1234", 4);
    put_tag(&rec, 1, 0);
    put_varint(&rec, 0);
    put_string(&rec, 3, "payload");
    struct pb_buf tag = {0};
    put_string(&tag, 1, "source");
    put_string(&tag, 2, "test");
    put_len_field(&rec, 4, tag.data, tag.len);
    put_len_field(&body, 3, rec.data, rec.len);
    put_string(&body, 20, "unknown bytes");
    struct pb_buf data = frame(&body);
    struct kpl_user_record *records;
    size_t count;

    ASSERT_EQ(deaggregate(&data, &records, &count), KPL_AGGREGATE);
    ASSERT_EQ(count, 1);
    expect_user_record(&records[0], "k", "payload");
    free(records);
    free(data.data);
    free(tag.data);
    free(rec.data);
    free(body.data);
}

TEST(kpl_accepts_ten_byte_varint)
{
    /* Index 0 padded to ten bytes: the longest valid varint. */
    static const uint8_t padded_zero[10] = {0x80, 0x80, 0x80, 0x80, 0x80,
                                            0x80, 0x80, 0x80, 0x80, 0x00};
    struct pb_buf body = {0}, rec = {0};
    put_string(&body, 1, "k");
    put_tag(&rec, 1, 0);
    put_raw(&rec, padded_zero, sizeof padded_zero);
    put_string(&rec, 3, "x");
    put_len_field(&body, 3, rec.data, rec.len);
    struct pb_buf data = frame(&body);
    struct kpl_user_record *records;
    size_t count;

    ASSERT_EQ(deaggregate(&data, &records, &count), KPL_AGGREGATE);
    ASSERT_EQ(count, 1);
    expect_user_record(&records[0], "k", "x");
    free(records);
    free(data.data);
    free(rec.data);
    free(body.data);
}

TEST(kpl_accepts_empty_user_data)
{
    struct pb_buf body = {0};
    put_string(&body, 1, "");
    put_record(&body, 0, -1, "");
    struct pb_buf data = frame(&body);
    struct kpl_user_record *records;
    size_t count;

    ASSERT_EQ(deaggregate(&data, &records, &count), KPL_AGGREGATE);
    ASSERT_EQ(count, 1);
    ASSERT_EQ(records[0].len, 0);
    ASSERT_EQ(records[0].partition_key_len, 0);
    free(records);
    free(data.data);
    free(body.data);
}

TEST(kpl_accepts_maximum_record_count)
{
    struct pb_buf body = {0};
    put_string(&body, 1, "k");
    for (int i = 0; i < KPL_MAX_USER_RECORDS; i++)
        put_record(&body, 0, -1, "");
    struct pb_buf data = frame(&body);
    struct kpl_user_record *records;
    size_t count;

    ASSERT_EQ(deaggregate(&data, &records, &count), KPL_AGGREGATE);
    ASSERT_EQ(count, KPL_MAX_USER_RECORDS);
    free(records);
    free(data.data);
    free(body.data);
}

/* ---- data passed on as ordinary records -----------------------------------
 */

TEST(kpl_wrong_md5_is_ordinary)
{
    struct pb_buf body = three_record_body();
    struct pb_buf data = frame(&body);
    struct kpl_user_record *records;
    size_t count;

    data.data[data.len - 1] ^= 0x01;
    uint8_t *copy = malloc(data.len);
    ASSERT_TRUE(copy != NULL);
    memcpy(copy, data.data, data.len);
    ASSERT_EQ(deaggregate(&data, &records, &count), KPL_NOT_AGGREGATE);
    ASSERT_TRUE(records == NULL);
    ASSERT_MEM_EQ(data.data, data.len, copy, data.len);
    free(copy);
    free(data.data);
    free(body.data);
}

TEST(kpl_truncated_protobuf_is_ordinary)
{
    /* Cut the last byte of the protobuf, with a matching MD5. */
    struct pb_buf body = three_record_body();
    body.len--;
    expect_ordinary_body(&body, __LINE__);
}

TEST(kpl_bad_wire_type_is_ordinary)
{
    /* Groups (3 and 4) and the undefined types 6 and 7. */
    static const unsigned bad[] = {3, 4, 6, 7};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct pb_buf body = three_record_body();
        put_tag(&body, 15, bad[i]);
        put_varint(&body, 0);
        expect_ordinary_body(&body, __LINE__);
    }

    /* A known field with the wrong wire type: records as a varint. */
    struct pb_buf body = three_record_body();
    put_tag(&body, 3, 0);
    put_varint(&body, 1);
    expect_ordinary_body(&body, __LINE__);

    /* Record.data as a varint. */
    struct pb_buf rec = {0};
    body = (struct pb_buf){0};
    put_string(&body, 1, "k");
    put_tag(&rec, 1, 0);
    put_varint(&rec, 0);
    put_tag(&rec, 3, 0);
    put_varint(&rec, 5);
    put_len_field(&body, 3, rec.data, rec.len);
    free(rec.data);
    expect_ordinary_body(&body, __LINE__);
}

TEST(kpl_index_out_of_range_is_ordinary)
{
    struct pb_buf body = {0};
    put_string(&body, 1, "k0");
    put_string(&body, 1, "k1");
    put_record(&body, 2, -1, "x");
    expect_ordinary_body(&body, __LINE__);

    /* An explicit hash key index past its table. */
    body = (struct pb_buf){0};
    put_string(&body, 1, "k0");
    put_string(&body, 2, "12345");
    put_record(&body, 0, 1, "x");
    expect_ordinary_body(&body, __LINE__);

    /* No partition key table at all. */
    body = (struct pb_buf){0};
    put_record(&body, 0, -1, "x");
    expect_ordinary_body(&body, __LINE__);

    /* The largest index, which must not wrap when compared. */
    body = (struct pb_buf){0};
    put_string(&body, 1, "k0");
    put_record(&body, UINT64_MAX, -1, "x");
    expect_ordinary_body(&body, __LINE__);
}

TEST(kpl_length_past_end_is_ordinary)
{
    struct pb_buf body = {0};
    put_string(&body, 1, "k");
    put_tag(&body, 3, 2);
    put_varint(&body, 1000); /* the record claims 1,000 bytes */
    put_raw(&body, "\x08\x00\x1a\x01x", 5);
    expect_ordinary_body(&body, __LINE__);

    /* A length near 2^64 must not wrap the bounds check. */
    body = (struct pb_buf){0};
    put_string(&body, 1, "k");
    put_tag(&body, 3, 2);
    put_varint(&body, UINT64_MAX - 2);
    put_raw(&body, "\x08\x00\x1a\x01x", 5);
    expect_ordinary_body(&body, __LINE__);
}

TEST(kpl_eleven_byte_varint_is_ordinary)
{
    static const uint8_t eleven[11] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                                       0x80, 0x80, 0x80, 0x80, 0x00};
    struct pb_buf body = {0}, rec = {0};
    put_string(&body, 1, "k");
    put_tag(&rec, 1, 0);
    put_raw(&rec, eleven, sizeof eleven);
    put_string(&rec, 3, "x");
    put_len_field(&body, 3, rec.data, rec.len);
    free(rec.data);
    expect_ordinary_body(&body, __LINE__);

    /* Ten bytes whose last one sets bits beyond 64. */
    static const uint8_t overflow[10] = {0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                                         0xFF, 0xFF, 0xFF, 0xFF, 0x02};
    body = (struct pb_buf){0};
    rec = (struct pb_buf){0};
    put_string(&body, 1, "k");
    put_tag(&rec, 1, 0);
    put_raw(&rec, overflow, sizeof overflow);
    put_string(&rec, 3, "x");
    put_len_field(&body, 3, rec.data, rec.len);
    free(rec.data);
    expect_ordinary_body(&body, __LINE__);
}

TEST(kpl_missing_required_field_is_ordinary)
{
    struct pb_buf body = {0}, rec = {0};
    put_string(&body, 1, "k");
    put_string(&rec, 3, "no key index");
    put_len_field(&body, 3, rec.data, rec.len);
    free(rec.data);
    expect_ordinary_body(&body, __LINE__);

    body = (struct pb_buf){0};
    rec = (struct pb_buf){0};
    put_string(&body, 1, "k");
    put_tag(&rec, 1, 0);
    put_varint(&rec, 0); /* no data */
    put_len_field(&body, 3, rec.data, rec.len);
    free(rec.data);
    expect_ordinary_body(&body, __LINE__);

    /* A Tag without its required key. */
    struct pb_buf tag = {0};
    body = (struct pb_buf){0};
    rec = (struct pb_buf){0};
    put_string(&body, 1, "k");
    put_string(&tag, 2, "value only");
    put_tag(&rec, 1, 0);
    put_varint(&rec, 0);
    put_string(&rec, 3, "x");
    put_len_field(&rec, 4, tag.data, tag.len);
    put_len_field(&body, 3, rec.data, rec.len);
    free(tag.data);
    free(rec.data);
    expect_ordinary_body(&body, __LINE__);
}

TEST(kpl_field_number_zero_is_ordinary)
{
    struct pb_buf body = three_record_body();
    put_tag(&body, 0, 0);
    put_varint(&body, 1);
    expect_ordinary_body(&body, __LINE__);
}

TEST(kpl_nul_in_partition_key_is_ordinary)
{
    struct pb_buf body = {0};
    put_len_field(&body, 1, "car\0x", 5);
    put_record(&body, 0, -1, "x");
    expect_ordinary_body(&body, __LINE__);
}

TEST(kpl_overlong_partition_key_is_ordinary)
{
    char key[KPL_MAX_PARTITION_KEY_BYTES + 2];
    memset(key, 'k', sizeof key - 1);
    key[sizeof key - 1] = '\0';
    struct pb_buf body = {0};
    put_string(&body, 1, key);
    put_record(&body, 0, -1, "x");
    expect_ordinary_body(&body, __LINE__);
}

TEST(kpl_too_many_records_is_ordinary)
{
    struct pb_buf body = {0};
    put_string(&body, 1, "k");
    for (int i = 0; i <= KPL_MAX_USER_RECORDS; i++)
        put_record(&body, 0, -1, "");
    expect_ordinary_body(&body, __LINE__);
}

/*
 * An aggregate without user records stays one ordinary record, because a
 * producer has no reason to write one. As a dead letter it leaves a trace
 * of what arrived, where dropping it would leave none.
 */
TEST(kpl_empty_aggregate_is_ordinary)
{
    struct pb_buf body = {0};
    put_string(&body, 1, "k");
    expect_ordinary_body(&body, __LINE__);

    /* One unknown field only, so that more than 16 bytes follow the
     * magic. */
    body = (struct pb_buf){0};
    put_string(&body, 20, "");
    expect_ordinary_body(&body, __LINE__);
}

TEST(kpl_short_data_is_ordinary)
{
    static const uint8_t magic[4] = {0xF3, 0x89, 0x9A, 0xC2};
    uint8_t data[4 + 16] = {0};
    struct kpl_user_record *records;
    size_t count;

    memcpy(data, magic, sizeof magic);
    ASSERT_EQ(kpl_deaggregate(data, 0, &records, &count), KPL_NOT_AGGREGATE);
    ASSERT_EQ(kpl_deaggregate(data, 3, &records, &count), KPL_NOT_AGGREGATE);
    ASSERT_EQ(kpl_deaggregate(data, 4, &records, &count), KPL_NOT_AGGREGATE);
    ASSERT_EQ(kpl_deaggregate(data, 4 + 5, &records, &count),
              KPL_NOT_AGGREGATE);
    /* Exactly 16 bytes after the magic: a digest of an empty protobuf. */
    unsigned int md_len = 0;
    ASSERT_EQ(EVP_Digest("", 0, data + 4, &md_len, EVP_md5(), NULL), 1);
    ASSERT_EQ(kpl_deaggregate(data, sizeof data, &records, &count),
              KPL_NOT_AGGREGATE);
    ASSERT_TRUE(records == NULL);
}

TEST(kpl_plain_json_is_ordinary)
{
    static const char json[] = "{\"car\":7,\"lap\":3,\"time_ms\":81234}";
    struct kpl_user_record *records;
    size_t count;

    ASSERT_EQ(
        kpl_deaggregate((const uint8_t *)json, strlen(json), &records, &count),
        KPL_NOT_AGGREGATE);
    ASSERT_TRUE(records == NULL);
    ASSERT_EQ(count, 0);
}
