/* Tests of the common module: JSON, base64 and sequence numbers. */
#include "tests/testlib.h"

#include <time.h>

#include "common/base64.h"
#include "common/sjson.h"
#include "common/seqnum.h"
#include "common/strbuf.h"

static const struct sjson_limits test_limits = {1024 * 1024, 64};

/* Children that check_flat_value compares one by one. A root with more
 * children checks that sjson_parse_flat leaves them out. */
#define FLAT_CHILDREN 8

/* Check that a value from sjson_parse_flat equals one from sjson_parse,
 * leaving out the children. */
static void check_flat_value(const struct sjson_value *flat,
                             const struct sjson_value *full)
{
    ASSERT_EQ(flat->type, full->type);
    ASSERT_EQ(flat->count, full->count);
    ASSERT_EQ(flat->key_len, full->key_len);
    ASSERT_EQ(flat->key == NULL, full->key == NULL);
    if (full->key != NULL)
        ASSERT_MEM_EQ(flat->key, flat->key_len + 1, full->key,
                      full->key_len + 1);
    ASSERT_EQ(flat->str == NULL, full->str == NULL);
    if (full->str != NULL)
        ASSERT_MEM_EQ(flat->str, flat->len + 1, full->str, full->len + 1);
    ASSERT_EQ(flat->len, full->len);
}

/*
 * Check that two values are equal at every level. It keeps its own stack
 * rather than recursing, because some test documents nest 100,000 levels
 * deep.
 */
static void check_same_tree(const struct sjson_value *a,
                            const struct sjson_value *b)
{
    size_t cap = 64, n = 0;
    const struct sjson_value **pairs = malloc(cap * sizeof *pairs);

    ASSERT_TRUE(pairs != NULL);
    pairs[n++] = a;
    pairs[n++] = b;
    while (n > 0) {
        const struct sjson_value *y = pairs[--n];
        const struct sjson_value *x = pairs[--n];
        check_flat_value(x, y);
        ASSERT_EQ(x->items == NULL, y->items == NULL);
        for (size_t i = 0; x->items != NULL && i < x->count; i++) {
            if (n + 2 > cap) {
                cap *= 2;
                pairs = realloc(pairs, cap * sizeof *pairs);
                ASSERT_TRUE(pairs != NULL);
            }
            pairs[n++] = &x->items[i];
            pairs[n++] = &y->items[i];
        }
    }
    free(pairs);
}

/* The document that parse_all_modes passes to sjson_parse_reuse. It is
 * never freed, so that each call reuses the memory of the calls before,
 * larger and smaller documents and failures alike. */
static struct sjson_doc *reused_doc;

/*
 * Parse with sjson_parse, with sjson_parse_flat and with
 * sjson_parse_reuse on the same input, and check that all give the same
 * result code and error, and the same values. Every sjson_parse call
 * below goes through here (see the #define after it), so each accepted and
 * rejected input of this file tests all three modes.
 */
static int parse_all_modes(const char *text, size_t len,
                           const struct sjson_limits *limits,
                           struct sjson_doc **out, struct sjson_err *err)
{
    struct sjson_err full_err, flat_err, reuse_err;
    int rc = sjson_parse(text, len, limits, out, &full_err);
    if (err != NULL)
        *err = full_err;

    int reuse_rc =
        sjson_parse_reuse(text, len, limits, &reused_doc, &reuse_err);
    ASSERT_EQ(reuse_rc, rc);
    ASSERT_EQ(reuse_err.code, full_err.code);
    ASSERT_EQ(reuse_err.offset, full_err.offset);
    ASSERT_STR_EQ(reuse_err.message, full_err.message);
    if (rc == SJSON_OK)
        check_same_tree(sjson_doc_root(reused_doc), sjson_doc_root(*out));
    else
        ASSERT_TRUE(sjson_doc_root(reused_doc) == NULL);

    char *strings = malloc(len + 1);
    ASSERT_TRUE(strings != NULL);
    struct sjson_value children[FLAT_CHILDREN], root;
    int flat_rc = sjson_parse_flat(text, len, limits, strings, children,
                                   FLAT_CHILDREN, &root, &flat_err);
    ASSERT_EQ(flat_rc, rc);
    ASSERT_EQ(flat_err.code, full_err.code);
    ASSERT_EQ(flat_err.offset, full_err.offset);
    ASSERT_STR_EQ(flat_err.message, full_err.message);
    if (rc == SJSON_OK) {
        const struct sjson_value *full = sjson_doc_root(*out);
        check_flat_value(&root, full);
        if (full->count > FLAT_CHILDREN || full->count == 0) {
            ASSERT_TRUE(root.items == NULL);
        } else {
            ASSERT_TRUE(root.items == children);
            for (size_t i = 0; i < full->count; i++)
                check_flat_value(&children[i], &full->items[i]);
        }
    }
    free(strings);
    return rc;
}

#define sjson_parse parse_all_modes

/* Parse len bytes with limits and return the error code. */
static int parse_code_limits(const char *text, size_t len,
                             const struct sjson_limits *limits)
{
    struct sjson_doc *doc = NULL;
    struct sjson_err err;
    int rc = sjson_parse(text, len, limits, &doc, &err);

    if (rc == SJSON_OK)
        ASSERT_TRUE(doc != NULL);
    else
        ASSERT_TRUE(doc == NULL);
    ASSERT_EQ(err.code, rc);
    sjson_doc_free(doc);
    return rc;
}

static int parse_code(const char *text)
{
    return parse_code_limits(text, strlen(text), &test_limits);
}

/* For literals that contain NUL bytes. */
#define PARSE_BYTES(literal)                                                   \
    parse_code_limits(literal, sizeof(literal) - 1, &test_limits)

/* Parse text, which must be valid, and return the document (owned). */
static struct sjson_doc *parse_ok(const char *text, size_t len)
{
    struct sjson_doc *doc = NULL;
    struct sjson_err err;
    int rc = sjson_parse(text, len, &test_limits, &doc, &err);

    if (rc != SJSON_OK)
        test_fail(__FILE__, __LINE__, "parse of %s failed: %s at %zu: %s", text,
                  sjson_error_name(err.code), err.offset, err.message);
    return doc;
}

/* Return the canonical form of text (owned), which must be valid. */
static char *canonical_of(const char *text)
{
    struct sjson_doc *doc = parse_ok(text, strlen(text));
    struct strbuf sb;

    sb_init(&sb, 1024 * 1024);
    ASSERT_EQ(sjson_canonical(sjson_doc_root(doc), &sb), 0);
    sjson_doc_free(doc);
    return sb_take(&sb, NULL);
}

/* Build a string of n copies of unit followed by tail (owned). */
static char *repeat(const char *unit, size_t n, const char *tail)
{
    size_t unit_len = strlen(unit), tail_len = strlen(tail);
    char *s = malloc(unit_len * n + tail_len + 1);

    ASSERT_TRUE(s != NULL);
    for (size_t i = 0; i < n; i++)
        memcpy(s + i * unit_len, unit, unit_len);
    memcpy(s + unit_len * n, tail, tail_len + 1);
    return s;
}

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

TEST(json_parses_nested_document)
{
    const char *text = " {\"b\": [1, -2.5e3, \"x\", true, false, null],"
                       " \"a\": {}, \"c\": []} ";
    struct sjson_doc *doc = parse_ok(text, strlen(text));
    const struct sjson_value *root = sjson_doc_root(doc);

    ASSERT_EQ(root->type, SJSON_OBJECT);
    ASSERT_EQ(root->count, 3);
    ASSERT_TRUE(root->key == NULL);
    ASSERT_STR_EQ(root->items[0].key, "b");
    ASSERT_STR_EQ(root->items[1].key, "a");
    ASSERT_STR_EQ(root->items[2].key, "c");

    const struct sjson_value *b = &root->items[0];
    ASSERT_EQ(b->type, SJSON_ARRAY);
    ASSERT_EQ(b->count, 6);
    ASSERT_EQ(b->items[0].type, SJSON_NUMBER);
    ASSERT_STR_EQ(b->items[0].str, "1");
    ASSERT_STR_EQ(b->items[1].str, "-2.5e3");
    ASSERT_EQ(b->items[1].len, 6);
    ASSERT_EQ(b->items[2].type, SJSON_STRING);
    ASSERT_STR_EQ(b->items[2].str, "x");
    ASSERT_TRUE(b->items[2].key == NULL);
    ASSERT_EQ(b->items[3].type, SJSON_TRUE);
    ASSERT_EQ(b->items[4].type, SJSON_FALSE);
    ASSERT_EQ(b->items[5].type, SJSON_NULL);

    ASSERT_EQ(root->items[1].type, SJSON_OBJECT);
    ASSERT_EQ(root->items[1].count, 0);
    ASSERT_EQ(root->items[2].type, SJSON_ARRAY);
    ASSERT_EQ(root->items[2].count, 0);
    sjson_doc_free(doc);
}

TEST(json_parses_top_level_scalars)
{
    ASSERT_EQ(parse_code("0"), SJSON_OK);
    ASSERT_EQ(parse_code("\"\""), SJSON_OK);
    ASSERT_EQ(parse_code(" true "), SJSON_OK);
    ASSERT_EQ(parse_code("null"), SJSON_OK);
    ASSERT_EQ(parse_code("-12.5E-3"), SJSON_OK);
}

TEST(json_flat_parse_copies_children_up_to_cap)
{
    const char *text = "{\"a\":\"x\\u0041\",\"b\":[1,2],\"c\":{\"d\":1},"
                       "\"e\":-1.5e3}";
    size_t len = strlen(text);
    char strings[64];
    struct sjson_value children[4], root;
    struct sjson_err err;

    ASSERT_EQ(sjson_parse_flat(text, len, &test_limits, strings, children, 4,
                               &root, &err),
              SJSON_OK);
    ASSERT_EQ(root.type, SJSON_OBJECT);
    ASSERT_EQ(root.count, 4);
    ASSERT_TRUE(root.items == children);
    ASSERT_STR_EQ(sjson_object_get(&root, "a")->str, "xA");
    ASSERT_TRUE(sjson_object_get(&root, "a")->str >= strings);
    ASSERT_TRUE(sjson_object_get(&root, "a")->str < strings + len + 1);
    ASSERT_EQ(sjson_object_get(&root, "b")->type, SJSON_ARRAY);
    ASSERT_EQ(sjson_object_get(&root, "b")->count, 2);
    ASSERT_TRUE(sjson_object_get(&root, "b")->items == NULL);
    ASSERT_EQ(sjson_object_get(&root, "c")->count, 1);
    ASSERT_STR_EQ(sjson_object_get(&root, "e")->str, "-1.5e3");

    /* One child more than the cap: the count, but no children. */
    ASSERT_EQ(sjson_parse_flat(text, len, &test_limits, strings, children, 3,
                               &root, &err),
              SJSON_OK);
    ASSERT_EQ(root.count, 4);
    ASSERT_TRUE(root.items == NULL);
    ASSERT_TRUE(sjson_object_get(&root, "a") == NULL);
}

TEST(json_flat_parse_uses_caller_strings_when_large)
{
    /* Past the parser's own stack scratch, the strings still go to the
     * caller's buffer. */
    struct strbuf sb;
    sb_init(&sb, 1024 * 1024);
    sb_append(&sb, "{\"k\":\"", 6);
    for (size_t i = 0; i < 3000; i++)
        sb_append(&sb, "y", 1);
    sb_append(&sb, "\"}", 2);
    char *strings = malloc(sb.len + 1);
    ASSERT_TRUE(strings != NULL);
    struct sjson_value children[1], root;

    ASSERT_EQ(sjson_parse_flat(sb.data, sb.len, &test_limits, strings, children,
                               1, &root, NULL),
              SJSON_OK);
    ASSERT_EQ(root.items[0].len, 3000);
    ASSERT_TRUE(root.items[0].str >= strings);
    ASSERT_TRUE(root.items[0].str < strings + sb.len + 1);
    ASSERT_EQ(root.items[0].str[3000], '\0');
    free(strings);
    sb_free(&sb);
}

TEST(json_object_get_matches_bytes)
{
    const char *text = "{\"id\":\"r1\",\"lap\":3,\"i\":null}";
    struct sjson_doc *doc = parse_ok(text, strlen(text));
    const struct sjson_value *root = sjson_doc_root(doc);

    ASSERT_STR_EQ(sjson_object_get(root, "id")->str, "r1");
    ASSERT_STR_EQ(sjson_object_get(root, "lap")->str, "3");
    ASSERT_EQ(sjson_object_get(root, "i")->type, SJSON_NULL);
    ASSERT_TRUE(sjson_object_get(root, "I") == NULL);
    ASSERT_TRUE(sjson_object_get(root, "la") == NULL);
    ASSERT_TRUE(sjson_object_get(root, "") == NULL);
    ASSERT_TRUE(sjson_object_get(&root->items[1], "lap") == NULL);
    ASSERT_TRUE(sjson_object_get(NULL, "id") == NULL);
    sjson_doc_free(doc);
}

TEST(json_rejects_trailing_commas)
{
    ASSERT_EQ(parse_code("[1,]"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("[1,2,]"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("{\"a\":1,}"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("[,]"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("[,1]"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("{,}"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("[1,,2]"), SJSON_ERR_SYNTAX);
}

TEST(json_rejects_comments)
{
    ASSERT_EQ(parse_code("[1 /* c */]"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("[1] // c"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("# c\n[1]"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("{\"a\":1 /**/}"), SJSON_ERR_SYNTAX);
}

TEST(json_rejects_bad_number_forms)
{
    static const char *const bad[] = {
        "01",   "-01",  "00",        "1.",   ".5",    "-.5",   "1e",  "1E+",
        "1e-",  "+1",   "-",         "1.e5", "1.5.2", "1e5e3", "1-2", "0x10",
        "[01]", "[1.]", "{\"a\":-}", "[-a]", "- 1",   "2.e"};

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (parse_code(bad[i]) != SJSON_ERR_NUMBER)
            test_fail(__FILE__, __LINE__, "%s: not SJSON_ERR_NUMBER", bad[i]);
    }
}

TEST(json_accepts_valid_number_forms)
{
    static const char *const good[] = {
        "0",       "-0",           "0.5",
        "1e5",     "1E+5",         "1e-5",
        "-0.0e-0", "10",           "1e00",
        "0e0",     "9.99E99",      "[0,1]",
        "[-0]",    "123.456e-789", "1.8011670033376514e-308"};

    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        if (parse_code(good[i]) != SJSON_OK)
            test_fail(__FILE__, __LINE__, "%s: rejected", good[i]);
    }
}

TEST(json_keeps_huge_integers_as_text)
{
    const char *text = "[18446744073709551616,-9223372036854775809,"
                       "123456789012345678901234567890123456789]";
    struct sjson_doc *doc = parse_ok(text, strlen(text));
    const struct sjson_value *root = sjson_doc_root(doc);

    ASSERT_EQ(root->count, 3);
    ASSERT_EQ(root->items[0].type, SJSON_NUMBER);
    ASSERT_MEM_EQ(root->items[0].str, root->items[0].len,
                  "18446744073709551616", 20);
    ASSERT_EQ(root->items[1].type, SJSON_NUMBER);
    ASSERT_MEM_EQ(root->items[1].str, root->items[1].len,
                  "-9223372036854775809", 20);
    ASSERT_STR_EQ(root->items[2].str,
                  "123456789012345678901234567890123456789");
    sjson_doc_free(doc);
}

TEST(json_rejects_nan_and_infinity)
{
    ASSERT_EQ(parse_code("NaN"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("nan"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("Infinity"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("[infinity]"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("-Infinity"), SJSON_ERR_NUMBER);
    ASSERT_EQ(parse_code("-NaN"), SJSON_ERR_NUMBER);
}

TEST(json_rejects_bad_literals)
{
    ASSERT_EQ(parse_code("tru"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("True"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("nul"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("nulls"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("falsey"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("undefined"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("'a'"), SJSON_ERR_SYNTAX);
}

TEST(json_rejects_raw_control_chars)
{
    ASSERT_EQ(parse_code("\"a\x01z\""), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("\"a\tb\""), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("\"a\nb\""), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("\"\x1f\""), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("{\"k\x02\":1}"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(PARSE_BYTES("\"a\0b\""), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("\"\x7f\""), SJSON_OK);
}

TEST(json_decodes_standard_escapes)
{
    const char *text = "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u0041\\u00e9\\u20AC\"";
    struct sjson_doc *doc = parse_ok(text, strlen(text));
    const struct sjson_value *root = sjson_doc_root(doc);

    ASSERT_EQ(root->type, SJSON_STRING);
    ASSERT_MEM_EQ(root->str, root->len, "\"\\/\b\f\n\r\tA\xc3\xa9\xe2\x82\xac",
                  14);
    ASSERT_EQ(root->str[root->len], '\0');
    sjson_doc_free(doc);
}

TEST(json_rejects_unknown_escapes)
{
    ASSERT_EQ(parse_code("\"\\x41\""), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("\"\\a\""), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("\"\\'\""), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("\"\\U0041\""), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("\"\\0\""), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("\"\\u12\""), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("\"\\u12G4\""), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("\"\\u123"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("\"\\"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("\"\\\""), SJSON_ERR_SYNTAX);
}

TEST(json_decodes_surrogate_pairs)
{
    const char *text = "[\"\\uD83D\\uDE00\",\"\\udbff\\udfff\"]";
    struct sjson_doc *doc = parse_ok(text, strlen(text));
    const struct sjson_value *root = sjson_doc_root(doc);

    ASSERT_MEM_EQ(root->items[0].str, root->items[0].len, "\xf0\x9f\x98\x80",
                  4);
    ASSERT_MEM_EQ(root->items[1].str, root->items[1].len, "\xf4\x8f\xbf\xbf",
                  4);
    sjson_doc_free(doc);
}

TEST(json_rejects_lone_surrogates)
{
    ASSERT_EQ(parse_code("\"\\uD800\""), SJSON_ERR_UTF8);
    ASSERT_EQ(parse_code("\"\\uDBFF\""), SJSON_ERR_UTF8);
    ASSERT_EQ(parse_code("\"\\uDC00\""), SJSON_ERR_UTF8);
    ASSERT_EQ(parse_code("\"\\uDFFF\\uD800\""), SJSON_ERR_UTF8);
    ASSERT_EQ(parse_code("\"\\uD800\\u0041\""), SJSON_ERR_UTF8);
    ASSERT_EQ(parse_code("\"\\uD800x\""), SJSON_ERR_UTF8);
    ASSERT_EQ(parse_code("\"\\uD800\\n\""), SJSON_ERR_UTF8);
    ASSERT_EQ(parse_code("\"\\uD800\\uD800\""), SJSON_ERR_UTF8);
    ASSERT_EQ(parse_code("{\"\\uDE00\":1}"), SJSON_ERR_UTF8);
}

TEST(json_rejects_invalid_utf8)
{
    static const char *const bad[] = {
        "\"\xc3\x28\"",             /* lead byte without continuation */
        "\"\x80\"",                 /* continuation without lead byte */
        "\"\xbf\"",                 /* continuation without lead byte */
        "\"\xc0\x80\"",             /* overlong NUL */
        "\"\xc1\xbf\"",             /* overlong 2-byte form */
        "\"\xe0\x80\x80\"",         /* overlong 3-byte form */
        "\"\xe0\x9f\xbf\"",         /* overlong 3-byte form */
        "\"\xf0\x80\x80\x80\"",     /* overlong 4-byte form */
        "\"\xf0\x8f\xbf\xbf\"",     /* overlong 4-byte form */
        "\"\xed\xa0\x80\"",         /* surrogate U+D800 */
        "\"\xed\xbf\xbf\"",         /* surrogate U+DFFF */
        "\"\xf4\x90\x80\x80\"",     /* U+110000 */
        "\"\xf5\x80\x80\x80\"",     /* lead byte F5 */
        "\"\xf8\x88\x80\x80\x80\"", /* 5-byte form */
        "\"\xfe\"",                 /* byte FE */
        "\"\xff\"",                 /* byte FF */
        "\"\xe2\x82\"",             /* truncated before the quote */
        "\"\xe2\x82",               /* truncated at end of input */
        "\"\xf0\x9f\x98\"",         /* truncated 4-byte form */
        "\"\xe2\x28\xa1\"",         /* bad second byte */
        "\"\xe2\x82\x28\"",         /* bad third byte */
        "\"\xf0\x9f\x28\x80\"",     /* bad third byte */
        "{\"\xc3\x28\":1}",         /* in a key */
    };

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (parse_code(bad[i]) != SJSON_ERR_UTF8)
            test_fail(__FILE__, __LINE__, "case %zu: not SJSON_ERR_UTF8", i);
    }
}

/* A byte sequence put into a string token at each position. */
struct string_probe {
    const char *bytes;
    size_t len;
    int code;            /* expected result of the parse */
    const char *decoded; /* the decoded bytes when code is SJSON_OK */
    size_t decoded_len;
};

/*
 * Parse a string of text_len plain bytes with probe put at position at,
 * after lead spaces, and check the result: the decoded bytes, or the error
 * code at the probe's offset. The scan of plain text reads 16 or eight
 * bytes at a time, so the probe must be found at every position of such
 * a block.
 */
static void check_string_probe(const struct string_probe *probe, size_t lead,
                               size_t text_len, size_t at)
{
    char text[96], expected[96];
    size_t n = 0, e = 0;
    struct sjson_doc *doc = NULL;
    struct sjson_err err;

    memset(text, ' ', lead);
    n = lead;
    text[n++] = '"';
    for (size_t i = 0; i <= text_len; i++) {
        if (i == at) {
            memcpy(text + n, probe->bytes, probe->len);
            n += probe->len;
            memcpy(expected + e, probe->decoded, probe->decoded_len);
            e += probe->decoded_len;
        }
        if (i < text_len) {
            text[n++] = (char)('a' + i % 26);
            expected[e++] = (char)('a' + i % 26);
        }
    }
    text[n++] = '"';

    int rc = sjson_parse(text, n, &test_limits, &doc, &err);
    if (rc != probe->code)
        test_fail(__FILE__, __LINE__,
                  "probe 0x%02x, lead %zu, length %zu, at %zu: code %d, "
                  "expected %d",
                  (unsigned char)probe->bytes[0], lead, text_len, at, rc,
                  probe->code);
    if (rc != SJSON_OK) {
        if (err.offset != lead + 1 + at)
            test_fail(__FILE__, __LINE__,
                      "probe 0x%02x, lead %zu, length %zu, at %zu: offset %zu",
                      (unsigned char)probe->bytes[0], lead, text_len, at,
                      err.offset);
        return;
    }
    const struct sjson_value *root = sjson_doc_root(doc);
    ASSERT_EQ(root->type, SJSON_STRING);
    ASSERT_MEM_EQ(root->str, root->len, expected, e);
    ASSERT_EQ(root->str[root->len], '\0');
    sjson_doc_free(doc);
}

TEST(json_string_probes_every_position)
{
    static const struct string_probe probes[] = {
        {"\x00", 1, SJSON_ERR_SYNTAX, "", 0},
        {"\x01", 1, SJSON_ERR_SYNTAX, "", 0},
        {"\x1f", 1, SJSON_ERR_SYNTAX, "", 0},
        {"\x80", 1, SJSON_ERR_UTF8, "", 0},
        {"\xc0\x80", 2, SJSON_ERR_UTF8, "", 0},
        {"\xff", 1, SJSON_ERR_UTF8, "", 0},
        {"\\q", 2, SJSON_ERR_SYNTAX, "", 0},
        {" ", 1, SJSON_OK, " ", 1},
        {"!", 1, SJSON_OK, "!", 1},
        {"#", 1, SJSON_OK, "#", 1},
        {"[", 1, SJSON_OK, "[", 1},
        {"]", 1, SJSON_OK, "]", 1},
        {"\x7f", 1, SJSON_OK, "\x7f", 1},
        {"\\n", 2, SJSON_OK, "\n", 1},
        {"\\\"", 2, SJSON_OK, "\"", 1},
        {"\\u0000", 6, SJSON_OK, "\0", 1},
        {"\xc3\xa9", 2, SJSON_OK, "\xc3\xa9", 2},
        {"\xf0\x9f\x98\x80", 4, SJSON_OK, "\xf0\x9f\x98\x80", 4},
    };

    for (size_t k = 0; k < sizeof probes / sizeof probes[0]; k++) {
        /* Up to 40 bytes and 16 leads put the probe at every position of
         * two 16-byte blocks and of the eight-byte and single-byte tails. */
        for (size_t lead = 0; lead < 16; lead++) {
            for (size_t len = 0; len <= 40; len++) {
                for (size_t at = 0; at <= len; at++)
                    check_string_probe(&probes[k], lead, len, at);
            }
        }
    }
}

TEST(json_string_ends_at_every_position)
{
    char text[96];

    for (size_t len = 0; len <= 40; len++) {
        /* Spaces after the closing quote fill the 16-byte block. */
        size_t n = 0;
        text[n++] = '"';
        for (size_t i = 0; i < len; i++)
            text[n++] = (char)('A' + i % 26);
        text[n++] = '"';
        memset(text + n, ' ', 16);
        n += 16;

        struct sjson_doc *doc = parse_ok(text, n);
        const struct sjson_value *root = sjson_doc_root(doc);
        ASSERT_EQ(root->type, SJSON_STRING);
        ASSERT_MEM_EQ(root->str, root->len, text + 1, len);
        sjson_doc_free(doc);

        /* Without the closing quote the string never ends. */
        struct sjson_err err;
        ASSERT_EQ(sjson_parse(text, len + 1, &test_limits, &doc, &err),
                  SJSON_ERR_SYNTAX);
        ASSERT_EQ(err.offset, 0);
        ASSERT_STR_EQ(err.message, "unterminated string");
    }
}

TEST(json_accepts_utf8_boundaries)
{
    static const char *const good[] = {
        "\"\xc2\x80\"",         "\"\xdf\xbf\"",         "\"\xe0\xa0\x80\"",
        "\"\xed\x9f\xbf\"",     "\"\xee\x80\x80\"",     "\"\xef\xbf\xbf\"",
        "\"\xf0\x90\x80\x80\"", "\"\xf4\x8f\xbf\xbf\"", "\"caf\xc3\xa9\"",
    };

    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        if (parse_code(good[i]) != SJSON_OK)
            test_fail(__FILE__, __LINE__, "case %zu: rejected", i);
    }
}

TEST(json_rejects_bytes_outside_strings)
{
    ASSERT_EQ(parse_code("\xef\xbb\xbf[]"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("[\xc3\xa9]"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("[1]\xff"), SJSON_ERR_SYNTAX);
}

TEST(json_accepts_only_json_whitespace)
{
    ASSERT_EQ(parse_code(" \t\r\n[ \t\r\n1 \t\r\n, 2 ] \t\r\n"), SJSON_OK);
    ASSERT_EQ(parse_code("\f1"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("1\v"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("[1,\xc2\xa0 2]"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(PARSE_BYTES("1\0"), SJSON_ERR_SYNTAX);
}

TEST(json_rejects_trailing_data)
{
    ASSERT_EQ(parse_code("1 2"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("{} {}"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("[]]"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("[] ,"), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("\"a\"\"b\""), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code("null x"), SJSON_ERR_SYNTAX);
}

TEST(json_rejects_empty_input)
{
    ASSERT_EQ(parse_code(""), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code(" \n\t "), SJSON_ERR_SYNTAX);
    ASSERT_EQ(parse_code_limits(NULL, 0, &test_limits), SJSON_ERR_SYNTAX);
}

TEST(json_rejects_truncated_documents)
{
    static const char *const bad[] = {
        "[",   "{",         "{\"a\"", "{\"a\":",  "{\"a\":1",
        "[1",  "[1,",       "\"abc",  "[\"abc]",  "{\"a\":1,",
        "[[]", "{\"a\":{}", "{\"a",   "[true,fal"};

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (parse_code(bad[i]) != SJSON_ERR_SYNTAX)
            test_fail(__FILE__, __LINE__, "%s: not SJSON_ERR_SYNTAX", bad[i]);
    }
}

TEST(json_rejects_structural_errors)
{
    static const char *const bad[] = {
        "{1:2}",     "{\"a\" 1}", "{\"a\"::1}", "[1 2]",    "{\"a\":1 \"b\":2}",
        "]",         "}",         ":",          ",",        "[}",
        "{]",        "{\"a\":1]", "[1}",        "{null:1}", "{\"a\",1}",
        "[\"a\":1]", "{'a':1}"};

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (parse_code(bad[i]) != SJSON_ERR_SYNTAX)
            test_fail(__FILE__, __LINE__, "%s: not SJSON_ERR_SYNTAX", bad[i]);
    }
}

TEST(json_reports_error_offsets)
{
    struct sjson_doc *doc;
    struct sjson_err err;

    ASSERT_EQ(sjson_parse("[1,]", 4, &test_limits, &doc, &err),
              SJSON_ERR_SYNTAX);
    ASSERT_EQ(err.offset, 3);
    ASSERT_TRUE(err.message[0] != '\0');

    ASSERT_EQ(sjson_parse("[\"\xc3\x28\"]", 5, &test_limits, &doc, &err),
              SJSON_ERR_UTF8);
    ASSERT_EQ(err.offset, 2);

    ASSERT_EQ(sjson_parse("{\"a\":01}", 8, &test_limits, &doc, &err),
              SJSON_ERR_NUMBER);
    ASSERT_EQ(err.offset, 5);
    ASSERT_TRUE(doc == NULL);
}

TEST(json_parses_around_scratch_limits)
{
    struct strbuf sb;
    char key[16];

    sb_init(&sb, 1 << 20);
    /* Objects of n members, each an array of two, so that the node arrays
     * pass their first sizes at different points. */
    for (int n = 0; n <= 60; n++) {
        sb_reset(&sb);
        sb_putc(&sb, '{');
        for (int i = 0; i < n; i++)
            sb_printf(&sb, "%s\"m%d\":[%d,\"v%d\"]", i > 0 ? "," : "", i, i, i);
        sb_putc(&sb, '}');

        struct sjson_doc *doc = parse_ok(sb.data, sb.len);
        const struct sjson_value *root = sjson_doc_root(doc);
        ASSERT_EQ(root->count, (size_t)n);
        for (int i = 0; i < n; i++) {
            snprintf(key, sizeof key, "m%d", i);
            const struct sjson_value *member = sjson_object_get(root, key);
            ASSERT_TRUE(member != NULL);
            ASSERT_EQ(member->type, SJSON_ARRAY);
            ASSERT_EQ(member->count, 2);
            ASSERT_EQ(strtol(member->items[0].str, NULL, 10), i);
            ASSERT_EQ(member->items[1].str[0], 'v');
            ASSERT_EQ(strtol(member->items[1].str + 1, NULL, 10), i);
        }
        sjson_doc_free(doc);
    }

    /* Nesting around the first size of the frame array. */
    for (int depth = 1; depth <= 20; depth++) {
        sb_reset(&sb);
        for (int i = 0; i < depth; i++)
            sb_puts(&sb, "{\"a\":");
        sb_puts(&sb, "7");
        for (int i = 0; i < depth; i++)
            sb_putc(&sb, '}');

        struct sjson_doc *doc = parse_ok(sb.data, sb.len);
        const struct sjson_value *v = sjson_doc_root(doc);
        for (int i = 0; i < depth; i++) {
            ASSERT_EQ(v->type, SJSON_OBJECT);
            v = sjson_object_get(v, "a");
            ASSERT_TRUE(v != NULL);
        }
        ASSERT_EQ(v->type, SJSON_NUMBER);
        ASSERT_STR_EQ(v->str, "7");
        sjson_doc_free(doc);
    }

    /* Inputs around the size of the string scratch. */
    for (size_t len = 1000; len <= 1040; len++) {
        sb_reset(&sb);
        sb_putc(&sb, '"');
        for (size_t i = 0; i < len - 2; i++)
            sb_putc(&sb, (char)('a' + i % 26));
        sb_putc(&sb, '"');

        struct sjson_doc *doc = parse_ok(sb.data, sb.len);
        const struct sjson_value *root = sjson_doc_root(doc);
        ASSERT_EQ(root->type, SJSON_STRING);
        ASSERT_MEM_EQ(root->str, root->len, sb.data + 1, len - 2);
        sjson_doc_free(doc);
    }
    sb_free(&sb);
}

TEST(json_rejects_input_over_max_bytes)
{
    const struct sjson_limits small = {10, 64};

    ASSERT_EQ(parse_code_limits("[1,2,3,45]", 10, &small), SJSON_OK);
    ASSERT_EQ(parse_code_limits("[1,2,3,456]", 11, &small),
              SJSON_ERR_TOO_LARGE);
    ASSERT_EQ(parse_code_limits("[1,2,3,4] ", 11, &small), SJSON_ERR_TOO_LARGE);
}

TEST(json_null_limits_use_defaults)
{
    struct sjson_doc *doc;
    char *deep = repeat("[", SJSON_DEFAULT_MAX_DEPTH + 1, "");

    ASSERT_EQ(sjson_parse("[1]", 3, NULL, &doc, NULL), SJSON_OK);
    sjson_doc_free(doc);
    ASSERT_EQ(sjson_parse(deep, strlen(deep), NULL, &doc, NULL),
              SJSON_ERR_DEPTH);
    ASSERT_TRUE(doc == NULL);
    free(deep);
}

TEST(json_rejects_100000_open_brackets)
{
    char *text = repeat("[", 100000, "");
    struct sjson_doc *doc;
    struct sjson_err err;
    double start = seconds_now();

    ASSERT_EQ(sjson_parse(text, 100000, &test_limits, &doc, &err),
              SJSON_ERR_DEPTH);
    ASSERT_EQ(err.offset, 64);

    /* With a limit past the nesting, the explicit stack reaches 100,000
     * levels and the parse fails only at the end of the input. */
    const struct sjson_limits deep = {1024 * 1024, 1000000};
    ASSERT_EQ(sjson_parse(text, 100000, &deep, &doc, &err), SJSON_ERR_SYNTAX);
    ASSERT_EQ(err.offset, 100000);
    ASSERT_TRUE(seconds_now() - start < 5.0);
    free(text);
}

TEST(json_parses_deep_nesting_iteratively)
{
    size_t depth = 100000;
    char *text = malloc(2 * depth + 1);
    const struct sjson_limits deep = {1024 * 1024, (int)depth};
    struct sjson_doc *doc;
    struct strbuf sb;

    ASSERT_TRUE(text != NULL);
    memset(text, '[', depth);
    memset(text + depth, ']', depth);
    text[2 * depth] = '\0';
    ASSERT_EQ(parse_code_limits(text, 2 * depth, &deep), SJSON_OK);

    ASSERT_EQ(sjson_parse(text, 2 * depth, &deep, &doc, NULL), SJSON_OK);
    sb_init(&sb, 4 * depth);
    ASSERT_EQ(sjson_canonical(sjson_doc_root(doc), &sb), 0);
    ASSERT_MEM_EQ(sb.data, sb.len, text, 2 * depth);
    sb_free(&sb);
    sjson_doc_free(doc);
    free(text);
}

TEST(json_rejects_deep_object_at_limit)
{
    char *open = repeat("{\"a\":", 2000, "1");
    char *close = repeat("}", 2000, "");
    size_t open_len = strlen(open);
    char *text = malloc(open_len + 2000 + 1);

    ASSERT_TRUE(text != NULL);
    memcpy(text, open, open_len);
    memcpy(text + open_len, close, 2001);
    ASSERT_EQ(parse_code(text), SJSON_ERR_DEPTH);
    free(text);
    free(open);
    free(close);
}

TEST(json_depth_limit_counts_levels)
{
    const struct sjson_limits zero = {100, 0}, one = {100, 1};
    char text[200];

    ASSERT_EQ(parse_code_limits("1", 1, &zero), SJSON_OK);
    ASSERT_EQ(parse_code_limits("[]", 2, &zero), SJSON_ERR_DEPTH);
    ASSERT_EQ(parse_code_limits("[]", 2, &one), SJSON_OK);
    ASSERT_EQ(parse_code_limits("{\"a\":[]}", 8, &one), SJSON_ERR_DEPTH);
    ASSERT_EQ(parse_code_limits("[[]]", 4, &one), SJSON_ERR_DEPTH);

    /* test_limits allows 64 levels. */
    memset(text, '[', 64);
    memset(text + 64, ']', 64);
    text[128] = '\0';
    ASSERT_EQ(parse_code(text), SJSON_OK);
    memset(text, '[', 65);
    memset(text + 65, ']', 65);
    text[130] = '\0';
    ASSERT_EQ(parse_code(text), SJSON_ERR_DEPTH);
}

TEST(json_keeps_nul_in_keys_and_values)
{
    const char *text = "{\"a\\u0000b\":\"x\\u0000y\",\"a\":\"\\u0000\"}";
    struct sjson_doc *doc = parse_ok(text, strlen(text));
    const struct sjson_value *root = sjson_doc_root(doc);

    ASSERT_EQ(root->count, 2);
    ASSERT_MEM_EQ(root->items[0].key, root->items[0].key_len, "a\0b", 3);
    ASSERT_EQ(root->items[0].key[3], '\0');
    ASSERT_MEM_EQ(root->items[0].str, root->items[0].len, "x\0y", 3);
    ASSERT_EQ(root->items[0].str[3], '\0');
    ASSERT_MEM_EQ(root->items[1].key, root->items[1].key_len, "a", 1);
    ASSERT_MEM_EQ(root->items[1].str, root->items[1].len, "\0", 1);
    ASSERT_TRUE(sjson_object_get(root, "a") == &root->items[1]);
    sjson_doc_free(doc);
}

TEST(json_rejects_duplicate_keys)
{
    struct sjson_doc *doc;
    struct sjson_err err;

    ASSERT_EQ(sjson_parse("{\"a\":1,\"a\":2}", 13, &test_limits, &doc, &err),
              SJSON_ERR_DUPLICATE_KEY);
    ASSERT_EQ(err.offset, 7);
    ASSERT_STR_EQ(err.message, "duplicate object key \"a\"");

    ASSERT_EQ(parse_code("{\"a\":1,\"b\":2,\"a\":3}"), SJSON_ERR_DUPLICATE_KEY);
    ASSERT_EQ(parse_code("{\"a\":1,\"\\u0061\":2}"), SJSON_ERR_DUPLICATE_KEY);
    ASSERT_EQ(parse_code("[{\"x\":1,\"x\":1}]"), SJSON_ERR_DUPLICATE_KEY);
    ASSERT_EQ(parse_code("{\"\":1,\"\":2}"), SJSON_ERR_DUPLICATE_KEY);
    ASSERT_EQ(parse_code("{\"a\\u0000\":1,\"a\\u0000\":2}"),
              SJSON_ERR_DUPLICATE_KEY);
}

TEST(json_accepts_same_key_elsewhere)
{
    ASSERT_EQ(parse_code("{\"a\":1,\"b\":{\"a\":2}}"), SJSON_OK);
    ASSERT_EQ(parse_code("[{\"x\":1},{\"x\":1}]"), SJSON_OK);
    ASSERT_EQ(parse_code("{\"a\":1,\"a\\u0000b\":2}"), SJSON_OK);
    ASSERT_EQ(parse_code("{\"a\\u0000\":1,\"a\":2}"), SJSON_OK);
    ASSERT_EQ(parse_code("{\"a\":1,\"A\":2,\"\":3}"), SJSON_OK);
    ASSERT_EQ(parse_code("{\"a\":\"a\",\"b\":\"a\"}"), SJSON_OK);
}

TEST(json_finds_duplicates_in_large_objects)
{
    size_t count = 50000;
    struct strbuf sb;
    struct sjson_doc *doc;
    struct sjson_err err;
    double start = seconds_now();

    sb_init(&sb, 4 * 1024 * 1024);
    sb_putc(&sb, '{');
    for (size_t i = 0; i < count; i++)
        sb_printf(&sb, "%s\"k%zu\":%zu", i ? "," : "", (i * 7919) % count, i);
    sb_putc(&sb, '}');
    const struct sjson_limits limits = {sb.len, 8};
    ASSERT_EQ(sjson_parse(sb.data, sb.len, &limits, &doc, &err), SJSON_OK);
    ASSERT_EQ(sjson_doc_root(doc)->count, count);
    ASSERT_STR_EQ(sjson_doc_root(doc)->items[1].key, "k7919");
    sjson_doc_free(doc);

    /* Two later repeats: the first one in document order is reported. */
    sb.len--;
    sb_puts(&sb, ",\"k5\":0,\"k3\":0}");
    const struct sjson_limits more = {sb.len, 8};
    ASSERT_EQ(sjson_parse(sb.data, sb.len, &more, &doc, &err),
              SJSON_ERR_DUPLICATE_KEY);
    ASSERT_STR_EQ(err.message, "duplicate object key \"k5\"");
    ASSERT_EQ(sb.data[err.offset], '"');
    ASSERT_EQ(sb.data[err.offset + 2], '5');
    ASSERT_TRUE(seconds_now() - start < 5.0);
    sb_free(&sb);
}

TEST(json_duplicate_message_escapes_key)
{
    struct sjson_doc *doc;
    struct sjson_err err;
    const char *ctl = "{\"a\\u0001\\\"\":1,\"a\\u0001\\\"\":2}";
    char *long_key = repeat("k", 200, "");
    char text[512];

    ASSERT_EQ(sjson_parse(ctl, strlen(ctl), &test_limits, &doc, &err),
              SJSON_ERR_DUPLICATE_KEY);
    ASSERT_STR_EQ(err.message, "duplicate object key \"a\\x01\\x22\"");

    snprintf(text, sizeof text, "{\"%s\":1,\"%s\":2}", long_key, long_key);
    ASSERT_EQ(sjson_parse(text, strlen(text), &test_limits, &doc, &err),
              SJSON_ERR_DUPLICATE_KEY);
    ASSERT_TRUE(strlen(err.message) < sizeof err.message);
    ASSERT_TRUE(strstr(err.message, "kkk...\"") != NULL);
    free(long_key);
}

TEST(json_error_names_are_distinct)
{
    ASSERT_STR_EQ(sjson_error_name(SJSON_OK), "ok");
    ASSERT_STR_EQ(sjson_error_name(SJSON_ERR_SYNTAX), "syntax");
    ASSERT_STR_EQ(sjson_error_name(SJSON_ERR_DEPTH), "depth");
    ASSERT_STR_EQ(sjson_error_name(SJSON_ERR_DUPLICATE_KEY), "duplicate_key");
    ASSERT_STR_EQ(sjson_error_name(SJSON_ERR_UTF8), "utf8");
    ASSERT_STR_EQ(sjson_error_name(SJSON_ERR_NUMBER), "number");
    ASSERT_STR_EQ(sjson_error_name(SJSON_ERR_TOO_LARGE), "too_large");
    ASSERT_STR_EQ(sjson_error_name(SJSON_ERR_NOMEM), "nomem");
}

TEST(json_parse_reuse_keeps_allocation)
{
    static const char small[] = "{\"a\":1}";
    static const char medium[] =
        "{\"a\":1,\"b\":[true,false,null],\"c\":\"x\"}";
    struct sjson_doc *doc = NULL;
    struct sjson_err err;

    ASSERT_EQ(
        sjson_parse_reuse(medium, strlen(medium), &test_limits, &doc, &err),
        SJSON_OK);
    const struct sjson_doc *first = doc;
    ASSERT_EQ(sjson_doc_root(doc)->count, 3);

    /* A smaller document fits in the same memory. */
    ASSERT_EQ(sjson_parse_reuse(small, strlen(small), &test_limits, &doc, &err),
              SJSON_OK);
    ASSERT_TRUE(doc == first);
    ASSERT_EQ(sjson_doc_root(doc)->count, 1);
    ASSERT_STR_EQ(sjson_object_get(sjson_doc_root(doc), "a")->str, "1");
    ASSERT_TRUE(sjson_object_get(sjson_doc_root(doc), "b") == NULL);

    /* A failure keeps the memory but leaves no root to read. */
    ASSERT_EQ(sjson_parse_reuse("[1,]", 4, &test_limits, &doc, &err),
              SJSON_ERR_SYNTAX);
    ASSERT_TRUE(doc == first);
    ASSERT_TRUE(sjson_doc_root(doc) == NULL);
    ASSERT_EQ(
        sjson_parse_reuse(medium, strlen(medium), &test_limits, &doc, &err),
        SJSON_OK);
    ASSERT_TRUE(doc == first);
    ASSERT_STR_EQ(sjson_object_get(sjson_doc_root(doc), "c")->str, "x");

    /* A larger document gets more memory, with every value in place. */
    struct strbuf big;
    sb_init(&big, 1024 * 1024);
    sb_putc(&big, '[');
    for (int i = 0; i < 1000; i++)
        sb_printf(&big, "%s\"v%d\"", i > 0 ? "," : "", i);
    sb_putc(&big, ']');
    ASSERT_EQ(sjson_parse_reuse(big.data, big.len, &test_limits, &doc, &err),
              SJSON_OK);
    const struct sjson_value *root = sjson_doc_root(doc);
    ASSERT_EQ(root->count, 1000);
    ASSERT_STR_EQ(root->items[0].str, "v0");
    ASSERT_STR_EQ(root->items[999].str, "v999");
    sb_free(&big);
    sjson_doc_free(doc);
}

TEST(json_number_canonical_table)
{
    static const struct {
        const char *token;
        const char *canonical;
    } cases[] = {
        {"0", "0"},
        {"-0", "0"},
        {"0.000", "0"},
        {"0e5", "0"},
        {"-0.0E-7", "0"},
        {"0e99999999999999999999", "0"},
        {"90", "9e1"},
        {"90.0", "9e1"},
        {"9.0e1", "9e1"},
        {"9E+1", "9e1"},
        {"900e-1", "9e1"},
        {"0.09e3", "9e1"},
        {"12.5", "125e-1"},
        {"12.50", "125e-1"},
        {"0.001", "1e-3"},
        {"100", "1e2"},
        {"1", "1e0"},
        {"-3", "-3e0"},
        {"-3.000", "-3e0"},
        {"10.01", "1001e-2"},
        {"-0.5", "-5e-1"},
        {"1.8011670033376514e-308", "18011670033376514e-324"},
        {"18446744073709551616", "18446744073709551616e0"},
        {"-9223372036854775809", "-9223372036854775809e0"},
        {"1e1000000000", "1e1000000000"},
        {"10e999999999", "1e1000000000"},
        {"1e-1000000000", "1e-1000000000"},
        {"0.1e-999999999", "1e-1000000000"},
        {"100e-1000000002", "1e-1000000000"},
        {"1e0000000000000000000000000000001", "1e1"},
        /* Numbers without an exponent of up to 40 bytes take a shorter
         * path. */
        {"7", "7e0"},
        {"-120", "-12e1"},
        {"1767225601040", "176722560104e1"},
        {"10000000000", "1e10"},
        {"-1000000000", "-1e9"},
        {"1234567890000000000000000000000000000000", "123456789e31"},
        {"-123456789000000000000000000000000000000", "-123456789e30"},
        {"10000000000000000000000000000000000000000", "1e40"},
        {"12345678901234567890123456789012345678901",
         "12345678901234567890123456789012345678901e0"},
        {"73.01", "7301e-2"},
        {"1234567890123456789.01234567890123456780",
         "12345678901234567890123456789012345678e-19"},
        {"-0.000000000000000000000000000000000001", "-1e-36"},
        {"1000000000000000000000000000000000000.00", "1e36"},
        {"0.0000000000000000000000000000000000000010", "1e-39"},
        {"-12345678901234567890123456789012345.6789",
         "-123456789012345678901234567890123456789e-4"},
        {"0.00000000000000000000000000000000000000012", "12e-41"},
    };
    struct strbuf sb;

    sb_init(&sb, 1024);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sb_reset(&sb);
        if (sjson_number_canonical(cases[i].token, strlen(cases[i].token),
                                   &sb) != 0)
            test_fail(__FILE__, __LINE__, "%s: rejected", cases[i].token);
        if (strcmp(sb.data, cases[i].canonical) != 0)
            test_fail(__FILE__, __LINE__, "%s: \"%s\", expected \"%s\"",
                      cases[i].token, sb.data, cases[i].canonical);
    }
    sb_free(&sb);
}

/* Write the canonical text of a valid number token without an exponent
 * to out (at least 64 bytes), by the definition: the digits without the
 * point, leading and trailing zeros, then 'e' and the exponent. */
static void reference_canonical(const char *tok, char *out)
{
    bool negative = tok[0] == '-';
    const char *digits_start = tok + negative;
    const char *point = strchr(digits_start, '.');
    size_t fraction_len = point ? strlen(point + 1) : 0;
    char digits[64];
    size_t n = 0;

    for (const char *c = digits_start; *c != '\0'; c++) {
        if (*c != '.')
            digits[n++] = *c;
    }
    size_t lead = 0;
    while (lead < n && digits[lead] == '0')
        lead++;
    if (lead == n) {
        strcpy(out, "0");
        return;
    }
    size_t last = n;
    while (digits[last - 1] == '0')
        last--;
    long exponent = (long)(n - last) - (long)fraction_len;
    sprintf(out, "%s%.*se%ld", negative ? "-" : "", (int)(last - lead),
            digits + lead, exponent);
}

TEST(json_number_canonical_matches_reference)
{
    /* Tokens of 1 to 42 bytes, on both sides of the short path's limit,
     * with many zeros so that leading and trailing zeros are common. */
    uint32_t state = 12345;
    char tok[64], expected[64];
    struct strbuf sb;

    sb_init(&sb, 1024);
    for (int round = 0; round < 20000; round++) {
        size_t n = 0;
        state = state * 1103515245u + 12345u;
        size_t len = 1 + (state >> 8) % 40;
        if (state % 3 == 0)
            tok[n++] = '-';
        state = state * 1103515245u + 12345u;
        size_t int_len = 1 + (state >> 8) % len;
        for (size_t i = 0; i < len; i++) {
            state = state * 1103515245u + 12345u;
            char digit =
                (state >> 16) % 2 ? '0' : (char)('0' + (state >> 8) % 10);
            if (i == 0 && int_len > 1 && digit == '0')
                digit = '7';
            if (i == int_len)
                tok[n++] = '.';
            tok[n++] = digit;
        }
        tok[n] = '\0';

        reference_canonical(tok, expected);
        sb_reset(&sb);
        if (sjson_number_canonical(tok, n, &sb) != 0)
            test_fail(__FILE__, __LINE__, "%s: rejected", tok);
        if (strcmp(sb.data, expected) != 0)
            test_fail(__FILE__, __LINE__, "%s: \"%s\", expected \"%s\"", tok,
                      sb.data, expected);
    }
    sb_free(&sb);
}

TEST(json_number_canonical_rejects_invalid)
{
    static const char *const bad[] = {"",
                                      "-",
                                      "01",
                                      "-01",
                                      "00",
                                      "1-",
                                      "12a",
                                      "1.5e",
                                      "0.",
                                      "-.5",
                                      "00.5",
                                      "1..5",
                                      "1.",
                                      ".5",
                                      "+1",
                                      "1e",
                                      "1e+",
                                      "NaN",
                                      "1 ",
                                      " 1",
                                      "0x1",
                                      "1.5.2",
                                      "1e1000000001",
                                      "1e-1000000001",
                                      "0.01e-999999999",
                                      "100e999999999",
                                      "1e99999999999999999999",
                                      "1e-99999999999999999999"};
    struct strbuf sb;

    sb_init(&sb, 1024);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (sjson_number_canonical(bad[i], strlen(bad[i]), &sb) != -1)
            test_fail(__FILE__, __LINE__, "%s: accepted", bad[i]);
    }
    ASSERT_EQ(sjson_number_canonical(NULL, 0, &sb), -1);
    ASSERT_EQ(sjson_number_canonical("12", 1, &sb), 0);
    ASSERT_STR_EQ(sb.data, "1e0");
    sb_free(&sb);
}

TEST(json_canonical_sorts_and_strips)
{
    char *a = canonical_of("{\"racer\":\"r1\",\"lap\":3,\"t\":{\"b\":1,"
                           "\"a\":[true,null,false]}}");
    char *b = canonical_of(" { \"t\" : { \"a\" : [ true , null , false ] ,"
                           "\n\"b\":1 } ,\t\"lap\":3 , \"racer\" : \"r1\" }");

    ASSERT_STR_EQ(a, "{\"lap\":3e0,\"racer\":\"r1\",\"t\":{\"a\":[true,null,"
                     "false],\"b\":1e0}}");
    ASSERT_STR_EQ(a, b);
    free(a);
    free(b);
}

TEST(json_canonical_unifies_number_forms)
{
    char *a = canonical_of("{\"speed\":90,\"gap\":12.5,\"z\":0}");
    char *b = canonical_of("{\"speed\":90.0,\"gap\":12.50,\"z\":-0.0}");
    char *c = canonical_of("{\"gap\":1.25e1,\"z\":0e3,\"speed\":9.0e1}");

    ASSERT_STR_EQ(a, "{\"gap\":125e-1,\"speed\":9e1,\"z\":0}");
    ASSERT_STR_EQ(a, b);
    ASSERT_STR_EQ(a, c);
    free(a);
    free(b);
    free(c);
}

TEST(json_canonical_detects_changed_value)
{
    char *a = canonical_of("{\"racer\":\"r1\",\"speed\":90}");
    char *b = canonical_of("{\"racer\":\"r1\",\"speed\":91}");
    char *c = canonical_of("{\"racer\":\"r2\",\"speed\":90}");
    char *d = canonical_of("{\"racer\":\"r1\",\"speed\":\"90\"}");
    char *e = canonical_of("{\"racer\":\"r1\",\"Speed\":90}");

    ASSERT_TRUE(strcmp(a, b) != 0);
    ASSERT_TRUE(strcmp(a, c) != 0);
    ASSERT_TRUE(strcmp(a, d) != 0);
    ASSERT_TRUE(strcmp(a, e) != 0);
    free(a);
    free(b);
    free(c);
    free(d);
    free(e);
}

TEST(json_canonical_orders_keys_bytewise)
{
    char *a = canonical_of("{\"b\":1,\"\\u00e9\":2,\"ab\":3,\"a\\u0000\":4,"
                           "\"a\":5,\"Z\":6,\"\":7}");

    ASSERT_MEM_EQ(a, strlen(a),
                  "{\"\":7e0,\"Z\":6e0,\"a\":5e0,\"a\\u0000\":4e0,\"ab\":3e0,"
                  "\"b\":1e0,\"\xc3\xa9\":2e0}",
                  strlen("{\"\":7e0,\"Z\":6e0,\"a\":5e0,\"a\\u0000\":4e0,"
                         "\"ab\":3e0,\"b\":1e0,\"\xc3\xa9\":2e0}"));
    free(a);
}

TEST(json_canonical_escapes_minimally)
{
    char *a = canonical_of("[\"q\\\"b\\\\s\\/n\\nt\\tu\\u0001\\u001F"
                           "\\u007f\\u00e9\\u0000end\"]");
    const char expected[] = "[\"q\\\"b\\\\s/n\\u000at\\u0009u\\u0001\\u001f"
                            "\x7f\xc3\xa9\\u0000end\"]";

    ASSERT_MEM_EQ(a, strlen(a), expected, sizeof expected - 1);
    free(a);
}

TEST(json_canonical_escapes_every_position)
{
    /* Each probe as written in JSON input and as canonical text. */
    static const struct {
        const char *input;
        const char *output;
    } probes[] = {
        {"\\u0000", "\\u0000"},
        {"\\u001f", "\\u001f"},
        {"\\n", "\\u000a"},
        {"\\\"", "\\\""},
        {"\\\\", "\\\\"},
        {" ", " "},
        {"!", "!"},
        {"#", "#"},
        {"[", "["},
        {"]", "]"},
        {"\\u007f", "\x7f"},
        {"\xc3\xa9", "\xc3\xa9"},
        {"\xef\xbf\xbf", "\xef\xbf\xbf"},
    };
    char input[64], expected[64];

    for (size_t k = 0; k < sizeof probes / sizeof probes[0]; k++) {
        for (size_t len = 0; len <= 20; len++) {
            for (size_t at = 0; at <= len; at++) {
                size_t n = 0, e = 0;
                input[n++] = '"';
                expected[e++] = '"';
                for (size_t i = 0; i <= len; i++) {
                    if (i == at) {
                        memcpy(input + n, probes[k].input,
                               strlen(probes[k].input));
                        n += strlen(probes[k].input);
                        memcpy(expected + e, probes[k].output,
                               strlen(probes[k].output));
                        e += strlen(probes[k].output);
                    }
                    if (i < len) {
                        input[n++] = (char)('a' + i % 26);
                        expected[e++] = (char)('a' + i % 26);
                    }
                }
                input[n++] = '"';
                input[n] = '\0';
                expected[e++] = '"';

                char *text = canonical_of(input);
                if (strlen(text) != e || memcmp(text, expected, e) != 0)
                    test_fail(__FILE__, __LINE__,
                              "probe %zu, length %zu, at %zu: got %s", k, len,
                              at, text);
                free(text);

                /* The same string as a member name. */
                char member[80], member_expected[80];
                snprintf(member, sizeof member, "{%s:0}", input);
                snprintf(member_expected, sizeof member_expected, "{%.*s:0}",
                         (int)e, expected);
                text = canonical_of(member);
                if (strlen(text) != e + 4 ||
                    memcmp(text, member_expected, e + 4) != 0)
                    test_fail(__FILE__, __LINE__,
                              "name: probe %zu, length %zu, at %zu: got %s", k,
                              len, at, text);
                free(text);
            }
        }
    }
}

/* Append the members "k<count-1>" down to "k0", each with an odd number so
 * that its canonical form is the number and "e0". */
static void write_reversed_object(struct strbuf *sb, int count)
{
    sb_putc(sb, '{');
    for (int i = count - 1; i >= 0; i--)
        sb_printf(sb, "\"k%02d\":%d%s", i, 2 * i + 1, i > 0 ? "," : "");
    sb_putc(sb, '}');
}

/* Append the same members in canonical order and form. */
static void write_sorted_object(struct strbuf *sb, int count)
{
    sb_putc(sb, '{');
    for (int i = 0; i < count; i++)
        sb_printf(sb, "%s\"k%02d\":%de0", i > 0 ? "," : "", i, 2 * i + 1);
    sb_putc(sb, '}');
}

TEST(json_canonical_sorts_objects_of_any_size)
{
    static const int sizes[] = {0, 1, 2, 15, 16, 17, 32, 33, 100};

    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        struct strbuf in, want;
        sb_init(&in, 1 << 20);
        sb_init(&want, 1 << 20);
        write_reversed_object(&in, sizes[k]);
        write_sorted_object(&want, sizes[k]);

        char *text = canonical_of(in.data);
        if (strcmp(text, want.data) != 0)
            test_fail(__FILE__, __LINE__, "%d members: got %s", sizes[k], text);
        free(text);
        sb_free(&in);
        sb_free(&want);
    }
}

/* Check that the canonical form of text fits a strbuf whose maximum is
 * its exact length, after a prefix of 0 to 2 bytes, and not one byte
 * less. */
static void check_canonical_fits_exactly(const char *text, size_t len)
{
    struct sjson_doc *doc = parse_ok(text, len);
    struct strbuf full;
    sb_init(&full, 1 << 20);
    ASSERT_EQ(sjson_canonical(sjson_doc_root(doc), &full), 0);

    for (size_t prefix = 0; prefix <= 2; prefix++) {
        struct strbuf sb;
        sb_init(&sb, full.len + prefix);
        sb_append(&sb, "xy", prefix);
        ASSERT_EQ(sjson_canonical(sjson_doc_root(doc), &sb), 0);
        ASSERT_MEM_EQ(sb.data + prefix, sb.len - prefix, full.data, full.len);
        sb_free(&sb);

        sb_init(&sb, full.len + prefix - 1);
        sb_append(&sb, "xy", prefix);
        ASSERT_EQ(sjson_canonical(sjson_doc_root(doc), &sb), -1);
        sb_free(&sb);
    }
    sb_free(&full);
    sjson_doc_free(doc);
}

TEST(json_canonical_fits_max_exactly)
{
    /* A document whose text fits on the stack of sjson_canonical. */
    const char *small = "{\"b\":[1,-2.50,\"t\\n\"],\"a\":{\"c\":null}}";
    check_canonical_fits_exactly(small, strlen(small));

    /* Over 1 KiB of output, 40 nested arrays and two objects with more
     * members than fit on the stack. */
    struct strbuf in;
    sb_init(&in, 1 << 20);
    sb_puts(&in, "[\"");
    for (int i = 0; i < 300; i++)
        sb_puts(&in, "\\u0001");
    sb_puts(&in, "\",");
    write_reversed_object(&in, 40);
    sb_putc(&in, ',');
    for (int i = 0; i < 40; i++)
        sb_putc(&in, '[');
    write_reversed_object(&in, 40);
    for (int i = 0; i < 40; i++)
        sb_putc(&in, ']');
    sb_putc(&in, ']');
    ASSERT_EQ(sb_error(&in), 0);
    check_canonical_fits_exactly(in.data, in.len);
    sb_free(&in);
}

TEST(json_canonical_reports_full_buffer)
{
    struct sjson_doc *doc = parse_ok("{\"a\":[1,2,3]}", 13);
    struct strbuf sb;

    sb_init(&sb, 8);
    ASSERT_EQ(sjson_canonical(sjson_doc_root(doc), &sb), -1);
    sb_free(&sb);

    sb_init(&sb, 64);
    ASSERT_EQ(sjson_canonical(sjson_doc_root(doc), &sb), 0);
    ASSERT_STR_EQ(sb.data, "{\"a\":[1e0,2e0,3e0]}");
    sb_free(&sb);
    sjson_doc_free(doc);
}

TEST(json_canonical_rejects_huge_exponent)
{
    struct sjson_doc *doc = parse_ok("[1e2000000000]", 14);
    struct strbuf sb;

    sb_init(&sb, 64);
    ASSERT_EQ(sjson_canonical(sjson_doc_root(doc), &sb), -1);
    sb_free(&sb);
    sjson_doc_free(doc);
}

/* Decode text, which must be valid, and compare with the expected bytes. */
static void check_decode(const char *text, const char *expected)
{
    uint8_t out[BASE64_DECODED_MAX(64)];
    size_t out_len = 0;

    if (base64_decode(text, strlen(text), out, &out_len) != 0)
        test_fail(__FILE__, __LINE__, "\"%s\": rejected", text);
    ASSERT_MEM_EQ(out, out_len, expected, strlen(expected));
}

/* Decode n bytes of text and return the result code. */
static int decode_code(const char *text, size_t n)
{
    uint8_t out[BASE64_DECODED_MAX(64)];
    size_t out_len;

    ASSERT_TRUE(n <= 64);
    return base64_decode(text, n, out, &out_len);
}

TEST(base64_matches_rfc_vectors)
{
    static const char *const plain[] = {"",     "f",     "fo",    "foo",
                                        "foob", "fooba", "foobar"};
    static const char *const encoded[] = {
        "", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    char out[BASE64_ENCODED_LEN(6) + 1];

    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
        size_t n =
            base64_encode((const uint8_t *)plain[i], strlen(plain[i]), out);
        ASSERT_EQ(n, strlen(encoded[i]));
        ASSERT_STR_EQ(out, encoded[i]);
        check_decode(encoded[i], plain[i]);
    }
}

TEST(base64_round_trips_lengths_0_to_64)
{
    uint8_t data[64], decoded[BASE64_DECODED_MAX(BASE64_ENCODED_LEN(64))];
    char text[BASE64_ENCODED_LEN(64) + 1];

    for (size_t len = 0; len <= 64; len++) {
        for (size_t i = 0; i < len; i++)
            data[i] = (uint8_t)(i * 37 + len * 101 + 0x80);
        size_t n = base64_encode(data, len, text);
        ASSERT_EQ(n, BASE64_ENCODED_LEN(len));
        ASSERT_EQ(strlen(text), n);

        size_t out_len = 999;
        ASSERT_EQ(base64_decode(text, n, decoded, &out_len), 0);
        ASSERT_MEM_EQ(decoded, out_len, data, len);
        ASSERT_TRUE(out_len <= BASE64_DECODED_MAX(n));
    }
}

TEST(base64_round_trips_all_byte_values)
{
    uint8_t data[256], decoded[BASE64_DECODED_MAX(BASE64_ENCODED_LEN(256))];
    char text[BASE64_ENCODED_LEN(256) + 1];
    size_t out_len;

    for (size_t i = 0; i < 256; i++)
        data[i] = (uint8_t)i;
    size_t n = base64_encode(data, sizeof data, text);
    ASSERT_EQ(base64_decode(text, n, decoded, &out_len), 0);
    ASSERT_MEM_EQ(decoded, out_len, data, sizeof data);
    ASSERT_TRUE(strncmp(text, "AAECAwQFBgcICQoL", 16) == 0);
    ASSERT_STR_EQ(text + n - 8, "/P3+/w==");
}

TEST(base64_rejects_bad_length)
{
    ASSERT_EQ(decode_code("Z", 1), -1);
    ASSERT_EQ(decode_code("Zg", 2), -1);
    ASSERT_EQ(decode_code("Zg=", 3), -1);
    ASSERT_EQ(decode_code("Zm9", 3), -1);
    ASSERT_EQ(decode_code("Zm9vY", 5), -1);
    ASSERT_EQ(decode_code("Zm9vYg=", 7), -1);
    ASSERT_EQ(decode_code("Zm9vYg===", 9), -1);
}

TEST(base64_rejects_bad_characters)
{
    ASSERT_EQ(decode_code("Zm9-", 4), -1);
    ASSERT_EQ(decode_code("Zm9_", 4), -1);
    ASSERT_EQ(decode_code("Zm 9", 4), -1);
    ASSERT_EQ(decode_code("Zm9\n", 4), -1);
    ASSERT_EQ(decode_code("Zm9\0", 4), -1);
    ASSERT_EQ(decode_code("Zm9\x80", 4), -1);
    ASSERT_EQ(decode_code("\xffm9v", 4), -1);
    ASSERT_EQ(decode_code("Zm9vZm.v", 8), -1);
    ASSERT_EQ(decode_code("Zm9vZm9v*g==", 12), -1);
    ASSERT_EQ(decode_code("Zm9vZm9vY*==", 12), -1);
    ASSERT_EQ(decode_code("Zm9vZm9vYm*=", 12), -1);
}

TEST(base64_rejects_bad_byte_at_every_position)
{
    static const unsigned char bad[] = {0x00, ' ',  '-',  '=',  '_',
                                        '.',  0x7f, 0x80, 0xc3, 0xff};
    char text[65];
    uint8_t data[48];

    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 37 + 11);
    ASSERT_EQ(base64_encode(data, sizeof data, text), 64);

    /* Without padding every position lies in a full quad, the last one
     * included. */
    for (size_t k = 0; k < sizeof bad; k++) {
        for (size_t at = 0; at < 64; at++) {
            char copy[64];
            memcpy(copy, text, 64);
            copy[at] = (char)bad[k];
            if (decode_code(copy, 64) != -1)
                test_fail(__FILE__, __LINE__, "byte 0x%02x at %zu accepted",
                          bad[k], at);
        }
    }
    ASSERT_EQ(decode_code(text, 64), 0);
}

TEST(base64_rejects_bad_padding)
{
    ASSERT_EQ(decode_code("====", 4), -1);
    ASSERT_EQ(decode_code("Z===", 4), -1);
    ASSERT_EQ(decode_code("=m9v", 4), -1);
    ASSERT_EQ(decode_code("Z=9v", 4), -1);
    ASSERT_EQ(decode_code("Zm=v", 4), -1);
    ASSERT_EQ(decode_code("Zg=A", 4), -1);
    ASSERT_EQ(decode_code("Zg==Zm9v", 8), -1);
    ASSERT_EQ(decode_code("Zm8=Zm9v", 8), -1);
    ASSERT_EQ(decode_code("Zm9v====", 8), -1);
    ASSERT_EQ(decode_code("Zg==", 4), 0);
}

TEST(base64_rejects_nonzero_unused_bits)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char text[5];

    /* With "==" the second character's low 4 bits are unused, and with
     * one '=' the third character's low 2 bits are. */
    for (int v = 0; v < 64; v++) {
        snprintf(text, sizeof text, "Z%c==", alphabet[v]);
        ASSERT_EQ(decode_code(text, 4), v % 16 == 0 ? 0 : -1);
        snprintf(text, sizeof text, "Zm%c=", alphabet[v]);
        ASSERT_EQ(decode_code(text, 4), v % 4 == 0 ? 0 : -1);
    }
    ASSERT_EQ(decode_code("Zh==", 4), -1);
    ASSERT_EQ(decode_code("Zm9=", 4), -1);
}

TEST(base64_decodes_empty_input)
{
    uint8_t out[BASE64_DECODED_MAX(0)];
    size_t out_len = 7;

    ASSERT_EQ(base64_decode("", 0, out, &out_len), 0);
    ASSERT_EQ(out_len, 0);
}

/* Return n copies of digit after first (owned). */
static char *make_seqnum(char first, char digit, size_t n)
{
    char *s = malloc(n + 2);

    ASSERT_TRUE(s != NULL);
    s[0] = first;
    memset(s + 1, digit, n);
    s[n + 1] = '\0';
    return s;
}

TEST(seqnum_valid_accepts_decimal_forms)
{
    char *max = make_seqnum('9', '9', SEQNUM_MAX_DIGITS - 1);

    ASSERT_TRUE(seqnum_valid("0"));
    ASSERT_TRUE(seqnum_valid("1"));
    ASSERT_TRUE(seqnum_valid("10"));
    ASSERT_TRUE(seqnum_valid(
        "49590338271490256608559692538361571095921575989136588898"));
    ASSERT_EQ(strlen(max), SEQNUM_MAX_DIGITS);
    ASSERT_TRUE(seqnum_valid(max));
    free(max);
}

TEST(seqnum_valid_rejects_other_forms)
{
    char *too_long = make_seqnum('1', '0', SEQNUM_MAX_DIGITS);

    ASSERT_FALSE(seqnum_valid(NULL));
    ASSERT_FALSE(seqnum_valid(""));
    ASSERT_FALSE(seqnum_valid("00"));
    ASSERT_FALSE(seqnum_valid("01"));
    ASSERT_FALSE(seqnum_valid("-1"));
    ASSERT_FALSE(seqnum_valid("+1"));
    ASSERT_FALSE(seqnum_valid(" 1"));
    ASSERT_FALSE(seqnum_valid("1 "));
    ASSERT_FALSE(seqnum_valid("1a"));
    ASSERT_FALSE(seqnum_valid("1.0"));
    ASSERT_FALSE(seqnum_valid("0x1"));
    ASSERT_FALSE(seqnum_valid("1e5"));
    ASSERT_FALSE(seqnum_valid(too_long));
    free(too_long);
}

TEST(seqnum_cmp_orders_by_length)
{
    char *shorter = make_seqnum('9', '9', 54);
    char *longer = make_seqnum('1', '0', 55);

    ASSERT_EQ(strlen(shorter), 55);
    ASSERT_EQ(strlen(longer), 56);
    ASSERT_TRUE(seqnum_cmp(shorter, longer) < 0);
    ASSERT_TRUE(seqnum_cmp(longer, shorter) > 0);
    ASSERT_TRUE(seqnum_cmp("0", "1") < 0);
    ASSERT_TRUE(seqnum_cmp("9", "10") < 0);
    free(shorter);
    free(longer);
}

TEST(seqnum_cmp_equal_strings)
{
    char a[] = "49590338271490256608559692538361571095921575989136588898";
    char b[] = "49590338271490256608559692538361571095921575989136588898";

    ASSERT_EQ(seqnum_cmp(a, b), 0);
    ASSERT_EQ(seqnum_cmp(a, a), 0);
    ASSERT_EQ(seqnum_cmp("0", "0"), 0);
}

TEST(seqnum_cmp_compares_equal_lengths)
{
    const char *a = "49590338271490256608559692538361571095921575989136588898";
    const char *b = "49590338271490256608559692538361571095921575989136588899";
    const char *c = "59590338271490256608559692538361571095921575989136588898";

    ASSERT_TRUE(seqnum_cmp(a, b) < 0);
    ASSERT_TRUE(seqnum_cmp(b, a) > 0);
    ASSERT_TRUE(seqnum_cmp(c, b) > 0);
    ASSERT_TRUE(seqnum_cmp("12", "21") < 0);
}

TEST(seqnum_cmp_ext_orders_sub_sequence)
{
    const char *a = "49590338271490256608559692538361571095921575989136588898";
    const char *b = "49590338271490256608559692538361571095921575989136588899";

    ASSERT_EQ(seqnum_cmp_ext(a, 0, a, 0), 0);
    ASSERT_EQ(seqnum_cmp_ext(a, 7, a, 7), 0);
    ASSERT_TRUE(seqnum_cmp_ext(a, 0, a, 1) < 0);
    ASSERT_TRUE(seqnum_cmp_ext(a, 2, a, 1) > 0);
    ASSERT_TRUE(seqnum_cmp_ext(a, INT64_MIN, a, INT64_MAX) < 0);
    ASSERT_TRUE(seqnum_cmp_ext(a, INT64_MAX, a, INT64_MIN) > 0);

    /* The sequence number decides before the sub-sequence. */
    ASSERT_TRUE(seqnum_cmp_ext(a, 1000, b, 0) < 0);
    ASSERT_TRUE(seqnum_cmp_ext(b, 0, a, 1000) > 0);
    ASSERT_TRUE(seqnum_cmp_ext("99", 5, "100", 0) < 0);
}

/* ---- strbuf number formatting ----------------------------------------- */

/* Each value must come out as printf's PRId64 / PRIu64 writes it. */
TEST(strbuf_formats_int64_like_printf)
{
    static const int64_t values[] = {
        0, 1, -1, 9, 10, -10, 1234567890, INT64_MAX, INT64_MIN, INT64_MIN + 1};
    struct strbuf sb;
    char want[32];

    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        sb_init(&sb, 64);
        ASSERT_EQ(sb_int64(&sb, values[i]), 0);
        snprintf(want, sizeof want, "%" PRId64, values[i]);
        ASSERT_MEM_EQ(sb.data, sb.len, want, strlen(want));
        sb_free(&sb);
    }
    sb_init(&sb, 64);
    ASSERT_EQ(sb_uint64(&sb, UINT64_MAX), 0);
    snprintf(want, sizeof want, "%" PRIu64, UINT64_MAX);
    ASSERT_MEM_EQ(sb.data, sb.len, want, strlen(want));
    sb_free(&sb);
}

TEST(strbuf_fixed4_trims_zeros)
{
    static const struct {
        int64_t v;
        const char *want;
    } cases[] = {
        {0, "0"},
        {10000, "1"},
        {-10000, "-1"},
        {12345, "1.2345"},
        {12340, "1.234"},
        {10001, "1.0001"},
        {-5, "-0.0005"},
        {1234500000, "123450"},
        {1200, "0.12"},
        {-12000, "-1.2"},
        {INT64_MAX, "922337203685477.5807"},
        {INT64_MIN, "-922337203685477.5808"},
    };
    struct strbuf sb;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sb_init(&sb, 64);
        ASSERT_EQ(sb_fixed4(&sb, cases[i].v), 0);
        ASSERT_MEM_EQ(sb.data, sb.len, cases[i].want, strlen(cases[i].want));
        sb_free(&sb);
    }
}
