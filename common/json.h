/*
 * Strict JSON parser (RFC 8259) for untrusted input. It builds a small
 * read-only tree in one arena. Unlike general-purpose parsers it:
 *   - rejects duplicate object keys, invalid UTF-8 (overlong forms,
 *     surrogates, code points past U+10FFFF), lone surrogate escapes,
 *     NaN/Infinity, leading zeros, and trailing bytes after the value;
 *   - keeps strings as decoded bytes with a length, so U+0000 (\u0000)
 *     survives and never truncates a value;
 *   - keeps numbers as their exact source text, so callers decide how to
 *     convert them without losing precision;
 *   - stops at a nesting depth limit instead of exhausting the stack.
 */
#ifndef PODIUM_COMMON_JSON_H
#define PODIUM_COMMON_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum json_type {
    JSON_NULL,
    JSON_FALSE,
    JSON_TRUE,
    JSON_NUMBER,
    JSON_STRING,
    JSON_ARRAY,
    JSON_OBJECT
};

struct json_value {
    enum json_type type;
    /* STRING: decoded UTF-8 bytes (NUL-terminated, but may contain NUL).
     * NUMBER: the token text as written. */
    const char *str;
    size_t len;
    /* Member name when the value sits in an object, else NULL. */
    const char *key;
    size_t key_len;
    /* ARRAY and OBJECT: children in document order. */
    const struct json_value *items;
    size_t count;
};

enum json_error {
    JSON_OK = 0,
    JSON_ERR_SYNTAX,
    JSON_ERR_DEPTH,
    JSON_ERR_DUPLICATE_KEY,
    JSON_ERR_UTF8,
    JSON_ERR_NUMBER,
    JSON_ERR_TOO_LARGE,
    JSON_ERR_NOMEM
};

struct json_limits {
    size_t max_bytes; /* input size limit */
    int max_depth;    /* nesting limit; 1 allows one level of {} or [] */
};

struct json_err {
    enum json_error code;
    size_t offset;     /* byte offset where the problem was found */
    char message[128]; /* e.g. "duplicate object key \"racerId\"" */
};

struct json_doc;
struct strbuf;

/* Limits used when json_parse gets NULL limits. */
#define JSON_DEFAULT_MAX_BYTES (1024 * 1024)
#define JSON_DEFAULT_MAX_DEPTH 64

/*
 * Parse len bytes (need not be NUL-terminated). On success returns 0 and
 * *out is an owned document (free with json_doc_free). On failure returns
 * the error code, fills *err (when not NULL) and sets *out to NULL.
 * Lone surrogate escapes are reported as JSON_ERR_UTF8, and a number token
 * with a bad form ("01", "1.", "+1") as JSON_ERR_NUMBER.
 */
int json_parse(const char *text, size_t len, const struct json_limits *limits,
               struct json_doc **out, struct json_err *err);
void json_doc_free(struct json_doc *doc);
/* The top-level value (borrowed, valid until json_doc_free). */
const struct json_value *json_doc_root(const struct json_doc *doc);

/* Member of an object by name (exact bytes), or NULL. */
const struct json_value *json_object_get(const struct json_value *object,
                                         const char *key);

/* Short lower-case name of an error code, such as "duplicate_key". */
const char *json_error_name(enum json_error code);

/*
 * Append the canonical text of the JSON number token tok (len bytes) to out.
 * Zero of any form gives "0". Any other value gives an optional '-', its
 * significant digits without leading or trailing zeros, 'e' and the decimal
 * exponent: 90, 90.0 and 9.0e1 all give "9e1", and 0.001 gives "1e-3".
 * Returns 0, or -1 when tok is not a valid JSON number, when the exponent
 * would pass +-1,000,000,000, or when out has failed.
 */
int json_number_canonical(const char *tok, size_t len, struct strbuf *out);

/*
 * Append a canonical serialization of v to out, so that equal documents hash
 * equally: no whitespace, object members sorted by key bytes (memcmp, a
 * prefix before longer keys), numbers as json_number_canonical writes them,
 * and strings with only '"', '\\' and bytes below 0x20 escaped (the latter
 * as \u00xx in lower-case hex). Arrays keep their order. Works without
 * recursion, so any nesting depth is fine. Returns 0, or -1 when a number
 * cannot be canonicalized, memory runs out or out reaches its maximum.
 */
int json_canonical(const struct json_value *v, struct strbuf *out);

#endif
