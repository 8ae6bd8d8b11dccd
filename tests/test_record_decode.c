/*
 * Tests of agg_record_decode with one decoder and one document reused
 * from record to record, as the pipeline uses them: every result must
 * equal that of agg_record_parse, which starts afresh for each record.
 */
#include "aggregator/aggregator.h"
#include "common/sjson.h"
#include "common/strbuf.h"
#include "tests/testlib.h"

#include <stdio.h>
#include <string.h>

#define VALID(uuid, name, cadence)                                             \
    "{\"uuid\":\"" uuid "\",\"event\":\"update\",\"deviceTimestamp\":"         \
    "1767225601040,\"second\":1,\"raceId\":5890752001,\"name\":\"" name        \
    "\",\"racerId\":100,\"classId\":1,\"cadence\":" cadence                    \
    ",\"resistance\":83}"

/* Valid and rejected records, interleaved, so that the reused document
 * and buffers see each kind after the other. */
static const char *const records[] = {
    VALID("u-1", "Yara", "73.01"),
    VALID("u-2", "A much longer name of forty-four bytes here", "90"),
    "[1,]",
    VALID("u-3", "B", "1.5"),
    "{\"uuid\":\"u-4\"}",
    VALID("u-5", "Short", "12.50"),
    /* Member names of the right length with other bytes. */
    "{\"uuiX\":\"u-6\",\"event\":\"update\",\"deviceTimestamp\":1,"
    "\"second\":1,\"raceId\":1,\"name\":\"A\",\"racerId\":1,"
    "\"classId\":1,\"cadence\":1,\"resistance\":1}",
    VALID("u-7", "C", "\"fast\""),
    "{\"uuid\":\"u-8\",\"event\":\"update\",\"deviceTimestamp\":1,"
    "\"second\":1,\"raceId\":1,\"name\":\"A\",\"racerId\":1,"
    "\"classId\":1,\"cadence\":1,\"resistanc3\":1}",
    "\"not an object\"",
    VALID("u-9", "D\\u0000E", "0.0001"),
    "{\"uuid\":\"u-10\",\"event\":\"update\",\"event\":\"final\"}",
    VALID("u-11", "E", "1e400"),
    VALID("u-12", "F", "-0"),
    VALID("u-13", "G", "199.99999"),
};

/* Decode text with dec and *doc, and with agg_record_parse, and check that
 * both give the same result. Returns that result. */
static int check_same_result(struct agg_decoder *dec, struct sjson_doc **doc,
                             const char *text, size_t len)
{
    struct agg_record reused, fresh;
    struct agg_reject_info reused_why, fresh_why;

    int rc = agg_record_decode(dec, (const uint8_t *)text, len, 3600, &reused,
                               &reused_why, doc);
    int fresh_rc =
        agg_record_parse((const uint8_t *)text, len, 3600, &fresh, &fresh_why);
    ASSERT_EQ(rc, fresh_rc);
    ASSERT_EQ(reused_why.reason, fresh_why.reason);
    ASSERT_STR_EQ(reused_why.detail, fresh_why.detail);
    if (rc == 0) {
        ASSERT_MEM_EQ(&reused, sizeof reused, &fresh, sizeof fresh);
        ASSERT_TRUE(sjson_doc_root(*doc) != NULL);
    }
    return rc;
}

TEST(agg_decoder_reuse_matches_fresh_parse)
{
    struct agg_decoder *dec = agg_decoder_new();
    struct sjson_doc *doc = NULL;
    size_t count = sizeof records / sizeof records[0];

    ASSERT_TRUE(dec != NULL);
    for (size_t round = 0; round < 2; round++) {
        size_t valid = 0;
        for (size_t i = 0; i < count; i++) {
            fprintf(stderr, "record %zu: %s\n", i, records[i]);
            if (check_same_result(dec, &doc, records[i], strlen(records[i])) ==
                0)
                valid++;
        }
        /* u-1, u-2, u-3, u-5, u-9, u-12 and u-13. */
        ASSERT_EQ(valid, 7);
    }
    sjson_doc_free(doc);
    agg_decoder_free(dec);
}

TEST(agg_decoder_recovers_after_long_cadence)
{
    /* A cadence whose canonical text passes the limit of the decoder's
     * number buffer, then a valid record through the same buffer. */
    struct agg_decoder *dec = agg_decoder_new();
    struct sjson_doc *doc = NULL;
    char text[4096];
    char digits[1201];

    ASSERT_TRUE(dec != NULL);
    memset(digits, '7', sizeof digits - 1);
    digits[sizeof digits - 1] = '\0';
    snprintf(text, sizeof text,
             "{\"uuid\":\"u-1\",\"event\":\"update\",\"deviceTimestamp\":1,"
             "\"second\":1,\"raceId\":1,\"name\":\"A\",\"racerId\":1,"
             "\"classId\":1,\"cadence\":%s,\"resistance\":1}",
             digits);
    check_same_result(dec, &doc, text, strlen(text));

    struct agg_record rec;
    struct agg_reject_info why;
    ASSERT_EQ(agg_record_decode(dec, (const uint8_t *)text, strlen(text), 3600,
                                &rec, &why, &doc),
              -1);
    ASSERT_STR_EQ(agg_reject_name(why.reason), "bad_number");
    ASSERT_TRUE(strstr(why.detail, "too many digits") != NULL);

    static const char valid[] = VALID("u-2", "Yara", "73.01");
    check_same_result(dec, &doc, valid, strlen(valid));
    ASSERT_EQ(agg_record_decode(dec, (const uint8_t *)valid, strlen(valid),
                                3600, &rec, &why, &doc),
              0);
    ASSERT_STR_EQ(rec.cadence_exact, "7301e-2");
    sjson_doc_free(doc);
    agg_decoder_free(dec);
}

TEST(agg_decoder_hash_is_sha256_of_canonical_form)
{
    static const char text[] =
        "{\"uuid\":\"u-1\",\"event\":\"update\",\"deviceTimestamp\":1,"
        "\"second\":1,\"raceId\":1,\"name\":\"A\",\"racerId\":1,"
        "\"classId\":1,\"cadence\":1,\"resistance\":1}";
    static const char canonical[] =
        "{\"cadence\":1e0,\"classId\":1e0,\"deviceTimestamp\":1e0,"
        "\"event\":\"update\",\"name\":\"A\",\"raceId\":1e0,\"racerId\":1e0,"
        "\"resistance\":1e0,\"second\":1e0,\"uuid\":\"u-1\"}";
    /* The SHA-256 of canonical, from sha256sum of GNU coreutils 9.1. */
    static const char canonical_sha256[] =
        "8e7927f93c68648b945961ac60c8a895c49a77df25a7567e6a42884720901181";
    struct agg_decoder *dec = agg_decoder_new();
    struct sjson_doc *doc = NULL;
    struct agg_record rec;
    struct agg_reject_info why;
    struct strbuf sb;

    ASSERT_TRUE(dec != NULL);
    sb_init(&sb, 4096);
    /* Twice, so that the second digest reuses the context of the first. */
    for (int i = 0; i < 2; i++) {
        ASSERT_EQ(agg_record_decode(dec, (const uint8_t *)text, sizeof text - 1,
                                    3600, &rec, &why, &doc),
                  0);
        sb_reset(&sb);
        ASSERT_EQ(sjson_canonical(sjson_doc_root(doc), &sb), 0);
        ASSERT_STR_EQ(sb.data, canonical);

        char hex[65];
        for (size_t k = 0; k < 32; k++)
            snprintf(hex + 2 * k, 3, "%02x", rec.hash[k]);
        ASSERT_STR_EQ(hex, canonical_sha256);
    }
    sb_free(&sb);
    sjson_doc_free(doc);
    agg_decoder_free(dec);
}
