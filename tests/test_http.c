/*
 * Tests of the SigV4 signer, the libuv-driven HTTP client and the AWS call
 * layer. The signatures expected below were computed with botocore from the
 * AWS documentation's example keys. Network tests talk only to a server that
 * the test runs itself on 127.0.0.1.
 */
#include "tests/testlib.h"

#include <errno.h>
#include <stdbool.h>

#include "common/aws.h"
#include "common/httpc.h"
#include "common/sigv4.h"
#include "common/strbuf.h"

#define EXAMPLE_KEY_ID "AKIDEXAMPLE"
#define EXAMPLE_SECRET "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
#define EXAMPLE_TIME   1767225600 /* 20260101T000000Z */
#define IOT_HOST       "example-ats.iot.eu-west-1.amazonaws.com"
#define IOT_BODY       "{\"raceId\":\"R-7\",\"classId\":\"B\",\"second\":42}"
#define KINESIS_BODY                                                           \
    "{\"ShardIterator\": \"AAAAexampleIterator\", \"Limit\": 1000}"

/* Build credentials from string literals, so never clear them. */
static struct aws_credentials example_creds(const char *token)
{
    struct aws_credentials creds = {
        .access_key_id = (char *)EXAMPLE_KEY_ID,
        .secret_access_key = (char *)EXAMPLE_SECRET,
        .session_token = (char *)token,
    };
    return creds;
}

/* Canonical URI of wire_path, as a string owned by the caller. */
static char *canonical_uri_of(const char *wire_path)
{
    struct strbuf sb;

    sb_init(&sb, 4096);
    ASSERT_EQ(sigv4_canonical_uri(&sb, wire_path), 0);
    return sb_take(&sb, NULL);
}

/* Sign the IoT Publish request of the golden vectors. */
static void sign_iot_publish(const char *token, struct sigv4_output *out)
{
    struct aws_credentials creds = example_creds(token);
    char *uri = canonical_uri_of("/topics/leaderboards%2FR-7%2FB");
    struct sigv4_input in = {
        .method = "POST",
        .host = IOT_HOST,
        .canonical_uri = uri,
        .canonical_query = "qos=1",
        .payload = IOT_BODY,
        .payload_len = strlen(IOT_BODY),
        .region = "eu-west-1",
        .service = "iotdata",
        .unix_time = EXAMPLE_TIME,
    };

    ASSERT_STR_EQ(uri, "/topics/leaderboards%252FR-7%252FB");
    ASSERT_EQ(sigv4_sign(&in, &creds, out), 0);
    free(uri);
}

TEST(sigv4_iot_token)
{
    struct sigv4_output out;

    sign_iot_publish("EXAMPLETOKEN", &out);
    ASSERT_STR_EQ(out.amz_date, "20260101T000000Z");
    ASSERT_STR_EQ(out.payload_hash, "60151426d8d00a02988fbb54f8e6a7ae1a02fbb0"
                                    "126ba4ff79ef6f52229fd0b5");
    ASSERT_STR_EQ(out.signed_headers, "host;x-amz-date;x-amz-security-token");
    ASSERT_STR_EQ(out.signature, "3355bb93fb9f9692282ccd8d5a098edc052dc065"
                                 "22c0dfdb085544fae833cec3");
    ASSERT_STR_EQ(out.authorization,
                  "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/"
                  "eu-west-1/iotdata/aws4_request, SignedHeaders=host;"
                  "x-amz-date;x-amz-security-token, Signature=3355bb93fb9f96"
                  "92282ccd8d5a098edc052dc06522c0dfdb085544fae833cec3");
}

TEST(sigv4_iot_no_token)
{
    static const char *const tokens[] = {NULL, ""};

    for (size_t i = 0; i < 2; i++) {
        struct sigv4_output out;
        sign_iot_publish(tokens[i], &out);
        ASSERT_STR_EQ(out.signed_headers, "host;x-amz-date");
        ASSERT_STR_EQ(out.signature, "cd8ca9dcdfe2f4a72d16b5c8668c2d28295c2438"
                                     "b32077ed4298992e397adc46");
    }
}

TEST(sigv4_kinesis_get_records)
{
    struct aws_credentials creds = example_creds("EXAMPLETOKEN");
    /* Mixed-case names and padded values test canonicalisation too. */
    struct sigv4_header headers[] = {
        {"X-Amz-Target", "  Kinesis_20131202.GetRecords "},
        {"Content-Type", "application/x-amz-json-1.1"},
    };
    char *uri = canonical_uri_of("/");
    struct sigv4_input in = {
        .method = "POST",
        .host = "kinesis.eu-west-1.amazonaws.com",
        .canonical_uri = uri,
        .canonical_query = "",
        .headers = headers,
        .header_count = 2,
        .payload = KINESIS_BODY,
        .payload_len = strlen(KINESIS_BODY),
        .region = "eu-west-1",
        .service = "kinesis",
        .unix_time = EXAMPLE_TIME,
    };
    struct sigv4_output out;

    ASSERT_STR_EQ(uri, "/");
    ASSERT_EQ(sigv4_sign(&in, &creds, &out), 0);
    ASSERT_STR_EQ(out.signed_headers,
                  "content-type;host;x-amz-date;x-amz-security-token;"
                  "x-amz-target");
    ASSERT_STR_EQ(out.signature, "42d8b22fb33ca8ea653586ccae30c168bea8199e"
                                 "dae7129d1fb71b47a224acea");
    free(uri);
}

TEST(sigv4_canonical_uri_topics)
{
    static const char *const cases[][2] = {
        {"/topics/leaderboards%2FR%207%2FB%2B",
         "/topics/leaderboards%252FR%25207%252FB%252B"},
        {"/topics/leaderboards%2FR-7%2FB%3D1~x",
         "/topics/leaderboards%252FR-7%252FB%253D1~x"},
        {"", "/"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *uri = canonical_uri_of(cases[i][0]);
        ASSERT_STR_EQ(uri, cases[i][1]);
        free(uri);
    }
}

/* Encode s with sigv4_uri_encode(); returns an owned string. */
static char *encode(const char *s, bool encode_slash)
{
    struct strbuf sb;

    sb_init(&sb, 4096);
    ASSERT_EQ(sigv4_uri_encode(&sb, s, strlen(s), encode_slash), 0);
    return sb_take(&sb, NULL);
}

TEST(sigv4_uri_encode_rules)
{
    static const char *const cases[][3] = {
        /* input, encode_slash false, encode_slash true */
        {"R 7", "R%207", "R%207"},
        {"B+", "B%2B", "B%2B"},
        {"B=1", "B%3D1", "B%3D1"},
        {"a/b", "a/b", "a%2Fb"},
        {"AZaz09-_.~", "AZaz09-_.~", "AZaz09-_.~"},
        {"%\xc3\xa9*", "%25%C3%A9%2A", "%25%C3%A9%2A"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *kept = encode(cases[i][0], false);
        char *encoded = encode(cases[i][0], true);
        ASSERT_STR_EQ(kept, cases[i][1]);
        ASSERT_STR_EQ(encoded, cases[i][2]);
        free(kept);
        free(encoded);
    }
}

TEST(sigv4_canonical_query_sorts)
{
    static const char *const cases[][2] = {
        {"qos=1", "qos=1"},
        {"b=2&a=1&a=0", "a=0&a=1&b=2"},
        {"x=a%2fb&flag", "flag=&x=a%2Fb"},
        {"v=a+b c", "v=a%2Bb%20c"},
        {"", ""},
    };
    struct strbuf sb;

    sb_init(&sb, 4096);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sb_reset(&sb);
        ASSERT_EQ(sigv4_canonical_query(&sb, cases[i][0]), 0);
        ASSERT_STR_EQ(sb.data != NULL ? sb.data : "", cases[i][1]);
    }
    sb_reset(&sb);
    ASSERT_EQ(sigv4_canonical_query(&sb, "a=%4"), -EINVAL);
    sb_free(&sb);
}

TEST(sigv4_rejects_bad_input)
{
    struct aws_credentials creds = example_creds(NULL);
    struct sigv4_header dup[] = {{"host", "other"}};
    struct sigv4_header newline[] = {{"x-a", "v\r\nx-b: w"}};
    struct sigv4_input in = {
        .method = "POST",
        .host = IOT_HOST,
        .canonical_uri = "/",
        .canonical_query = "",
        .region = "eu-west-1",
        .service = "iotdata",
        .unix_time = EXAMPLE_TIME,
    };
    struct sigv4_output out;

    in.headers = dup;
    in.header_count = 1;
    ASSERT_EQ(sigv4_sign(&in, &creds, &out), -EINVAL);
    in.headers = newline;
    ASSERT_EQ(sigv4_sign(&in, &creds, &out), -EINVAL);
    in.header_count = 0;
    creds.secret_access_key = NULL;
    ASSERT_EQ(sigv4_sign(&in, &creds, &out), -EINVAL);
}

TEST(sigv4_credentials_clear)
{
    struct aws_credentials creds = {
        .access_key_id = strdup("AKID"),
        .secret_access_key = strdup("secret"),
        .session_token = strdup("token"),
    };

    aws_credentials_clear(&creds);
    ASSERT_TRUE(creds.access_key_id == NULL);
    ASSERT_TRUE(creds.secret_access_key == NULL);
    ASSERT_TRUE(creds.session_token == NULL);
    aws_credentials_clear(&creds);
}
