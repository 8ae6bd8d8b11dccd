/*
 * Key expressions and payload hashes of the idempotency table.
 *
 * A key expression is a subset of JMESPath whose forms follow the grammar
 * of https://jmespath.org/specification.html exactly:
 *
 *   expression        = path / multi-select-list
 *   multi-select-list = "[" path *( "," path ) "]"
 *   path              = identifier *( "." identifier )
 *   identifier        = unquoted-string / quoted-string
 *   unquoted-string   = ( A-Z / a-z / "_" ) *( A-Z / a-z / 0-9 / "_" )
 *   quoted-string     = '"' 1*( unescaped-char / escaped-char ) '"'
 *
 * unescaped-char is any UTF-8 character except '"', '\' and U+0000-U+001F.
 * escaped-char is one of \" \\ \/ \b \f \n \r \t \uXXXX, and a surrogate
 * pair of \u escapes gives one character. Space, tab, CR and LF may appear
 * between tokens. Limits: 256 bytes of text, 16 list elements, 16
 * identifiers in a path.
 *
 * Evaluation follows JMESPath: a path through a value that is not an object
 * yields null, and a multi-select list yields an array of its elements'
 * values, with null for each element that yields null.
 */
#include "store/idempotency.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/sjson.h"
#include "common/strbuf.h"

#define KEYEXPR_MAX_TEXT     256
#define KEYEXPR_MAX_ELEMENTS 16
#define KEYEXPR_MAX_DEPTH    16

/* The canonical record that idem_payload_hash digests is bounded by memory
 * only, because the parser has already bounded the record's size. */
#define PAYLOAD_MAX_CANONICAL (SIZE_MAX / 4)

/* An identifier, as decoded bytes in idem_keyexpr.names. */
struct keyexpr_name {
    size_t offset;
    size_t len;
};

struct keyexpr_path {
    size_t depth; /* identifiers in names */
    struct keyexpr_name names[KEYEXPR_MAX_DEPTH];
};

struct idem_keyexpr {
    bool is_list;
    size_t count; /* paths used: 1 unless is_list */
    struct keyexpr_path paths[KEYEXPR_MAX_ELEMENTS];
    /* Decoded identifiers back to back. Decoding never makes an identifier
     * longer than its source text, so the text limit bounds them. */
    char names[KEYEXPR_MAX_TEXT];
    size_t names_len;
};

struct keyexpr_parser {
    const char *text;
    size_t len;
    size_t pos;
    struct idem_keyexpr *expr;
    char *err;
    size_t err_len;
};

/* ---- compile errors ------------------------------------------------- */

/* Write text into out (size at least 4 * len + 1), escaping '"', '\\' and
 * every byte outside printable ASCII, so an error message stays one line
 * of plain ASCII whatever the expression contains. */
static void escape_for_message(const char *text, size_t len, char *out)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20 || c >= 0x7f) {
            out[n++] = '\\';
            out[n++] = 'x';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 15];
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
}

/* Write 'invalid key expression "TEXT": DETAIL at offset N' into the
 * caller's err and return -1. */
__attribute__((format(printf, 3, 4))) static int
parse_fail(const struct keyexpr_parser *p, size_t offset, const char *fmt, ...)
{
    char quoted[4 * KEYEXPR_MAX_TEXT + 1];
    char detail[160];
    va_list ap;

    if (p->err == NULL || p->err_len == 0)
        return -1;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    escape_for_message(p->text, p->len, quoted);
    snprintf(p->err, p->err_len,
             "invalid key expression \"%s\": %s at offset %zu", quoted, detail,
             offset);
    return -1;
}

/* ---- identifiers ---------------------------------------------------- */

static bool is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static bool is_name_start(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static bool is_name_char(char c)
{
    return is_name_start(c) || (c >= '0' && c <= '9');
}

static void skip_blanks(struct keyexpr_parser *p)
{
    while (p->pos < p->len && is_blank(p->text[p->pos]))
        p->pos++;
}

/* Return the byte at the parser's position, or '\0' at the end. */
static char peek(const struct keyexpr_parser *p)
{
    return p->pos < p->len ? p->text[p->pos] : '\0';
}

static void append_name_bytes(struct keyexpr_parser *p, const char *bytes,
                              size_t n)
{
    struct idem_keyexpr *expr = p->expr;

    memcpy(expr->names + expr->names_len, bytes, n);
    expr->names_len += n;
}

static void append_code_point(struct keyexpr_parser *p, uint32_t cp)
{
    char utf8[4];
    size_t n;

    if (cp < 0x80) {
        utf8[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        utf8[0] = (char)(0xc0 | (cp >> 6));
        utf8[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        utf8[0] = (char)(0xe0 | (cp >> 12));
        utf8[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        utf8[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        utf8[0] = (char)(0xf0 | (cp >> 18));
        utf8[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        utf8[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        utf8[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    append_name_bytes(p, utf8, n);
}

/* Return the length of the well-formed UTF-8 character at s (at most n
 * bytes), or 0 when it is invalid (RFC 3629: no overlong forms, no
 * surrogates, nothing past U+10FFFF). */
static size_t utf8_char_len(const unsigned char *s, size_t n)
{
    unsigned char lo = 0x80, hi = 0xbf;
    size_t len;

    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        len = 2;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        len = 3;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        len = 4;
    else
        return 0;
    if (s[0] == 0xe0)
        lo = 0xa0;
    else if (s[0] == 0xed)
        hi = 0x9f;
    else if (s[0] == 0xf0)
        lo = 0x90;
    else if (s[0] == 0xf4)
        hi = 0x8f;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return len;
}

/* Read 4 hex digits at the parser's position into *unit. */
static int read_hex4(struct keyexpr_parser *p, uint32_t *unit)
{
    *unit = 0;
    for (size_t i = 0; i < 4; i++) {
        char c = peek(p);
        uint32_t digit;
        if (c >= '0' && c <= '9')
            digit = (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            digit = (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            digit = (uint32_t)(c - 'A' + 10);
        else
            return parse_fail(p, p->pos, "expected 4 hex digits after \\u");
        *unit = *unit << 4 | digit;
        p->pos++;
    }
    return 0;
}

/*
 * Decode the \uXXXX escape whose 'u' was just consumed. A high surrogate
 * must be followed by a \u escape of a low surrogate, as in JSON, because
 * a lone surrogate is no character and could never match a record's key.
 */
static int decode_unicode_escape(struct keyexpr_parser *p)
{
    size_t start = p->pos - 2;
    uint32_t unit, low;

    if (read_hex4(p, &unit) != 0)
        return -1;
    if (unit >= 0xdc00 && unit <= 0xdfff)
        return parse_fail(p, start,
                          "expected a character, not a lone low surrogate");
    if (unit < 0xd800 || unit > 0xdbff) {
        append_code_point(p, unit);
        return 0;
    }

    if (p->len - p->pos < 2 || p->text[p->pos] != '\\' ||
        p->text[p->pos + 1] != 'u')
        return parse_fail(p, p->pos,
                          "expected a \\u escape of a low surrogate");
    size_t low_start = p->pos;
    p->pos += 2;
    if (read_hex4(p, &low) != 0)
        return -1;
    if (low < 0xdc00 || low > 0xdfff)
        return parse_fail(p, low_start,
                          "expected a \\u escape of a low surrogate");
    append_code_point(p, 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00));
    return 0;
}

/* Decode the escape sequence at the parser's position (a backslash). */
static int decode_escape(struct keyexpr_parser *p)
{
    static const char from[] = "\"\\/bfnrt";
    static const char to[] = "\"\\/\b\f\n\r\t";
    size_t start = p->pos;
    char c = p->pos + 1 < p->len ? p->text[p->pos + 1] : '\0';
    const char *found = c != '\0' ? strchr(from, c) : NULL;

    if (c != 'u' && found == NULL)
        return parse_fail(p, start,
                          "expected an escape (\\\" \\\\ \\/ \\b \\f \\n \\r "
                          "\\t or \\uXXXX)");
    p->pos += 2;
    if (c == 'u')
        return decode_unicode_escape(p);
    append_name_bytes(p, &to[found - from], 1);
    return 0;
}

/* Copy the unescaped UTF-8 character at the parser's position. */
static int copy_raw_char(struct keyexpr_parser *p)
{
    const unsigned char *s = (const unsigned char *)p->text + p->pos;
    size_t n;

    if (s[0] < 0x20)
        return parse_fail(p, p->pos,
                          "expected an escape such as \\n in place of the "
                          "control byte 0x%02x",
                          s[0]);
    n = utf8_char_len(s, p->len - p->pos);
    if (n == 0)
        return parse_fail(p, p->pos, "expected valid UTF-8");
    append_name_bytes(p, p->text + p->pos, n);
    p->pos += n;
    return 0;
}

/* Parse a quoted identifier, decoding it into name. */
static int parse_quoted(struct keyexpr_parser *p, struct keyexpr_name *name)
{
    size_t start = p->pos;

    p->pos++;
    name->offset = p->expr->names_len;
    while (p->pos < p->len && p->text[p->pos] != '"') {
        int rc = p->text[p->pos] == '\\' ? decode_escape(p) : copy_raw_char(p);
        if (rc != 0)
            return -1;
    }
    if (p->pos == p->len)
        return parse_fail(p, p->pos,
                          "expected a '\"' to close the quoted identifier");
    name->len = p->expr->names_len - name->offset;
    if (name->len == 0)
        return parse_fail(p, start,
                          "expected at least one character between the "
                          "quotes");
    p->pos++;
    return 0;
}

/* Parse an unquoted or quoted identifier into name. */
static int parse_identifier(struct keyexpr_parser *p, struct keyexpr_name *name)
{
    char c = peek(p);

    if (c == '"')
        return parse_quoted(p, name);
    if (!is_name_start(c))
        return parse_fail(p, p->pos, "expected an identifier");

    size_t start = p->pos;
    while (p->pos < p->len && is_name_char(p->text[p->pos]))
        p->pos++;
    name->offset = p->expr->names_len;
    name->len = p->pos - start;
    append_name_bytes(p, p->text + start, name->len);
    return 0;
}

/* ---- paths and lists ------------------------------------------------ */

/* Parse identifiers joined by '.', leaving the position on the first
 * token after the path. */
static int parse_path(struct keyexpr_parser *p, struct keyexpr_path *path)
{
    path->depth = 0;
    for (;;) {
        skip_blanks(p);
        if (path->depth == KEYEXPR_MAX_DEPTH)
            return parse_fail(p, p->pos,
                              "expected at most %d identifiers in a path",
                              KEYEXPR_MAX_DEPTH);
        if (parse_identifier(p, &path->names[path->depth]) != 0)
            return -1;
        path->depth++;
        skip_blanks(p);
        if (peek(p) != '.')
            return 0;
        p->pos++;
    }
}

/* Explain an unexpected byte after a name: users often write names such
 * as race-id unquoted. */
static const char *quoting_hint(char c)
{
    if (c == '-' || c == ':' || c == '@' || c == '/' || c == '#' ||
        (unsigned char)c >= 0x80)
        return " (a name with other characters needs double quotes, as in "
               "\"race-id\")";
    return "";
}

/* Parse a multi-select list whose '[' is at the parser's position. */
static int parse_list(struct keyexpr_parser *p)
{
    struct idem_keyexpr *expr = p->expr;

    expr->is_list = true;
    p->pos++;
    for (;;) {
        skip_blanks(p);
        if (expr->count == KEYEXPR_MAX_ELEMENTS)
            return parse_fail(p, p->pos,
                              "expected at most %d elements in a "
                              "multi-select list",
                              KEYEXPR_MAX_ELEMENTS);
        if (parse_path(p, &expr->paths[expr->count]) != 0)
            return -1;
        expr->count++;

        char c = peek(p);
        if (c == ']') {
            p->pos++;
            return 0;
        }
        if (c != ',')
            return parse_fail(p, p->pos, "expected '.', ',' or ']'%s",
                              quoting_hint(c));
        p->pos++;
    }
}

/* Parse the whole text into p->expr. */
static int parse_expression(struct keyexpr_parser *p)
{
    skip_blanks(p);
    if (peek(p) == '[') {
        if (parse_list(p) != 0)
            return -1;
        skip_blanks(p);
        if (p->pos < p->len)
            return parse_fail(p, p->pos, "expected the end of the expression");
        return 0;
    }

    if (peek(p) != '"' && !is_name_start(peek(p)))
        return parse_fail(p, p->pos, "expected an identifier or '['");
    if (parse_path(p, &p->expr->paths[0]) != 0)
        return -1;
    p->expr->count = 1;
    if (p->pos < p->len)
        return parse_fail(p, p->pos,
                          "expected '.' or the end of the "
                          "expression%s",
                          quoting_hint(peek(p)));
    return 0;
}

/* Compiles text (borrowed) into *out, which the caller owns and frees with
 * idem_keyexpr_free(). On failure *out is NULL and err, when not NULL,
 * holds the message. */
int idem_keyexpr_compile(const char *text, struct idem_keyexpr **out, char *err,
                         size_t err_len)
{
    struct keyexpr_parser p = {.text = text, .err = err, .err_len = err_len};

    if (out == NULL)
        return -1;
    *out = NULL;
    if (text == NULL) {
        if (err != NULL && err_len > 0)
            snprintf(err, err_len, "missing key expression: text is NULL");
        return -1;
    }
    p.len = strlen(text);
    if (p.len > KEYEXPR_MAX_TEXT) {
        if (err != NULL && err_len > 0)
            snprintf(err, err_len,
                     "invalid key expression: expected at most %d bytes, "
                     "found %zu",
                     KEYEXPR_MAX_TEXT, p.len);
        return -1;
    }

    p.expr = calloc(1, sizeof *p.expr);
    if (p.expr == NULL) {
        if (err != NULL && err_len > 0)
            snprintf(err, err_len,
                     "failed to compile key expression: out of memory");
        return -1;
    }
    if (parse_expression(&p) != 0) {
        free(p.expr);
        return -1;
    }
    *out = p.expr;
    return 0;
}

void idem_keyexpr_free(struct idem_keyexpr *expr)
{
    free(expr);
}

/* ---- evaluation ----------------------------------------------------- */

/* Member of object named by len bytes, which may contain NUL (so
 * sjson_object_get, which takes a C string, cannot look it up). */
static const struct sjson_value *member_get(const struct sjson_value *object,
                                            const char *name, size_t len)
{
    for (size_t i = 0; i < object->count; i++) {
        const struct sjson_value *member = &object->items[i];
        if (member->key_len == len && memcmp(member->key, name, len) == 0)
            return member;
    }
    return NULL;
}

/* The value at path in root (borrowed), or NULL where JMESPath yields
 * null: an absent member, or a step through a value that is no object. */
static const struct sjson_value *select_path(const struct idem_keyexpr *expr,
                                             const struct keyexpr_path *path,
                                             const struct sjson_value *root)
{
    const struct sjson_value *value = root;

    for (size_t i = 0; i < path->depth && value != NULL; i++) {
        const struct keyexpr_name *name = &path->names[i];
        if (value->type != SJSON_OBJECT)
            return NULL;
        value = member_get(value, expr->names + name->offset, name->len);
    }
    return value;
}

/* Whether value makes no key: absent, null, "", [] or {}. Numbers and
 * booleans always make one, 0 and false included. */
static bool value_missing(const struct sjson_value *value)
{
    if (value == NULL)
        return true;
    switch (value->type) {
    case SJSON_NULL:
        return true;
    case SJSON_STRING:
        return value->len == 0;
    case SJSON_ARRAY:
    case SJSON_OBJECT:
        return value->count == 0;
    default:
        return false;
    }
}

/* The value an expression selected. For a multi-select list, value points
 * to list, an array built over shallow copies of the selected values. */
struct keyexpr_selection {
    const struct sjson_value *value;
    struct sjson_value list;
    struct sjson_value items[KEYEXPR_MAX_ELEMENTS];
};

/* Evaluate expr on root into sel. Returns true when the selection makes a
 * key, false when it is missing. sel borrows from root. */
static bool select_value(const struct idem_keyexpr *expr,
                         const struct sjson_value *root,
                         struct keyexpr_selection *sel)
{
    if (!expr->is_list) {
        sel->value = select_path(expr, &expr->paths[0], root);
        return !value_missing(sel->value);
    }

    bool any_present = false;
    for (size_t i = 0; i < expr->count; i++) {
        const struct sjson_value *v = select_path(expr, &expr->paths[i], root);
        struct sjson_value *item = &sel->items[i];
        if (v != NULL)
            *item = *v;
        else
            *item = (struct sjson_value){.type = SJSON_NULL};
        item->key = NULL;
        item->key_len = 0;
        any_present = any_present || !value_missing(v);
    }
    sel->list = (struct sjson_value){
        .type = SJSON_ARRAY, .items = sel->items, .count = expr->count};
    sel->value = &sel->list;
    return any_present;
}

/*
 * Append the canonical form of v when v is a string that needs no escape
 * and fits in IDEM_MAX_KEY with its quotes, which is the common key (a
 * UUID). Returns 1 when it did, 0 when v is another case, which the caller
 * hands to sjson_canonical(), or -1 when key reached its own maximum. One
 * append of the whole key keeps key unchanged on failure.
 */
static int append_plain_string(const struct sjson_value *v, struct strbuf *key)
{
    char quoted[IDEM_MAX_KEY];

    if (v->type != SJSON_STRING || v->len > IDEM_MAX_KEY - 2)
        return 0;
    for (size_t i = 0; i < v->len; i++) {
        unsigned char c = (unsigned char)v->str[i];
        if (c < 0x20 || c == '"' || c == '\\')
            return 0;
    }
    quoted[0] = '"';
    memcpy(quoted + 1, v->str, v->len);
    quoted[v->len + 1] = '"';
    return sb_append(key, quoted, v->len + 2) == 0 ? 1 : -1;
}

/*
 * Appends the key bytes to key (borrowed). The key is built in a buffer of
 * its own first, so a key longer than IDEM_MAX_KEY returns -1 and leaves
 * key unchanged. Also -1 when an argument is NULL, memory runs out, or key
 * reaches its own maximum (then sb_error(key) is set).
 */
int idem_keyexpr_eval(const struct idem_keyexpr *expr,
                      const struct sjson_value *root, struct strbuf *key)
{
    struct keyexpr_selection sel;
    struct strbuf canonical;
    int rc = 1;

    if (expr == NULL || root == NULL || key == NULL)
        return -1;
    if (!select_value(expr, root, &sel))
        return 0;
    rc = append_plain_string(sel.value, key);
    if (rc != 0)
        return rc;

    rc = 1;
    sb_init(&canonical, IDEM_MAX_KEY);
    if (sjson_canonical(sel.value, &canonical) != 0 ||
        sb_append(key, canonical.data, canonical.len) != 0)
        rc = -1;
    sb_free(&canonical);
    return rc;
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
static const EVP_MD *payload_sha256(void)
{
    pthread_once(&sha256_once, fetch_sha256);
    return sha256_md != NULL ? sha256_md : EVP_sha256();
}

/* SHA-256 of len bytes of data into out. */
static int sha256(const char *data, size_t len, uint8_t out[IDEM_HASH_LEN])
{
    unsigned int out_len = 0;

    if (EVP_Digest(data, len, out, &out_len, payload_sha256(), NULL) != 1 ||
        out_len != IDEM_HASH_LEN)
        return -1;
    return 0;
}

/* Hashes the canonical form of the selection (root borrowed). Returns -1
 * when root or out is NULL, memory runs out, or libcrypto fails. */
int idem_payload_hash(const struct idem_keyexpr *expr,
                      const struct sjson_value *root,
                      uint8_t out[IDEM_HASH_LEN])
{
    const struct sjson_value *value = root;
    struct keyexpr_selection sel;
    struct strbuf canonical;
    int rc;

    if (root == NULL || out == NULL)
        return -1;
    if (expr != NULL)
        value = select_value(expr, root, &sel) ? sel.value : NULL;

    sb_init(&canonical, PAYLOAD_MAX_CANONICAL);
    if (value != NULL)
        rc = sjson_canonical(value, &canonical);
    else
        rc = sb_puts(&canonical, "null") == 0 ? 0 : -1;
    if (rc == 0)
        rc = sha256(canonical.data, canonical.len, out);
    sb_free(&canonical);
    return rc;
}
