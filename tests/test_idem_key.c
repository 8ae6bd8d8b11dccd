/* Tests of the idempotency key expressions and payload hashes. */
#include "tests/testlib.h"

#include "common/sjson.h"
#include "common/strbuf.h"
#include "store/idempotency.h"

/* Record A of the pinned vectors, as the tests select keys from it. */
static const char record_a[] =
    "{\"uuid\":\"u-0901\",\"event\":\"update\","
    "\"deviceTimestamp\":1767225609000,\"second\":9,\"raceId\":\"R-7\","
    "\"name\":\"Racer 11\",\"racerId\":\"rc-11\",\"classId\":\"B\","
    "\"cadence\":90,\"resistance\":12.5}";

/* Parse len bytes of JSON, which must be valid, into a document (owned). */
static struct sjson_doc *parse_len(const char *json, size_t len)
{
    struct sjson_doc *doc = NULL;
    struct sjson_err err;

    if (sjson_parse(json, len, NULL, &doc, &err) != SJSON_OK)
        test_fail(__FILE__, __LINE__, "parse of %.*s failed at %zu: %s",
                  (int)len, json, err.offset, err.message);
    return doc;
}

static struct sjson_doc *parse(const char *json)
{
    return parse_len(json, strlen(json));
}

/* Compile text, which must be valid (owned result). */
static struct idem_keyexpr *compile(const char *text)
{
    struct idem_keyexpr *expr = NULL;
    char err[512];

    if (idem_keyexpr_compile(text, &expr, err, sizeof err) != 0)
        test_fail(__FILE__, __LINE__, "compile of %s failed: %s", text, err);
    ASSERT_TRUE(expr != NULL);
    return expr;
}

/* Evaluate expr_text on len bytes of JSON. Returns what
 * idem_keyexpr_eval returned, and the key bytes in key (caller frees). */
static int key_of_len(const char *expr_text, const char *json, size_t len,
                      struct strbuf *key)
{
    struct idem_keyexpr *expr = compile(expr_text);
    struct sjson_doc *doc = parse_len(json, len);

    sb_init(key, IDEM_MAX_KEY);
    int rc = idem_keyexpr_eval(expr, sjson_doc_root(doc), key);
    sjson_doc_free(doc);
    idem_keyexpr_free(expr);
    return rc;
}

static int key_of(const char *expr_text, const char *json, struct strbuf *key)
{
    return key_of_len(expr_text, json, strlen(json), key);
}

/* Check that expr_text selects exactly the key bytes expected from json. */
#define ASSERT_KEY(expr_text, json, expected)                                  \
    do {                                                                       \
        struct strbuf key_;                                                    \
        ASSERT_EQ(key_of(expr_text, json, &key_), 1);                          \
        ASSERT_MEM_EQ(key_.data, key_.len, expected, sizeof(expected) - 1);    \
        sb_free(&key_);                                                        \
    } while (0)

/* Check that expr_text finds the key missing in json and appends nothing. */
#define ASSERT_KEY_MISSING(expr_text, json)                                    \
    do {                                                                       \
        struct strbuf key_;                                                    \
        ASSERT_EQ(key_of(expr_text, json, &key_), 0);                          \
        ASSERT_EQ(key_.len, 0);                                                \
        sb_free(&key_);                                                        \
    } while (0)

/* A pointer that no compile returns, so a test can see *out overwritten. */
static char unset_marker;
#define UNSET_EXPR ((struct idem_keyexpr *)(void *)&unset_marker)

/* Compile text, which must fail, and check the whole message. */
static void assert_compile_error(const char *text, const char *expected)
{
    struct idem_keyexpr *expr = UNSET_EXPR;
    char err[512] = "";

    if (idem_keyexpr_compile(text, &expr, err, sizeof err) != -1)
        test_fail(__FILE__, __LINE__, "compile of %s succeeded", text);
    ASSERT_TRUE(expr == NULL);
    ASSERT_STR_EQ(err, expected);
}

static void hash_of(const char *expr_text, const char *json,
                    uint8_t out[IDEM_HASH_LEN])
{
    struct idem_keyexpr *expr = expr_text ? compile(expr_text) : NULL;
    struct sjson_doc *doc = parse(json);

    ASSERT_EQ(idem_payload_hash(expr, sjson_doc_root(doc), out), 0);
    sjson_doc_free(doc);
    idem_keyexpr_free(expr);
}

/* ---- pinned vectors ------------------------------------------------- */

#define MAX_VECTORS 64

struct vector {
    char name[64];
    char hex[2 * IDEM_HASH_LEN + 1];
    struct strbuf json;
};

static struct vector vectors[MAX_VECTORS];
static size_t vector_count;

/* Add one "name<TAB>hex<TAB>json" line, or a continuation line that starts
 * with a TAB, to vectors (the format is described in the file). */
static void add_vector_line(const char *line, size_t len, int line_no)
{
    if (line[0] == '\t') {
        if (vector_count == 0)
            test_fail(__FILE__, __LINE__, "line %d continues no vector",
                      line_no);
        struct vector *v = &vectors[vector_count - 1];
        sb_putc(&v->json, '\n');
        sb_append(&v->json, line + 1, len - 1);
        return;
    }

    const char *tab1 = memchr(line, '\t', len);
    const char *tab2 =
        tab1 ? memchr(tab1 + 1, '\t', len - (size_t)(tab1 + 1 - line)) : NULL;
    if (tab2 == NULL || vector_count == MAX_VECTORS)
        test_fail(__FILE__, __LINE__, "line %d: expected name<TAB>hex<TAB>json",
                  line_no);
    struct vector *v = &vectors[vector_count++];
    size_t name_len = (size_t)(tab1 - line);
    ASSERT_TRUE(name_len < sizeof v->name);
    ASSERT_EQ(tab2 - tab1 - 1, 2 * IDEM_HASH_LEN);
    memcpy(v->name, line, name_len);
    memcpy(v->hex, tab1 + 1, 2 * IDEM_HASH_LEN);
    sb_init(&v->json, 1024 * 1024);
    sb_append(&v->json, tab2 + 1, len - (size_t)(tab2 + 1 - line));
}

/* Read tests/data/idempotency-vectors.txt into vectors. */
static void load_vectors(void)
{
    const char *src = getenv("PODIUM_SOURCE_DIR");
    char path[4096];
    char line[4096];
    int line_no = 0;

    if (src == NULL)
        test_fail(__FILE__, __LINE__,
                  "PODIUM_SOURCE_DIR is not set: run through ctest");
    snprintf(path, sizeof path, "%s/tests/data/idempotency-vectors.txt", src);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        test_fail(__FILE__, __LINE__, "cannot open %s", path);
    while (fgets(line, sizeof line, f) != NULL) {
        size_t len = strlen(line);
        line_no++;
        if (len == 0 || line[len - 1] != '\n')
            test_fail(__FILE__, __LINE__, "line %d is too long", line_no);
        line[--len] = '\0';
        if (len > 0 && line[0] != '#')
            add_vector_line(line, len, line_no);
    }
    fclose(f);
    for (size_t i = 0; i < vector_count; i++)
        ASSERT_EQ(sb_error(&vectors[i].json), 0);
}

static void free_vectors(void)
{
    for (size_t i = 0; i < vector_count; i++)
        sb_free(&vectors[i].json);
    vector_count = 0;
}

static const struct vector *find_vector(const char *name)
{
    for (size_t i = 0; i < vector_count; i++)
        if (strcmp(vectors[i].name, name) == 0)
            return &vectors[i];
    test_fail(__FILE__, __LINE__, "no vector named %s", name);
}

static void to_hex(const uint8_t hash[IDEM_HASH_LEN],
                   char hex[2 * IDEM_HASH_LEN + 1])
{
    for (size_t i = 0; i < IDEM_HASH_LEN; i++)
        snprintf(hex + 2 * i, 3, "%02x", hash[i]);
}

/* ---- expression forms ----------------------------------------------- */

TEST(idem_key_field_gives_canonical_string)
{
    ASSERT_KEY("uuid", record_a, "\"u-0901\"");
    ASSERT_KEY("raceId", record_a, "\"R-7\"");
    ASSERT_KEY("_x9", "{\"_x9\":\"v\"}", "\"v\"");
}

TEST(idem_key_dotted_path_selects_nested)
{
    const char *json = "{\"device\":{\"id\":\"d-1\",\"fw\":{\"major\":2}},"
                       "\"id\":\"top\"}";

    ASSERT_KEY("device.id", json, "\"d-1\"");
    ASSERT_KEY("device.fw.major", json, "2e0");
    ASSERT_KEY("device.fw", json, "{\"major\":2e0}");
    ASSERT_KEY_MISSING("device.serial", json);
    ASSERT_KEY_MISSING("id.device", json);
}

TEST(idem_key_quoted_name_selects_member)
{
    const char *json = "{\"race-id\":\"R-7\",\"a.b\":\"dotted\","
                       "\"a\":{\"b\":\"nested\"},\"q\\\"t\":1,\"s/l\":2,"
                       "\"tab\\t\":3,\"caf\\u00e9\":4,\"\\ud83d\\udeb4\":5,"
                       "\"A\":6,\"back\\\\slash\":7}";

    ASSERT_KEY("\"race-id\"", json, "\"R-7\"");
    ASSERT_KEY("\"a.b\"", json, "\"dotted\"");
    ASSERT_KEY("\"a\".\"b\"", json, "\"nested\"");
    ASSERT_KEY("a.\"b\"", json, "\"nested\"");
    ASSERT_KEY("\"q\\\"t\"", json, "1e0");
    ASSERT_KEY("\"s\\/l\"", json, "2e0");
    ASSERT_KEY("\"s/l\"", json, "2e0");
    ASSERT_KEY("\"tab\\t\"", json, "3e0");
    ASSERT_KEY("\"caf\\u00e9\"", json, "4e0");
    ASSERT_KEY("\"caf\xc3\xa9\"", json, "4e0");
    ASSERT_KEY("\"\\uD83D\\uDEB4\"", json, "5e0");
    ASSERT_KEY("\"\\u0041\"", json, "6e0");
    ASSERT_KEY("\"back\\\\slash\"", json, "7e0");
}

TEST(idem_key_quoted_name_keeps_nul)
{
    static const char json[] = "{\"a\\u0000b\":\"with-nul\",\"a\":\"plain\"}";

    ASSERT_KEY("\"a\\u0000b\"", json, "\"with-nul\"");
    ASSERT_KEY("\"a\"", json, "\"plain\"");
}

TEST(idem_key_list_gives_json_array)
{
    const char *json = "{\"raceId\":\"R-7\",\"uuid\":\"u-0901\","
                       "\"device\":{\"id\":\"d-1\"},\"race-no\":12}";

    ASSERT_KEY("[raceId, uuid]", json, "[\"R-7\",\"u-0901\"]");
    ASSERT_KEY("[uuid,raceId]", json, "[\"u-0901\",\"R-7\"]");
    ASSERT_KEY("[device.id, \"race-no\"]", json, "[\"d-1\",12e0]");
    ASSERT_KEY("[uuid]", json, "[\"u-0901\"]");
    ASSERT_KEY("[device]", json, "[{\"id\":\"d-1\"}]");
}

TEST(idem_key_whitespace_around_tokens)
{
    const char *json = "{\"raceId\":\"R-7\",\"device\":{\"id\":\"d-1\"}}";

    ASSERT_KEY(" \t\r\n[ raceId ,\n device . id\t] \n", json,
               "[\"R-7\",\"d-1\"]");
    ASSERT_KEY("  device\n.\n\"id\"  ", json, "\"d-1\"");
}

TEST(idem_key_limits_accepted_at_maximum)
{
    char text[300];
    struct idem_keyexpr *expr;

    /* 16 list elements and 16 identifiers in a path. */
    expr = compile("[a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p]");
    idem_keyexpr_free(expr);
    expr = compile("a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p");
    idem_keyexpr_free(expr);

    /* A 256-byte identifier. */
    memset(text, 'x', 256);
    text[256] = '\0';
    expr = compile(text);
    idem_keyexpr_free(expr);
}

TEST(idem_key_deep_path_evaluates)
{
    ASSERT_KEY("a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p",
               "{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":{\"f\":{\"g\":{\"h\":{"
               "\"i\":{\"j\":{\"k\":{\"l\":{\"m\":{\"n\":{\"o\":{\"p\":"
               "true}}}}}}}}}}}}}}}}",
               "true");
}

/* ---- compile errors ------------------------------------------------- */

TEST(idem_key_compile_errors_name_offset)
{
    assert_compile_error(
        "[raceId,",
        "invalid key expression \"[raceId,\": expected an identifier at "
        "offset 8");

    /* Nothing to parse. */
    assert_compile_error("", "invalid key expression \"\": expected an "
                             "identifier or '[' at offset 0");
    assert_compile_error("  ", "invalid key expression \"  \": expected an "
                               "identifier or '[' at offset 2");

    /* An element that is no identifier: indexes, nested lists. */
    assert_compile_error("[]", "invalid key expression \"[]\": expected an "
                               "identifier at offset 1");
    assert_compile_error("[0]", "invalid key expression \"[0]\": expected "
                                "an identifier at offset 1");
    assert_compile_error("[a,[b]]", "invalid key expression \"[a,[b]]\": "
                                    "expected an identifier at offset 3");

    /* A path that is not identifiers joined by dots. */
    assert_compile_error("uuid.", "invalid key expression \"uuid.\": "
                                  "expected an identifier at offset 5");
    assert_compile_error("uuid..id", "invalid key expression \"uuid..id\": "
                                     "expected an identifier at offset 5");
    assert_compile_error(".uuid", "invalid key expression \".uuid\": "
                                  "expected an identifier or '[' at offset 0");
    assert_compile_error("9lives", "invalid key expression \"9lives\": "
                                   "expected an identifier or '[' at offset "
                                   "0");
    assert_compile_error("a.*", "invalid key expression \"a.*\": expected "
                                "an identifier at offset 2");

    /* A token where a separator or the end belongs. */
    assert_compile_error("[a b]", "invalid key expression \"[a b]\": "
                                  "expected '.', ',' or ']' at offset 3");
    assert_compile_error("[a", "invalid key expression \"[a\": expected "
                               "'.', ',' or ']' at offset 2");
    assert_compile_error("[a] x", "invalid key expression \"[a] x\": "
                                  "expected the end of the expression at "
                                  "offset 4");
    assert_compile_error("a b", "invalid key expression \"a b\": expected "
                                "'.' or the end of the expression at offset "
                                "2");
    assert_compile_error("a[0]", "invalid key expression \"a[0]\": expected "
                                 "'.' or the end of the expression at offset "
                                 "1");
}

TEST(idem_key_compile_errors_hint_quotes)
{
    assert_compile_error(
        "race-id",
        "invalid key expression \"race-id\": expected '.' or the end of the "
        "expression (a name with other characters needs double quotes, as "
        "in \"race-id\") at offset 4");
    assert_compile_error(
        "[race-id]",
        "invalid key expression \"[race-id]\": expected '.', ',' or ']' (a "
        "name with other characters needs double quotes, as in "
        "\"race-id\") at offset 5");
}

TEST(idem_key_compile_errors_quoted_names)
{
    assert_compile_error("\"abc", "invalid key expression \"\\\"abc\": "
                                  "expected a '\"' to close the quoted "
                                  "identifier at offset 4");
    assert_compile_error("\"\"", "invalid key expression \"\\\"\\\"\": "
                                 "expected at least one character between "
                                 "the quotes at offset 0");
    assert_compile_error("\"a\\x\"", "invalid key expression "
                                     "\"\\\"a\\\\x\\\"\": expected an escape "
                                     "(\\\" \\\\ \\/ \\b \\f \\n \\r \\t or "
                                     "\\uXXXX) at offset 2");
    assert_compile_error("\"a\\u00g0\"",
                         "invalid key expression \"\\\"a\\\\u00g0\\\"\": "
                         "expected 4 hex digits after \\u at offset 6");
    assert_compile_error("\"\\ud83d\"",
                         "invalid key expression \"\\\"\\\\ud83d\\\"\": "
                         "expected a \\u escape of a low surrogate at "
                         "offset 7");
    assert_compile_error("\"\\ud83d\\u0041\"",
                         "invalid key expression "
                         "\"\\\"\\\\ud83d\\\\u0041\\\"\": expected a \\u "
                         "escape of a low surrogate at offset 7");
    assert_compile_error("\"\\udeb4\"",
                         "invalid key expression \"\\\"\\\\udeb4\\\"\": "
                         "expected a character, not a lone low surrogate "
                         "at offset 1");
    assert_compile_error("\"a\tb\"", "invalid key expression "
                                     "\"\\\"a\\x09b\\\"\": expected an escape "
                                     "such as \\n in place of the control "
                                     "byte 0x09 at offset 2");
    assert_compile_error("\"a\xc3\"", "invalid key expression "
                                      "\"\\\"a\\xc3\\\"\": expected valid "
                                      "UTF-8 at offset 2");
    assert_compile_error("\"\xed\xa0\x80\"",
                         "invalid key expression \"\\\"\\xed\\xa0\\x80\\\"\": "
                         "expected valid UTF-8 at offset 1");
    assert_compile_error("\"\xc0\xaf\"", "invalid key expression "
                                         "\"\\\"\\xc0\\xaf\\\"\": expected "
                                         "valid UTF-8 at offset 1");
}

TEST(idem_key_compile_errors_over_limits)
{
    char text[300];

    assert_compile_error(
        "[a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q]",
        "invalid key expression \"[a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q]\": "
        "expected at most 16 elements in a multi-select list at offset 33");
    assert_compile_error(
        "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q",
        "invalid key expression \"a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q\": "
        "expected at most 16 identifiers in a path at offset 32");

    memset(text, 'x', 257);
    text[257] = '\0';
    assert_compile_error(text, "invalid key expression: expected at most "
                               "256 bytes, found 257");
}

TEST(idem_key_compile_rejects_null_arguments)
{
    struct idem_keyexpr *expr = UNSET_EXPR;
    char err[128] = "";

    ASSERT_EQ(idem_keyexpr_compile(NULL, &expr, err, sizeof err), -1);
    ASSERT_TRUE(expr == NULL);
    ASSERT_STR_EQ(err, "missing key expression: text is NULL");
    ASSERT_EQ(idem_keyexpr_compile("uuid", NULL, err, sizeof err), -1);

    /* err may be NULL when the caller needs no message. */
    ASSERT_EQ(idem_keyexpr_compile("[", &expr, NULL, 0), -1);
    idem_keyexpr_free(NULL);
}

TEST(idem_key_error_message_truncated_safely)
{
    struct idem_keyexpr *expr = NULL;
    char err[16];

    memset(err, '#', sizeof err);
    ASSERT_EQ(idem_keyexpr_compile("[raceId,", &expr, err, sizeof err), -1);
    ASSERT_STR_EQ(err, "invalid key exp");
}

/* ---- missing keys --------------------------------------------------- */

TEST(idem_key_missing_values_make_none)
{
    ASSERT_KEY_MISSING("uuid", "{\"id\":\"u-1\"}");
    ASSERT_KEY_MISSING("uuid", "{\"uuid\":null}");
    ASSERT_KEY_MISSING("uuid", "{\"uuid\":\"\"}");
    ASSERT_KEY_MISSING("uuid", "{\"uuid\":[]}");
    ASSERT_KEY_MISSING("uuid", "{\"uuid\":{}}");
    ASSERT_KEY_MISSING("uuid", "{}");
    ASSERT_KEY_MISSING("uuid", "null");
    ASSERT_KEY_MISSING("uuid", "\"uuid\"");
    ASSERT_KEY_MISSING("uuid", "[{\"uuid\":\"u-1\"}]");
}

TEST(idem_key_non_empty_containers_are_keys)
{
    ASSERT_KEY("uuid", "{\"uuid\":[null]}", "[null]");
    ASSERT_KEY("uuid", "{\"uuid\":{\"a\":null}}", "{\"a\":null}");
    ASSERT_KEY("uuid", "{\"uuid\":\" \"}", "\" \"");
}

TEST(idem_key_all_missing_list_is_missing)
{
    ASSERT_KEY_MISSING("[raceId, uuid]", "{}");
    ASSERT_KEY_MISSING("[raceId, uuid]", "{\"raceId\":null,\"uuid\":null}");
    ASSERT_KEY_MISSING("[raceId, uuid]", "{\"raceId\":\"\",\"uuid\":[]}");
    ASSERT_KEY_MISSING("[raceId, uuid]", "{\"raceId\":{},\"uuid\":\"\"}");
    ASSERT_KEY_MISSING("[raceId, uuid]", "null");
    ASSERT_KEY_MISSING("[raceId, uuid]", "42");
}

TEST(idem_key_partly_null_list_is_key)
{
    ASSERT_KEY("[raceId, uuid]", "{\"uuid\":\"u-1\"}", "[null,\"u-1\"]");
    ASSERT_KEY("[raceId, uuid]", "{\"raceId\":null,\"uuid\":\"u-1\"}",
               "[null,\"u-1\"]");
    ASSERT_KEY("[raceId, uuid]", "{\"raceId\":\"R-7\",\"uuid\":\"\"}",
               "[\"R-7\",\"\"]");
    ASSERT_KEY("[raceId, uuid]", "{\"raceId\":0}", "[0,null]");
}

TEST(idem_key_zero_and_false_are_keys)
{
    ASSERT_KEY("uuid", "{\"uuid\":0}", "0");
    ASSERT_KEY("uuid", "{\"uuid\":-0.0}", "0");
    ASSERT_KEY("uuid", "{\"uuid\":false}", "false");
    ASSERT_KEY("uuid", "{\"uuid\":true}", "true");
    ASSERT_KEY("[a, b]", "{\"a\":false,\"b\":null}", "[false,null]");
}

/* ---- key bytes ------------------------------------------------------ */

TEST(idem_key_string_and_number_differ)
{
    ASSERT_KEY("uuid", "{\"uuid\":\"5\"}", "\"5\"");
    ASSERT_KEY("uuid", "{\"uuid\":5}", "5e0");
    ASSERT_KEY("uuid", "{\"uuid\":5.0}", "5e0");
    ASSERT_KEY("uuid", "{\"uuid\":0.5e1}", "5e0");
}

TEST(idem_key_nul_uuid_differs_from_prefix)
{
    static const char with_nul[] = "{\"uuid\":\"u-1302\\u0000a\"}";
    static const char prefix[] = "{\"uuid\":\"u-1302\"}";
    struct strbuf a, b;

    ASSERT_EQ(key_of("uuid", with_nul, &a), 1);
    ASSERT_EQ(key_of("uuid", prefix, &b), 1);
    ASSERT_MEM_EQ(a.data, a.len, "\"u-1302\\u0000a\"", 15);
    ASSERT_MEM_EQ(b.data, b.len, "\"u-1302\"", 8);
    sb_free(&a);
    sb_free(&b);
}

TEST(idem_key_path_through_non_object)
{
    ASSERT_KEY_MISSING("uuid.id", "{\"uuid\":\"u-1\"}");
    ASSERT_KEY_MISSING("uuid.id", "{\"uuid\":7}");
    ASSERT_KEY_MISSING("uuid.id", "{\"uuid\":true}");
    ASSERT_KEY_MISSING("uuid.id", "{\"uuid\":[{\"id\":\"x\"}]}");
    ASSERT_KEY_MISSING("uuid.id", "{\"uuid\":null}");
    ASSERT_KEY("[uuid.id, raceId]", "{\"uuid\":\"u-1\",\"raceId\":\"R-7\"}",
               "[null,\"R-7\"]");
}

TEST(idem_key_eval_appends_to_buffer)
{
    struct idem_keyexpr *expr = compile("uuid");
    struct sjson_doc *doc = parse(record_a);
    struct sjson_doc *empty = parse("{}");
    struct strbuf key;

    sb_init(&key, IDEM_MAX_KEY);
    sb_puts(&key, "podium/");
    ASSERT_EQ(idem_keyexpr_eval(expr, sjson_doc_root(doc), &key), 1);
    ASSERT_STR_EQ(key.data, "podium/\"u-0901\"");
    ASSERT_EQ(idem_keyexpr_eval(expr, sjson_doc_root(empty), &key), 0);
    ASSERT_STR_EQ(key.data, "podium/\"u-0901\"");

    ASSERT_EQ(idem_keyexpr_eval(NULL, sjson_doc_root(doc), &key), -1);
    ASSERT_EQ(idem_keyexpr_eval(expr, NULL, &key), -1);
    ASSERT_EQ(idem_keyexpr_eval(expr, sjson_doc_root(doc), NULL), -1);
    sb_free(&key);
    sjson_doc_free(empty);
    sjson_doc_free(doc);
    idem_keyexpr_free(expr);
}

TEST(idem_key_too_long_key_fails)
{
    struct strbuf json, key;

    /* The canonical key is the string plus two quotes. */
    for (size_t len = IDEM_MAX_KEY - 3; len <= IDEM_MAX_KEY - 1; len++) {
        sb_init(&json, 4096);
        sb_puts(&json, "{\"uuid\":\"");
        for (size_t i = 0; i < len; i++)
            sb_putc(&json, 'x');
        sb_puts(&json, "\"}");
        ASSERT_EQ(sb_error(&json), 0);

        int rc = key_of_len("uuid", json.data, json.len, &key);
        if (len + 2 <= IDEM_MAX_KEY) {
            ASSERT_EQ(rc, 1);
            ASSERT_EQ(key.len, len + 2);
        } else {
            ASSERT_EQ(rc, -1);
            ASSERT_EQ(key.len, 0);
            ASSERT_EQ(sb_error(&key), 0);
        }
        sb_free(&key);
        sb_free(&json);
    }
}

/* One character of a string key: its JSON text in the record and its
 * bytes in the canonical key. */
struct key_char {
    const char *json;
    const char *canonical;
};

/* Characters that canonical JSON escapes, and some that it keeps. */
static const struct key_char key_chars[] = {
    {"\\u0001", "\\u0001"},
    {"\\u001f", "\\u001f"},
    {"\\n", "\\u000a"},
    {"\\u0000", "\\u0000"},
    {"\\\"", "\\\""},
    {"\\\\", "\\\\"},
    {"\\/", "/"},
    {"\x7f", "\x7f"},
    {"\xc3\xa9", "\xc3\xa9"},
    {" ", " "},
};

TEST(idem_key_string_escaped_at_each_position)
{
    const size_t len = 17;

    for (size_t c = 0; c < sizeof key_chars / sizeof key_chars[0]; c++) {
        for (size_t at = 0; at < len; at++) {
            struct strbuf json, want, key;
            sb_init(&json, 4096);
            sb_init(&want, 4096);
            sb_puts(&json, "{\"uuid\":\"");
            sb_putc(&want, '"');
            for (size_t i = 0; i < len; i++) {
                sb_puts(&json, i == at ? key_chars[c].json : "u");
                sb_puts(&want, i == at ? key_chars[c].canonical : "u");
            }
            sb_puts(&json, "\"}");
            sb_putc(&want, '"');
            ASSERT_EQ(sb_error(&json), 0);
            ASSERT_EQ(sb_error(&want), 0);

            ASSERT_EQ(key_of_len("uuid", json.data, json.len, &key), 1);
            ASSERT_MEM_EQ(key.data, key.len, want.data, want.len);
            sb_free(&key);
            sb_free(&json);
            sb_free(&want);
        }
    }
}

/* A quote at the end of the longest string that fits makes the key one
 * byte too long once escaped. */
TEST(idem_key_escape_makes_key_too_long)
{
    struct strbuf json, key;

    sb_init(&json, 4096);
    sb_puts(&json, "{\"uuid\":\"");
    for (size_t i = 0; i < IDEM_MAX_KEY - 3; i++)
        sb_putc(&json, 'x');
    sb_puts(&json, "\\\"\"}");
    ASSERT_EQ(sb_error(&json), 0);
    ASSERT_EQ(key_of_len("uuid", json.data, json.len, &key), -1);
    ASSERT_EQ(key.len, 0);
    ASSERT_EQ(sb_error(&key), 0);
    sb_free(&key);
    sb_free(&json);
}

/* A key buffer whose own maximum is reached keeps its bytes. */
TEST(idem_key_eval_stops_at_buffer_maximum)
{
    struct idem_keyexpr *expr = compile("uuid");
    struct sjson_doc *doc = parse(record_a);
    struct sjson_doc *escaped = parse("{\"uuid\":\"u\\n1\"}");
    struct strbuf key;

    sb_init(&key, 12);
    sb_puts(&key, "podium/");
    ASSERT_EQ(idem_keyexpr_eval(expr, sjson_doc_root(doc), &key), -1);
    ASSERT_STR_EQ(key.data, "podium/");
    ASSERT_TRUE(sb_error(&key) != 0);
    sb_free(&key);

    sb_init(&key, 12);
    sb_puts(&key, "podium/");
    ASSERT_EQ(idem_keyexpr_eval(expr, sjson_doc_root(escaped), &key), -1);
    ASSERT_STR_EQ(key.data, "podium/");
    ASSERT_TRUE(sb_error(&key) != 0);
    sb_free(&key);

    sjson_doc_free(escaped);
    sjson_doc_free(doc);
    idem_keyexpr_free(expr);
}

/* ---- payload hashes ------------------------------------------------- */

TEST(idem_key_pinned_vectors_reproduced)
{
    load_vectors();
    ASSERT_TRUE(vector_count >= 20);
    for (size_t i = 0; i < vector_count; i++) {
        const struct vector *v = &vectors[i];
        struct sjson_doc *doc = parse_len(v->json.data, v->json.len);
        uint8_t hash[IDEM_HASH_LEN];
        char hex[2 * IDEM_HASH_LEN + 1];

        ASSERT_EQ(idem_payload_hash(NULL, sjson_doc_root(doc), hash), 0);
        to_hex(hash, hex);
        if (strcmp(hex, v->hex) != 0)
            test_fail(__FILE__, __LINE__, "vector %s: got %s, pinned %s",
                      v->name, hex, v->hex);
        sjson_doc_free(doc);
    }
    free_vectors();
}

TEST(idem_key_equal_records_share_hash)
{
    static const char *const same_as_a[] = {
        "record-a-reversed", "record-a-number-forms", "record-a-whitespace",
        "record-a-escaped-strings"};
    static const char *const equal_pairs[][2] = {
        {"nested-objects", "nested-objects-reordered"},
        {"unicode-names", "unicode-names-escaped"},
        {"zero-forms", "zero-forms-plain"},
        {"negative-numbers", "negative-numbers-other-forms"},
        {"large-integer", "large-integer-exponent"}};
    static const char *const different_pairs[][2] = {
        {"record-a", "record-b"},
        {"arrays", "arrays-reversed-elements"},
        {"string-with-nul", "string-prefix-of-nul"},
        {"large-integer", "large-integer-plus-one"}};

    load_vectors();
    const char *a = find_vector("record-a")->hex;
    for (size_t i = 0; i < sizeof same_as_a / sizeof *same_as_a; i++)
        ASSERT_STR_EQ(find_vector(same_as_a[i])->hex, a);
    for (size_t i = 0; i < sizeof equal_pairs / sizeof *equal_pairs; i++)
        ASSERT_STR_EQ(find_vector(equal_pairs[i][0])->hex,
                      find_vector(equal_pairs[i][1])->hex);
    for (size_t i = 0; i < sizeof different_pairs / sizeof *different_pairs;
         i++)
        ASSERT_TRUE(strcmp(find_vector(different_pairs[i][0])->hex,
                           find_vector(different_pairs[i][1])->hex) != 0);
    free_vectors();
}

TEST(idem_key_hash_of_selection)
{
    uint8_t hash[IDEM_HASH_LEN];
    char hex[2 * IDEM_HASH_LEN + 1];

    load_vectors();
    hash_of("[raceId, uuid]", record_a, hash);
    to_hex(hash, hex);
    ASSERT_STR_EQ(hex, find_vector("selection-race-uuid")->hex);

    /* Members outside the selection leave its hash unchanged. */
    hash_of("[raceId, uuid]",
            "{\"raceId\":\"R-7\",\"uuid\":\"u-0901\","
            "\"cadence\":91}",
            hash);
    to_hex(hash, hex);
    ASSERT_STR_EQ(hex, find_vector("selection-race-uuid")->hex);
    free_vectors();
}

TEST(idem_key_missing_selection_hashes_null)
{
    static const char *const records[] = {
        "{}", "{\"uuid\":\"\"}", "{\"uuid\":null,\"raceId\":[]}", "null"};
    uint8_t hash[IDEM_HASH_LEN];
    char hex[2 * IDEM_HASH_LEN + 1];

    load_vectors();
    const char *null_hex = find_vector("selection-missing")->hex;
    for (size_t i = 0; i < sizeof records / sizeof *records; i++) {
        hash_of("uuid", records[i], hash);
        to_hex(hash, hex);
        ASSERT_STR_EQ(hex, null_hex);
        hash_of("[uuid, raceId]", records[i], hash);
        to_hex(hash, hex);
        ASSERT_STR_EQ(hex, null_hex);
    }
    free_vectors();
}

TEST(idem_key_hash_rejects_null_arguments)
{
    struct sjson_doc *doc = parse(record_a);
    uint8_t hash[IDEM_HASH_LEN];

    ASSERT_EQ(idem_payload_hash(NULL, NULL, hash), -1);
    ASSERT_EQ(idem_payload_hash(NULL, sjson_doc_root(doc), NULL), -1);
    sjson_doc_free(doc);
}

/* The strict parser rejects a record with a repeated member, so the key
 * expression and the aggregator can never read different uuids from it. */
TEST(idem_key_duplicate_members_never_parse)
{
    static const char json[] = "{\"uuid\":\"u-1402\",\"uuid\":\"u-1403\"}";
    struct sjson_doc *doc = (struct sjson_doc *)&doc;
    struct sjson_err err;

    ASSERT_EQ(sjson_parse(json, sizeof json - 1, NULL, &doc, &err),
              SJSON_ERR_DUPLICATE_KEY);
    ASSERT_TRUE(doc == NULL);
    ASSERT_EQ(err.code, SJSON_ERR_DUPLICATE_KEY);
}
