/*
 * Strict JSON parser (RFC 8259) for untrusted input. Its names carry the
 * prefix sjson_ so they never collide with jansson's, which the project
 * uses for trusted documents (configuration, Kinesis replies). It builds a
 * small read-only tree in one arena. Unlike general-purpose parsers it:
 *   - rejects duplicate object keys, invalid UTF-8 (overlong forms,
 *     surrogates, code points past U+10FFFF), lone surrogate escapes,
 *     NaN/Infinity, leading zeros, and trailing bytes after the value;
 *   - keeps strings as decoded bytes with a length, so U+0000 (\u0000)
 *     survives and never truncates a value;
 *   - keeps numbers as their exact source text, so callers decide how to
 *     convert them without losing precision;
 *   - stops at a nesting depth limit instead of exhausting the stack.
 */
#ifndef PODIUM_COMMON_SJSON_H
#define PODIUM_COMMON_SJSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum sjson_type {
    SJSON_NULL,
    SJSON_FALSE,
    SJSON_TRUE,
    SJSON_NUMBER,
    SJSON_STRING,
    SJSON_ARRAY,
    SJSON_OBJECT
};

struct sjson_value {
    enum sjson_type type;
    /* STRING: decoded UTF-8 bytes (NUL-terminated, but may contain NUL).
     * NUMBER: the token text as written. */
    const char *str;
    size_t len;
    /* Member name when the value sits in an object, else NULL. */
    const char *key;
    size_t key_len;
    /* ARRAY and OBJECT: children in document order. */
    const struct sjson_value *items;
    size_t count;
};

enum sjson_error {
    SJSON_OK = 0,
    SJSON_ERR_SYNTAX,
    SJSON_ERR_DEPTH,
    SJSON_ERR_DUPLICATE_KEY,
    SJSON_ERR_UTF8,
    SJSON_ERR_NUMBER,
    SJSON_ERR_TOO_LARGE,
    SJSON_ERR_NOMEM
};

struct sjson_limits {
    size_t max_bytes; /* input size limit */
    int max_depth;    /* nesting limit; 1 allows one level of {} or [] */
};

struct sjson_err {
    enum sjson_error code;
    size_t offset;     /* byte offset where the problem was found */
    char message[128]; /* e.g. "duplicate object key \"racerId\"" */
};

struct sjson_doc;
struct strbuf;

/* Limits used when sjson_parse gets NULL limits. */
#define SJSON_DEFAULT_MAX_BYTES (1024 * 1024)
#define SJSON_DEFAULT_MAX_DEPTH 64

/*
 * Parse len bytes (need not be NUL-terminated). On success returns 0 and
 * *out is an owned document (free with sjson_doc_free). On failure returns
 * the error code, fills *err (when not NULL) and sets *out to NULL.
 * Lone surrogate escapes are reported as SJSON_ERR_UTF8, and a number token
 * with a bad form ("01", "1.", "+1") as SJSON_ERR_NUMBER.
 */
int sjson_parse(const char *text, size_t len, const struct sjson_limits *limits,
                struct sjson_doc **out, struct sjson_err *err);

/*
 * Parse len bytes exactly as sjson_parse does, with the same result code
 * and the same *err, but build the document in *doc when it is large
 * enough. *doc is NULL at first, then the result of an earlier call of
 * this function or of sjson_parse. So a loop over many small documents
 * allocates only when one is larger than all before. On failure *doc is
 * NULL or still allocated with a NULL root: either way, pass it to the
 * next call or to sjson_doc_free.
 */
int sjson_parse_reuse(const char *text, size_t len,
                      const struct sjson_limits *limits, struct sjson_doc **doc,
                      struct sjson_err *err);

/*
 * Parse len bytes exactly as sjson_parse does, with the same result code
 * and the same *err, but build no document, for callers that only read the
 * top-level value and its direct children. The decoded strings and number
 * texts go to strings, a buffer of at least len + 1 bytes that the caller
 * owns, and the values point into it. On success *root is the top-level
 * value. A container value, the root or a child, has items NULL and count
 * set to its number of children, except that a root with 1 to
 * children_cap children gets them copied into children (in document
 * order) and root->items points there. So a root with more children than
 * children_cap has items NULL and count > 0; parse it with sjson_parse to
 * read them. sjson_object_get works on *root.
 */
int sjson_parse_flat(const char *text, size_t len,
                     const struct sjson_limits *limits, char *strings,
                     struct sjson_value *children, size_t children_cap,
                     struct sjson_value *root, struct sjson_err *err);
void sjson_doc_free(struct sjson_doc *doc);
/* The top-level value (borrowed, valid until sjson_doc_free). */
const struct sjson_value *sjson_doc_root(const struct sjson_doc *doc);

/* Member of an object by name (exact bytes), or NULL, also when the
 * object's members were left out (items NULL). */
const struct sjson_value *sjson_object_get(const struct sjson_value *object,
                                           const char *key);

/* Short lower-case name of an error code, such as "duplicate_key". */
const char *sjson_error_name(enum sjson_error code);

/*
 * Append the canonical text of the JSON number token tok (len bytes) to out.
 * Zero of any form gives "0". Any other value gives an optional '-', its
 * significant digits without leading or trailing zeros, 'e' and the decimal
 * exponent: 90, 90.0 and 9.0e1 all give "9e1", and 0.001 gives "1e-3".
 * Returns 0, or -1 when tok is not a valid JSON number, when the exponent
 * would pass +-1,000,000,000, or when out has failed.
 */
int sjson_number_canonical(const char *tok, size_t len, struct strbuf *out);

/*
 * Append a canonical serialization of v to out, so that equal documents hash
 * equally: no whitespace, object members sorted by key bytes (memcmp, a
 * prefix before longer keys), numbers as sjson_number_canonical writes them,
 * and strings with only '"', '\\' and bytes below 0x20 escaped (the latter
 * as \u00xx in lower-case hex). Arrays keep their order. Works without
 * recursion, so any nesting depth is fine. Returns 0, or -1 when a number
 * cannot be canonicalized, memory runs out or out reaches its maximum.
 */
int sjson_canonical(const struct sjson_value *v, struct strbuf *out);

#endif
