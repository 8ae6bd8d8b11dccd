/*
 * Strict JSON parser. The parser runs as a loop over an explicit stack of
 * open containers, so nesting never grows the C stack. While it runs, values
 * live in two scratch arrays of nodes that refer to text by offset: "open"
 * contains the values of containers not yet closed, and "done" receives the
 * children of each container as it closes, so every container's children
 * end up contiguous. At the end one allocation receives the document header,
 * all values and all string bytes, and offsets become pointers.
 */
#include "common/sjson.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__) && defined(__GNUC__)
#include <emmintrin.h>
#endif

#include "common/strbuf.h"

/* Objects with at most this many members are checked for duplicate keys by
 * comparing every pair, larger ones by sorting their keys. */
#define DUPLICATE_SCAN_MAX 16

/* Bytes of a key quoted in a duplicate key message before it is cut. */
#define MESSAGE_KEY_MAX 60

/* Scratch space on the stack of sjson_parse, so that small documents such
 * as a telemetry record or a recording line need no scratch allocations.
 * Larger ones move to the heap as they grow. */
#define PARSE_STACK_BYTES  1024
#define PARSE_STACK_NODES  24
#define PARSE_STACK_FRAMES 8

/* A document that outgrows the one it reuses gets a multiple of this
 * many bytes. */
#define DOC_SIZE_STEP 512

struct sjson_doc {
    const struct sjson_value *root; /* NULL after a failed sjson_parse_reuse */
    size_t size;                    /* bytes allocated, this header included */
    struct sjson_value values[];
};

/* A value under construction. Offsets index parser.strings. */
struct json_node {
    enum sjson_type type;
    size_t str;
    size_t len;
    size_t key;
    size_t key_len;
    bool has_key;
    size_t items; /* index of the first child in parser.done */
    size_t count;
    size_t pos; /* input offset of the member name, else of the value */
};

/* A growable array of nodes. Its length never passes the number of values
 * in the input, which is at most the input length. */
struct node_vec {
    struct json_node *items;
    size_t len;
    size_t cap;
    struct json_node *stack_items; /* items while they fit there */
};

/* An open container. first indexes parser.open, just past its own node. */
struct json_frame {
    size_t first;
    bool object;
};

/* The stack scratch of one sjson_parse call. */
struct parse_stack {
    char strings[PARSE_STACK_BYTES];
    struct json_node open[PARSE_STACK_NODES];
    struct json_node done[PARSE_STACK_NODES];
    struct json_frame frames[PARSE_STACK_FRAMES];
};

/* Key of one object member, for duplicate detection by sorting. */
struct key_ref {
    const char *bytes;
    size_t len;
    size_t index;
};

struct parser {
    const char *text;
    size_t len;
    size_t pos;
    int max_depth;
    struct sjson_err *err;

    /* Decoded strings and number text, each NUL-terminated. Its capacity is
     * len + 1, which parser_init shows is enough. */
    char *strings;
    size_t strings_len;

    struct node_vec open;
    struct node_vec done;

    /* Open containers. There are at most max_depth of them. */
    struct json_frame *frames;
    size_t depth;
    size_t frames_cap;
    struct json_frame *stack_frames; /* frames while they fit there */
    bool strings_owned;              /* strings was allocated by the parser */

    /* Name of the member whose value comes next, when inside an object. */
    bool has_key;
    size_t key;
    size_t key_len;
    size_t key_pos;

    /* Scratch for sorting the keys of one large object. Its length never
     * passes the member count of the largest object. */
    struct key_ref *keys;
    size_t keys_cap;
};

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Bytes that cannot follow a number token and belong to a malformed one. */
static bool is_number_byte(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           c == '.' || c == '+' || c == '-';
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/*
 * Record an error at input offset pos and return its code. The message is
 * formatted into err, never printed.
 */
static int fail(struct parser *p, enum sjson_error code, size_t pos,
                const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int fail(struct parser *p, enum sjson_error code, size_t pos,
                const char *fmt, ...)
{
    va_list ap;

    p->err->code = code;
    p->err->offset = pos;
    va_start(ap, fmt);
    vsnprintf(p->err->message, sizeof p->err->message, fmt, ap);
    va_end(ap);
    return code;
}

/*
 * Return a copy of items with room for twice as many elements (64 at
 * first), updating *cap, or NULL when memory runs out. On failure items is
 * left untouched.
 */
static void *grow_array(void *items, size_t *cap, size_t size)
{
    size_t next = *cap ? *cap * 2 : 64;

    if (next > SIZE_MAX / 2 / size)
        return NULL;
    void *grown = realloc(items, next * size);
    if (grown != NULL)
        *cap = next;
    return grown;
}

/*
 * Return a copy of items (*cap elements of size bytes, in stack_items or on
 * the heap) with room for twice as many, updating *cap, or NULL when memory
 * runs out. On failure items is left untouched.
 */
static void *grow_stack_array(void *items, const void *stack_items, size_t *cap,
                              size_t size)
{
    if (items != stack_items)
        return grow_array(items, cap, size);

    size_t stack_cap = *cap;
    void *grown = grow_array(NULL, cap, size);
    if (grown != NULL)
        memcpy(grown, items, stack_cap * size);
    return grown;
}

static int vec_grow(struct parser *p, struct node_vec *vec, size_t count)
{
    while (vec->cap - vec->len < count) {
        void *grown = grow_stack_array(vec->items, vec->stack_items, &vec->cap,
                                       sizeof *vec->items);
        if (grown == NULL)
            return fail(p, SJSON_ERR_NOMEM, p->pos, "out of memory");
        vec->items = grown;
    }
    return SJSON_OK;
}

/* Make room for count more nodes at the end of vec. */
static inline int vec_reserve(struct parser *p, struct node_vec *vec,
                              size_t count)
{
    return vec->cap - vec->len >= count ? SJSON_OK : vec_grow(p, vec, count);
}

/*
 * Push a value that starts at input offset pos onto the open stack, taking
 * the pending member name if there is one.
 */
static int push_value(struct parser *p, enum sjson_type type, size_t str,
                      size_t len, size_t pos)
{
    int rc = vec_reserve(p, &p->open, 1);
    if (rc != SJSON_OK)
        return rc;

    struct json_node *node = &p->open.items[p->open.len++];
    node->type = type;
    node->str = str;
    node->len = len;
    node->items = 0;
    node->count = 0;
    node->has_key = p->has_key;
    if (p->has_key) {
        node->key = p->key;
        node->key_len = p->key_len;
        node->pos = p->key_pos;
        p->has_key = false;
    } else {
        node->key = 0;
        node->key_len = 0;
        node->pos = pos;
    }
    return SJSON_OK;
}

/* ---- Strings ---- */

/*
 * Return the length of the valid UTF-8 sequence of 2 to 4 bytes at s (n
 * bytes available), or 0 when it is invalid. Invalid means a bad lead byte
 * (80-C1, F5-FF), an overlong form, a UTF-16 surrogate, a code point past
 * U+10FFFF or a truncated sequence.
 */
static size_t utf8_sequence_length(const unsigned char *s, size_t n)
{
    unsigned char lo = 0x80, hi = 0xBF;
    size_t need;

    if (s[0] >= 0xC2 && s[0] <= 0xDF)
        need = 2;
    else if (s[0] >= 0xE0 && s[0] <= 0xEF)
        need = 3;
    else if (s[0] >= 0xF0 && s[0] <= 0xF4)
        need = 4;
    else
        return 0;

    /* The second byte carries the limits against overlong forms,
     * surrogates and code points past U+10FFFF. */
    if (s[0] == 0xE0)
        lo = 0xA0;
    else if (s[0] == 0xED)
        hi = 0x9F;
    else if (s[0] == 0xF0)
        lo = 0x90;
    else if (s[0] == 0xF4)
        hi = 0x8F;

    if (n < need || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < need; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    }
    return need;
}

/* Write code point cp as UTF-8 at out and return the byte count. */
static size_t utf8_encode(unsigned long cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/*
 * Read the four hex digits of a \u escape that starts at pos (at the
 * backslash). Returns 0 and sets *cp, or -1 when the escape is cut short or
 * has a non-hex digit.
 */
static int read_hex4(const struct parser *p, size_t pos, unsigned long *cp)
{
    unsigned long value = 0;

    if (p->len - pos < 6 || p->text[pos + 1] != 'u')
        return -1;
    for (size_t i = pos + 2; i < pos + 6; i++) {
        char c = p->text[i];
        unsigned digit;
        if (c >= '0' && c <= '9')
            digit = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            digit = (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            digit = (unsigned)(c - 'A' + 10);
        else
            return -1;
        value = value * 16 + digit;
    }
    *cp = value;
    return 0;
}

/*
 * Decode a \u escape at the current position (the backslash), joining a
 * surrogate pair into one code point. Appends UTF-8 at *out and advances
 * both. Lone surrogates are rejected because they have no UTF-8 form.
 */
static int decode_unicode_escape(struct parser *p, char **out)
{
    size_t start = p->pos;
    unsigned long cp, low;

    if (read_hex4(p, start, &cp) != 0)
        return fail(p, SJSON_ERR_SYNTAX, start,
                    "invalid \\u escape: expected 4 hex digits");
    p->pos += 6;

    if (cp >= 0xDC00 && cp <= 0xDFFF)
        return fail(p, SJSON_ERR_UTF8, start,
                    "lone low surrogate \\u%04lX in string", cp);
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (p->pos >= p->len || p->text[p->pos] != '\\' ||
            read_hex4(p, p->pos, &low) != 0 || low < 0xDC00 || low > 0xDFFF)
            return fail(p, SJSON_ERR_UTF8, start,
                        "lone high surrogate \\u%04lX in string", cp);
        p->pos += 6;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
    }

    *out += utf8_encode(cp, *out);
    return SJSON_OK;
}

/* Decode the escape at the current position (the backslash) into *out. */
static int decode_escape(struct parser *p, char **out)
{
    char c = p->pos + 1 < p->len ? p->text[p->pos + 1] : '\0';
    char byte;

    switch (c) {
    case '"':
    case '\\':
    case '/':
        byte = c;
        break;
    case 'b':
        byte = '\b';
        break;
    case 'f':
        byte = '\f';
        break;
    case 'n':
        byte = '\n';
        break;
    case 'r':
        byte = '\r';
        break;
    case 't':
        byte = '\t';
        break;
    case 'u':
        return decode_unicode_escape(p, out);
    default:
        return fail(p, SJSON_ERR_SYNTAX, p->pos,
                    "invalid escape sequence: backslash before byte 0x%02x",
                    (unsigned char)c);
    }
    *(*out)++ = byte;
    p->pos += 2;
    return SJSON_OK;
}

/*
 * Handle the byte at the current position inside a string that is not plain
 * printable ASCII: an escape, a raw control character or a UTF-8 sequence.
 * Appends the decoded bytes at *out.
 */
static int decode_special(struct parser *p, char **out)
{
    unsigned char c = (unsigned char)p->text[p->pos];

    if (c == '\\')
        return decode_escape(p, out);
    if (c < 0x20)
        return fail(p, SJSON_ERR_SYNTAX, p->pos,
                    "unescaped control character 0x%02x in string", c);

    size_t n = utf8_sequence_length((const unsigned char *)p->text + p->pos,
                                    p->len - p->pos);
    if (n == 0)
        return fail(p, SJSON_ERR_UTF8, p->pos,
                    "invalid UTF-8 sequence starting with byte 0x%02x", c);
    memcpy(*out, p->text + p->pos, n);
    *out += n;
    p->pos += n;
    return SJSON_OK;
}

/* Eight copies of byte b in one word. */
#define BYTES8(b) ((uint64_t)(b)*UINT64_C(0x0101010101010101))

/*
 * Flag the bytes of word that end a run of plain string text: a control
 * character (below 0x20), '"', '\\' or a byte that is not ASCII (0x80 and
 * up). Each subtraction sets the high bit of a byte that is below the
 * subtrahend, so of a control character, or of the byte that equals '"' or
 * '\\' after the XOR. A borrow can flag a later byte too, but only after a
 * byte that ends the run. So the result is 0 exactly when all eight bytes
 * are plain, and otherwise its lowest flag (in memory order) marks the
 * first byte that ends the run.
 */
static uint64_t plain_run_end_flags(uint64_t word)
{
    uint64_t below = word - BYTES8(0x20);
    uint64_t quote = (word ^ BYTES8('"')) - BYTES8(1);
    uint64_t backslash = (word ^ BYTES8('\\')) - BYTES8(1);

    return (below | quote | backslash | word) & BYTES8(0x80);
}

#if defined(__SSE2__) && defined(__GNUC__)
/*
 * Copy the plain bytes from text[run] to *out sixteen at a time, as long as
 * sixteen input bytes are left before len, and stop at the first byte that
 * ends the run (see plain_run_end_flags). Advances *out and returns the
 * new run. Returns with *ended set when it found such a byte. A signed
 * comparison with 0x20 flags both the control characters and the bytes
 * from 0x80, which are negative as signed bytes.
 */
static size_t copy_plain_run16(const char *text, size_t run, size_t len,
                               char **out, bool *ended)
{
    const __m128i quote = _mm_set1_epi8('"');
    const __m128i backslash = _mm_set1_epi8('\\');
    const __m128i space = _mm_set1_epi8(0x20);

    *ended = false;
    while (len - run >= 16) {
        __m128i chunk = _mm_loadu_si128((const __m128i *)(text + run));
        _mm_storeu_si128((__m128i *)*out, chunk);
        __m128i ends =
            _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(chunk, quote),
                                      _mm_cmpeq_epi8(chunk, backslash)),
                         _mm_cmplt_epi8(chunk, space));
        unsigned mask = (unsigned)_mm_movemask_epi8(ends);
        if (mask != 0) {
            size_t plain = (size_t)__builtin_ctz(mask);
            *out += plain;
            *ended = true;
            return run + plain;
        }
        *out += 16;
        run += 16;
    }
    return run;
}
#endif

/*
 * Decode the string token at the current position (the opening quote) into
 * p->strings, NUL-terminated. Sets *off and *len to where the bytes went.
 * Decoded text never runs ahead of the input: the output sits at least one
 * byte before the input position (see parser_init), so storing a whole
 * block of eight or sixteen input bytes stays inside p->strings.
 */
static int parse_string(struct parser *p, size_t *off, size_t *len)
{
    size_t start = p->pos;
    char *begin = p->strings + p->strings_len;
    char *out = begin;

    p->pos++;
    for (;;) {
        /* Copy the run of printable ASCII sixteen bytes at a time where
         * SSE2 is available, then eight at a time, then byte by byte near
         * the end of the input. A block that holds the end of the run is
         * stored whole too: its bytes past the run are overwritten by what
         * follows or lie past the final length. */
        const char *text = p->text;
        size_t run = p->pos;
        bool ended = false;
#if defined(__SSE2__) && defined(__GNUC__)
        run = copy_plain_run16(text, run, p->len, &out, &ended);
#endif
        while (!ended && p->len - run >= 8) {
            uint64_t word;
            memcpy(&word, text + run, 8);
            uint64_t flags = plain_run_end_flags(word);
            memcpy(out, &word, 8);
            if (flags != 0) {
#if defined(__GNUC__) && defined(__BYTE_ORDER__) &&                            \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
                size_t plain = (size_t)__builtin_ctzll(flags) / 8;
                out += plain;
                run += plain;
#endif
                break;
            }
            out += 8;
            run += 8;
        }
        while (!ended && run < p->len) {
            unsigned char c = (unsigned char)text[run];
            if (c < 0x20 || c == '"' || c == '\\' || c >= 0x80)
                break;
            *out++ = (char)c;
            run++;
        }
        p->pos = run;

        if (p->pos == p->len)
            return fail(p, SJSON_ERR_SYNTAX, start, "unterminated string");
        if (p->text[p->pos] == '"')
            break;
        int rc = decode_special(p, &out);
        if (rc != SJSON_OK)
            return rc;
    }

    p->pos++;
    *out = '\0';
    *off = p->strings_len;
    *len = (size_t)(out - begin);
    p->strings_len += *len + 1;
    return SJSON_OK;
}

/* ---- Numbers ---- */

/*
 * Check the JSON number grammar from s[i] (n bytes in all). On success
 * returns NULL and sets *end past the token. On failure returns what is
 * wrong and sets *end to the offending offset.
 */
static const char *scan_number(const char *s, size_t n, size_t i, size_t *end)
{
    if (i < n && s[i] == '-')
        i++;
    *end = i;
    if (i == n || !is_digit(s[i]))
        return "number has no digits before its point or exponent";
    if (s[i] == '0' && i + 1 < n && is_digit(s[i + 1]))
        return "number has a leading zero";
    while (i < n && is_digit(s[i]))
        i++;

    if (i < n && s[i] == '.') {
        *end = ++i;
        if (i == n || !is_digit(s[i]))
            return "number has no digits after its decimal point";
        while (i < n && is_digit(s[i]))
            i++;
    }

    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        *end = i;
        if (i == n || !is_digit(s[i]))
            return "number has no digits in its exponent";
        while (i < n && is_digit(s[i]))
            i++;
    }
    *end = i;
    return NULL;
}

/* Parse the number token at the current position and push its text. */
static int parse_number(struct parser *p)
{
    size_t start = p->pos, end;
    const char *problem = scan_number(p->text, p->len, start, &end);

    if (problem != NULL)
        return fail(p, SJSON_ERR_NUMBER, end, "invalid number: %s", problem);
    /* A token such as "1.5.2", "1e5e3" or "0x10" is one bad number, not a
     * number followed by unexpected data. */
    if (end < p->len && is_number_byte(p->text[end]))
        return fail(p, SJSON_ERR_NUMBER, end,
                    "invalid number: unexpected '%c' after it", p->text[end]);

    size_t len = end - start;
    size_t off = p->strings_len;
    memcpy(p->strings + off, p->text + start, len);
    p->strings[off + len] = '\0';
    p->strings_len += len + 1;

    p->pos = end;
    return push_value(p, SJSON_NUMBER, off, len, start);
}

/* ---- Structure ---- */

/*
 * Parse true, false or null at the current position. Other letters
 * (NaN, Infinity, a misspelling) are syntax errors.
 */
static int parse_literal(struct parser *p)
{
    static const struct {
        const char *word;
        size_t len;
        enum sjson_type type;
    } literals[] = {{"true", 4, SJSON_TRUE},
                    {"false", 5, SJSON_FALSE},
                    {"null", 4, SJSON_NULL}};

    for (size_t i = 0; i < sizeof literals / sizeof literals[0]; i++) {
        if (p->len - p->pos >= literals[i].len &&
            memcmp(p->text + p->pos, literals[i].word, literals[i].len) == 0) {
            p->pos += literals[i].len;
            return push_value(p, literals[i].type, 0, 0,
                              p->pos - literals[i].len);
        }
    }
    return fail(p, SJSON_ERR_SYNTAX, p->pos,
                "invalid literal: expected true, false or null");
}

static inline void skip_space(struct parser *p)
{
    /* Most tokens follow each other without white space. */
    while (p->pos < p->len && (unsigned char)p->text[p->pos] <= ' ' &&
           is_space(p->text[p->pos]))
        p->pos++;
}

/*
 * Parse a member name and the colon after it, and keep the name as the
 * pending key for the value that follows.
 */
static int parse_member_name(struct parser *p)
{
    skip_space(p);
    if (p->pos == p->len || p->text[p->pos] != '"')
        return fail(p, SJSON_ERR_SYNTAX, p->pos,
                    "expected a string as object member name");

    size_t key_pos = p->pos;
    int rc = parse_string(p, &p->key, &p->key_len);
    if (rc != SJSON_OK)
        return rc;

    skip_space(p);
    if (p->pos == p->len || p->text[p->pos] != ':')
        return fail(p, SJSON_ERR_SYNTAX, p->pos,
                    "expected ':' after object member name");
    p->pos++;
    p->has_key = true;
    p->key_pos = key_pos;
    return SJSON_OK;
}

/* Push the node of a container at the current position and open it. */
static int open_container(struct parser *p, bool object)
{
    if (p->max_depth < 0 || p->depth >= (size_t)p->max_depth)
        return fail(p, SJSON_ERR_DEPTH, p->pos,
                    "nesting is deeper than the limit of %d", p->max_depth);

    int rc = push_value(p, object ? SJSON_OBJECT : SJSON_ARRAY, 0, 0, p->pos);
    if (rc != SJSON_OK)
        return rc;

    if (p->depth == p->frames_cap) {
        void *grown = grow_stack_array(p->frames, p->stack_frames,
                                       &p->frames_cap, sizeof *p->frames);
        if (grown == NULL)
            return fail(p, SJSON_ERR_NOMEM, p->pos, "out of memory");
        p->frames = grown;
    }
    p->frames[p->depth].first = p->open.len;
    p->frames[p->depth].object = object;
    p->depth++;
    p->pos++;
    return SJSON_OK;
}

/*
 * Write key (len bytes) into buf (cap bytes) for an error message: printable
 * ASCII as is, other bytes as \xHH, cut with "..." when long.
 */
static void quote_key(char *buf, size_t cap, const char *key, size_t len)
{
    size_t used = 0;

    for (size_t i = 0; i < len && used + 5 < cap; i++) {
        unsigned char c = (unsigned char)key[i];
        if (used >= MESSAGE_KEY_MAX) {
            memcpy(buf + used, "...", 3);
            used += 3;
            break;
        }
        if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\')
            buf[used++] = (char)c;
        else
            used += (size_t)snprintf(buf + used, cap - used, "\\x%02x", c);
    }
    buf[used] = '\0';
}

static int report_duplicate(struct parser *p, const struct json_node *member)
{
    char shown[MESSAGE_KEY_MAX + 8];

    quote_key(shown, sizeof shown, p->strings + member->key, member->key_len);
    return fail(p, SJSON_ERR_DUPLICATE_KEY, member->pos,
                "duplicate object key \"%s\"", shown);
}

static int compare_key_refs(const void *a, const void *b)
{
    const struct key_ref *x = a, *y = b;
    size_t common = x->len < y->len ? x->len : y->len;
    int order = memcmp(x->bytes, y->bytes, common);

    if (order != 0)
        return order;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return x->index < y->index ? -1 : (x->index > y->index);
}

/*
 * Find duplicate names among count members (count > DUPLICATE_SCAN_MAX) by
 * sorting their keys, and report the first repeated name in document
 * order.
 */
static int check_duplicates_sorted(struct parser *p,
                                   const struct json_node *members,
                                   size_t count)
{
    while (p->keys_cap < count) {
        void *grown = grow_array(p->keys, &p->keys_cap, sizeof *p->keys);
        if (grown == NULL)
            return fail(p, SJSON_ERR_NOMEM, p->pos, "out of memory");
        p->keys = grown;
    }
    for (size_t i = 0; i < count; i++) {
        p->keys[i].bytes = p->strings + members[i].key;
        p->keys[i].len = members[i].key_len;
        p->keys[i].index = i;
    }
    qsort(p->keys, count, sizeof *p->keys, compare_key_refs);

    /* Equal keys sort by position, so each repeat follows its earlier
     * occurrence. The smallest such index is the first repeat. */
    size_t first = count;
    for (size_t i = 1; i < count; i++) {
        const struct key_ref *a = &p->keys[i - 1], *b = &p->keys[i];
        if (a->len == b->len && memcmp(a->bytes, b->bytes, a->len) == 0 &&
            b->index < first)
            first = b->index;
    }
    return first < count ? report_duplicate(p, &members[first]) : SJSON_OK;
}

/* Reject an object whose members repeat a name (compared as bytes). */
static int check_duplicates(struct parser *p, const struct json_node *members,
                            size_t count)
{
    if (count > DUPLICATE_SCAN_MAX)
        return check_duplicates_sorted(p, members, count);

    for (size_t i = 1; i < count; i++) {
        for (size_t j = 0; j < i; j++) {
            if (members[i].key_len == members[j].key_len &&
                memcmp(p->strings + members[i].key, p->strings + members[j].key,
                       members[i].key_len) == 0)
                return report_duplicate(p, &members[i]);
        }
    }
    return SJSON_OK;
}

/*
 * Close the innermost container: move its children from the open stack to
 * the end of the done array and link them to the container's node.
 */
static int close_container(struct parser *p)
{
    const struct json_frame *frame = &p->frames[p->depth - 1];
    size_t first = frame->first;
    size_t count = p->open.len - first;
    struct json_node *children = p->open.items + first;

    if (frame->object) {
        int rc = check_duplicates(p, children, count);
        if (rc != SJSON_OK)
            return rc;
    }

    /* Growing p->done leaves p->open and so children in place. */
    int rc = vec_reserve(p, &p->done, count);
    if (rc != SJSON_OK)
        return rc;
    struct json_node *parent = &p->open.items[first - 1];
    parent->items = p->done.len;
    parent->count = count;
    if (count > 0)
        memcpy(p->done.items + p->done.len, children, count * sizeof *children);
    p->done.len += count;
    p->open.len = first;
    p->depth--;
    p->pos++;
    return SJSON_OK;
}

/*
 * Parse the start of one value: a whole scalar, an empty container, or the
 * opening of a container (and its first member name). *opened is set when a
 * container was left open, so that a value must come next.
 */
static int parse_value(struct parser *p, bool *opened)
{
    *opened = false;
    skip_space(p);
    if (p->pos == p->len)
        return fail(p, SJSON_ERR_SYNTAX, p->pos,
                    "unexpected end of input: expected a value");

    char c = p->text[p->pos];
    if (c == '"') {
        size_t start = p->pos, off, len;
        int rc = parse_string(p, &off, &len);
        if (rc != SJSON_OK)
            return rc;
        return push_value(p, SJSON_STRING, off, len, start);
    }
    if (c == '-' || is_digit(c))
        return parse_number(p);
    if (c == '+' || c == '.')
        return fail(p, SJSON_ERR_NUMBER, p->pos,
                    "invalid number: it must start with '-' or a digit");
    if (c >= 'a' && c <= 'z')
        return parse_literal(p);
    if (c != '{' && c != '[')
        return fail(p, SJSON_ERR_SYNTAX, p->pos,
                    "unexpected byte 0x%02x: expected a value",
                    (unsigned char)c);

    int rc = open_container(p, c == '{');
    if (rc != SJSON_OK)
        return rc;
    skip_space(p);
    if (p->pos < p->len && p->text[p->pos] == (c == '{' ? '}' : ']'))
        return close_container(p);
    *opened = true;
    return c == '{' ? parse_member_name(p) : SJSON_OK;
}

/*
 * After a value: close the containers that end here, then either consume a
 * ',' (and the next member name) so that *more is true, or reach the end of
 * the top-level value, where only whitespace may follow.
 */
static int finish_value(struct parser *p, bool *more)
{
    for (;;) {
        skip_space(p);
        if (p->depth == 0) {
            *more = false;
            if (p->pos != p->len)
                return fail(p, SJSON_ERR_SYNTAX, p->pos,
                            "unexpected data after the top-level value");
            return SJSON_OK;
        }

        bool object = p->frames[p->depth - 1].object;
        char close = object ? '}' : ']';
        if (p->pos == p->len)
            return fail(p, SJSON_ERR_SYNTAX, p->pos,
                        "unexpected end of input: expected ',' or '%c'", close);
        if (p->text[p->pos] == ',') {
            p->pos++;
            *more = true;
            return object ? parse_member_name(p) : SJSON_OK;
        }
        if (p->text[p->pos] != close)
            return fail(p, SJSON_ERR_SYNTAX, p->pos,
                        "expected ',' or '%c' after %s", close,
                        object ? "object member" : "array element");
        int rc = close_container(p);
        if (rc != SJSON_OK)
            return rc;
    }
}

static int parse_document(struct parser *p)
{
    for (;;) {
        bool opened, more = false;
        int rc = parse_value(p, &opened);
        if (rc != SJSON_OK)
            return rc;
        if (opened)
            continue;
        rc = finish_value(p, &more);
        if (rc != SJSON_OK || !more)
            return rc;
    }
}

/* ---- Document ---- */

/* Fill value from node without its children: items is NULL and count is
 * the container's child count. */
static void set_flat_value(struct sjson_value *value,
                           const struct json_node *node, const char *strings)
{
    bool text = node->type == SJSON_STRING || node->type == SJSON_NUMBER;

    value->type = node->type;
    value->str = text ? strings + node->str : NULL;
    value->len = node->len;
    value->key = node->has_key ? strings + node->key : NULL;
    value->key_len = node->key_len;
    value->items = NULL;
    value->count = node->count;
}

static void set_value(struct sjson_value *value, const struct json_node *node,
                      const struct sjson_doc *doc, const char *strings)
{
    set_flat_value(value, node, strings);
    value->items = node->count ? &doc->values[node->items] : NULL;
}

/*
 * Build the final document from the done array and the root left on the
 * open stack, in one allocation: *doc when it is not NULL and large
 * enough, else *doc grown or a new one. Returns 0, or -1 when memory runs
 * out, with *doc left as it was.
 */
static int build_doc(const struct parser *p, struct sjson_doc **doc_inout)
{
    size_t count = p->done.len + 1;
    size_t head = sizeof(struct sjson_doc);

    if (count > (SIZE_MAX - head - p->strings_len) / sizeof(struct sjson_value))
        return -1;
    size_t size = head + count * sizeof(struct sjson_value) + p->strings_len;
    struct sjson_doc *doc = *doc_inout;
    if (doc == NULL || doc->size < size) {
        /* Rounding up lets documents of slightly different sizes, such
         * as records with names of different lengths, share one
         * allocation. The old contents need not survive, so free before
         * allocating. */
        if (doc != NULL && size <= SIZE_MAX - DOC_SIZE_STEP)
            size = (size + DOC_SIZE_STEP - 1) / DOC_SIZE_STEP * DOC_SIZE_STEP;
        free(doc);
        *doc_inout = NULL;
        doc = malloc(size);
        if (doc == NULL)
            return -1;
        doc->size = size;
        *doc_inout = doc;
    }

    char *strings = (char *)&doc->values[count];
    if (p->strings_len > 0)
        memcpy(strings, p->strings, p->strings_len);
    for (size_t i = 0; i < p->done.len; i++)
        set_value(&doc->values[i], &p->done.items[i], doc, strings);
    set_value(&doc->values[count - 1], &p->open.items[0], doc, strings);
    doc->root = &doc->values[count - 1];
    return 0;
}

/* Set up p for text with its scratch in stack, or fail with
 * SJSON_ERR_TOO_LARGE or SJSON_ERR_NOMEM. The decoded strings go to
 * strings (len + 1 bytes) when it is not NULL. */
static int parser_init(struct parser *p, const char *text, size_t len,
                       const struct sjson_limits *limits, struct sjson_err *err,
                       struct parse_stack *stack, char *strings)
{
    memset(p, 0, sizeof *p);
    p->open.items = p->open.stack_items = stack->open;
    p->open.cap = PARSE_STACK_NODES;
    p->done.items = p->done.stack_items = stack->done;
    p->done.cap = PARSE_STACK_NODES;
    p->frames = p->stack_frames = stack->frames;
    p->frames_cap = PARSE_STACK_FRAMES;
    p->text = text;
    p->len = len;
    p->err = err;
    p->max_depth = limits ? limits->max_depth : SJSON_DEFAULT_MAX_DEPTH;

    size_t max_bytes = limits ? limits->max_bytes : SJSON_DEFAULT_MAX_BYTES;
    if (len > max_bytes || len == SIZE_MAX)
        return fail(p, SJSON_ERR_TOO_LARGE, max_bytes,
                    "input is %zu bytes, more than the limit of %zu", len,
                    max_bytes);

    /* Every string token of k bytes stores at most k - 2 decoded bytes and
     * a NUL. A number token of k bytes stores k + 1, but the byte after it
     * lies in no token, except for a top-level number at the very end. So
     * len + 1 bytes hold every string and number of any input. */
    if (strings != NULL) {
        p->strings = strings;
    } else if (len < PARSE_STACK_BYTES) {
        p->strings = stack->strings;
    } else {
        p->strings = malloc(len + 1);
        p->strings_owned = true;
    }
    if (p->strings == NULL)
        return fail(p, SJSON_ERR_NOMEM, 0, "out of memory");
    return SJSON_OK;
}

static void parser_free(struct parser *p)
{
    if (p->strings_owned)
        free(p->strings);
    if (p->open.items != p->open.stack_items)
        free(p->open.items);
    if (p->done.items != p->done.stack_items)
        free(p->done.items);
    if (p->frames != p->stack_frames)
        free(p->frames);
    free(p->keys);
}

/* Clear err, or point it at unused when the caller passed none. */
static struct sjson_err *clear_err(struct sjson_err *err,
                                   struct sjson_err *unused)
{
    if (err == NULL)
        err = unused;
    err->code = SJSON_OK;
    err->offset = 0;
    err->message[0] = '\0';
    return err;
}

int sjson_parse_reuse(const char *text, size_t len,
                      const struct sjson_limits *limits, struct sjson_doc **doc,
                      struct sjson_err *err)
{
    struct sjson_err unused;
    struct parse_stack stack;
    struct parser p;

    if (*doc != NULL)
        (*doc)->root = NULL;
    err = clear_err(err, &unused);

    int rc = parser_init(&p, text, len, limits, err, &stack, NULL);
    if (rc == SJSON_OK)
        rc = parse_document(&p);
    if (rc == SJSON_OK && build_doc(&p, doc) != 0)
        rc = fail(&p, SJSON_ERR_NOMEM, len, "out of memory");
    parser_free(&p);
    return rc;
}

int sjson_parse(const char *text, size_t len, const struct sjson_limits *limits,
                struct sjson_doc **out, struct sjson_err *err)
{
    *out = NULL;
    int rc = sjson_parse_reuse(text, len, limits, out, err);
    if (rc != SJSON_OK) {
        sjson_doc_free(*out);
        *out = NULL;
    }
    return rc;
}

int sjson_parse_flat(const char *text, size_t len,
                     const struct sjson_limits *limits, char *strings,
                     struct sjson_value *children, size_t children_cap,
                     struct sjson_value *root, struct sjson_err *err)
{
    struct sjson_err unused;
    struct parse_stack stack;
    struct parser p;

    memset(root, 0, sizeof *root);
    err = clear_err(err, &unused);

    /* The same steps as sjson_parse up to the document, which is the only
     * step left out, so both accept and reject the same inputs. */
    int rc = parser_init(&p, text, len, limits, err, &stack, strings);
    if (rc == SJSON_OK)
        rc = parse_document(&p);
    if (rc == SJSON_OK) {
        const struct json_node *top = &p.open.items[0];
        set_flat_value(root, top, p.strings);
        if (top->count > 0 && top->count <= children_cap) {
            for (size_t i = 0; i < top->count; i++)
                set_flat_value(&children[i], &p.done.items[top->items + i],
                               p.strings);
            root->items = children;
        }
    }
    parser_free(&p);
    return rc;
}

void sjson_doc_free(struct sjson_doc *doc)
{
    free(doc);
}

const struct sjson_value *sjson_doc_root(const struct sjson_doc *doc)
{
    return doc ? doc->root : NULL;
}

const struct sjson_value *sjson_object_get(const struct sjson_value *object,
                                           const char *key)
{
    /* A value of sjson_parse_flat may have a count without items. */
    if (object == NULL || object->type != SJSON_OBJECT || key == NULL ||
        object->items == NULL)
        return NULL;

    size_t len = strlen(key);
    for (size_t i = 0; i < object->count; i++) {
        const struct sjson_value *member = &object->items[i];
        /* Member names are NUL-terminated, so the first bytes compare
         * even for empty names. */
        if (member->key_len == len && member->key[0] == key[0] &&
            memcmp(member->key, key, len) == 0)
            return member;
    }
    return NULL;
}

const char *sjson_error_name(enum sjson_error code)
{
    switch (code) {
    case SJSON_OK:
        return "ok";
    case SJSON_ERR_SYNTAX:
        return "syntax";
    case SJSON_ERR_DEPTH:
        return "depth";
    case SJSON_ERR_DUPLICATE_KEY:
        return "duplicate_key";
    case SJSON_ERR_UTF8:
        return "utf8";
    case SJSON_ERR_NUMBER:
        return "number";
    case SJSON_ERR_TOO_LARGE:
        return "too_large";
    case SJSON_ERR_NOMEM:
        return "nomem";
    }
    return "unknown";
}

/* ---- Canonical form ---- */

/* Token lengths past this are rejected so exponent sums fit in int64_t. */
#define NUMBER_TOKEN_MAX ((size_t)1000000000000000)
/* Exponent digits stop adding up here, because any larger value is out of
 * range anyway. */
#define EXPONENT_SATURATION 10000000000000000LL
#define EXPONENT_LIMIT      1000000000LL

/* Bytes of canonical text kept on the stack before the text moves to the
 * heap. A telemetry record takes about 250. */
#define CANONICAL_STACK_BYTES 1024
/* Frames and sorted members kept on the stack before they move to the
 * heap. */
#define CANONICAL_STACK_FRAMES  8
#define CANONICAL_STACK_MEMBERS 32
/* Objects with at most this many members are sorted by insertion, larger
 * ones with qsort. */
#define INSERTION_SORT_MAX 16

/*
 * Text under construction: in a caller's buffer until it outgrows it, then
 * on the heap. cap never passes room, so a writer that has reserved space
 * stays within room.
 */
struct text_writer {
    char *data;
    size_t len;
    size_t cap;
    size_t room; /* largest allowed len */
    char *heap;  /* owned, or NULL while data is the caller's buffer */
};

static void writer_init(struct text_writer *w, char *buf, size_t buf_len,
                        size_t room)
{
    w->data = buf;
    w->len = 0;
    w->cap = buf_len < room ? buf_len : room;
    w->room = room;
    w->heap = NULL;
}

/* Grow w so that n more bytes fit. Returns 0, or -1 when that would pass
 * w->room or memory runs out. */
static int writer_grow(struct text_writer *w, size_t n)
{
    if (n > w->room - w->len)
        return -1;

    size_t need = w->len + n;
    size_t cap = w->cap < SIZE_MAX / 2 ? w->cap * 2 : SIZE_MAX;
    if (cap < need)
        cap = need;
    if (cap > w->room)
        cap = w->room;
    char *grown = realloc(w->heap, cap);
    if (grown == NULL)
        return -1;
    if (w->heap == NULL && w->len > 0)
        memcpy(grown, w->data, w->len);
    w->heap = w->data = grown;
    w->cap = cap;
    return 0;
}

/* Make sure n more bytes fit. Returns 0 or -1 like writer_grow. */
static inline int writer_reserve(struct text_writer *w, size_t n)
{
    return n <= w->cap - w->len ? 0 : writer_grow(w, n);
}

static int writer_put(struct text_writer *w, const char *bytes, size_t n)
{
    if (writer_reserve(w, n) != 0)
        return -1;
    memcpy(w->data + w->len, bytes, n);
    w->len += n;
    return 0;
}

static int writer_putc(struct text_writer *w, char c)
{
    if (writer_reserve(w, 1) != 0)
        return -1;
    w->data[w->len++] = c;
    return 0;
}

/* Append the text of w to out. Returns 0, or -1 when out has failed or
 * cannot take it. */
static int writer_flush(const struct text_writer *w, struct strbuf *out)
{
    return sb_append(out, w->data, w->len) == 0 ? 0 : -1;
}

static void writer_free(struct text_writer *w)
{
    free(w->heap);
    w->heap = NULL;
}

/* Read the exponent digits from s[i] to s[n], saturating. */
static long long read_exponent(const char *s, size_t n, size_t i)
{
    bool negative = false;
    long long value = 0;

    if (s[i] == '+' || s[i] == '-')
        negative = s[i++] == '-';
    for (; i < n; i++) {
        if (value < EXPONENT_SATURATION)
            value = value * 10 + (s[i] - '0');
    }
    return negative ? -value : value;
}

/* Write value in decimal at the end of buf and return where it starts. */
static size_t format_exponent(long long value, char buf[24])
{
    unsigned long long magnitude = value < 0 ? 0ULL - (unsigned long long)value
                                             : (unsigned long long)value;
    size_t start = 24;

    do {
        buf[--start] = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude != 0);
    if (value < 0)
        buf[--start] = '-';
    return start;
}

/* Tokens of up to this many bytes without an exponent take the short path
 * of plain_number_canonical. Their exponents stay within -40..40. */
#define SHORT_NUMBER_MAX 40

/*
 * Write the canonical text of tok when it has no exponent and at most
 * SHORT_NUMBER_MAX bytes, as number_canonical would: its digits without
 * leading and trailing zeros, 'e' and the exponent. Returns 0, -1 when w
 * cannot take the text, or 1 when tok has another form or is invalid, so
 * that number_canonical must take it.
 */
static int plain_number_canonical(const char *tok, size_t len,
                                  struct text_writer *w)
{
    size_t first = len > 0 && tok[0] == '-';
    size_t i = first;

    if (len > SHORT_NUMBER_MAX || i == len || !is_digit(tok[i]))
        return 1;
    if (tok[i] == '0' && i + 1 < len && tok[i + 1] != '.')
        return 1;
    while (i < len && is_digit(tok[i]))
        i++;
    size_t int_end = i, fraction_len = 0;
    if (i < len) {
        if (tok[i] != '.')
            return 1;
        size_t fraction = ++i;
        while (i < len && is_digit(tok[i]))
            i++;
        fraction_len = i - fraction;
        if (fraction_len == 0 || i != len)
            return 1;
    }

    /* The kept digits run from lead to last, except for a point between
     * them. */
    size_t lead = first;
    if (tok[first] == '0') {
        while (lead < len && (tok[lead] == '0' || tok[lead] == '.'))
            lead++;
        if (lead == len)
            return writer_putc(w, '0');
    }
    size_t last = len;
    while (tok[last - 1] == '0' || tok[last - 1] == '.')
        last--;
    bool point_after = fraction_len > 0 && last <= int_end;
    bool point_inside = fraction_len > 0 && lead < int_end && int_end < last;
    long exponent = (long)(len - last - point_after) - (long)fraction_len;

    unsigned long magnitude =
        (unsigned long)(exponent < 0 ? -exponent : exponent);
    size_t digits = last - lead - point_inside;
    size_t total =
        first + digits + 1 + (exponent < 0) + (magnitude < 10 ? 1 : 2);
    if (writer_reserve(w, total) != 0)
        return -1;

    char *o = w->data + w->len;
    if (first)
        *o++ = '-';
    size_t head_end = point_inside ? int_end : last;
    for (size_t k = lead; k < head_end; k++)
        *o++ = tok[k];
    for (size_t k = head_end + point_inside; k < last; k++)
        *o++ = tok[k];
    *o++ = 'e';
    if (exponent < 0)
        *o++ = '-';
    if (magnitude >= 10)
        *o++ = (char)('0' + magnitude / 10);
    *o = (char)('0' + magnitude % 10);
    w->len += total;
    return 0;
}

/* Write the canonical text of the number token tok to w. Returns 0, or -1
 * as sjson_number_canonical describes. */
static int number_canonical(const char *tok, size_t len, struct text_writer *w)
{
    size_t end;

    if (tok != NULL) {
        int rc = plain_number_canonical(tok, len, w);
        if (rc <= 0)
            return rc;
    }
    if (tok == NULL || len > NUMBER_TOKEN_MAX ||
        scan_number(tok, len, 0, &end) != NULL || end != len)
        return -1;

    /* Split into [int_start, int_end) digits, an optional fraction after
     * the point, and the exponent after 'e'. */
    size_t int_start = tok[0] == '-' ? 1 : 0, int_end = int_start;
    while (int_end < len && is_digit(tok[int_end]))
        int_end++;
    size_t digits_end = int_end;
    while (digits_end < len &&
           (is_digit(tok[digits_end]) || tok[digits_end] == '.'))
        digits_end++;
    long long exponent =
        digits_end < len ? read_exponent(tok, len, digits_end + 1) : 0;

    /* Find the first and last non-zero digits across both parts. */
    size_t first = int_start, last = digits_end;
    while (first < digits_end && (tok[first] == '0' || tok[first] == '.'))
        first++;
    if (first == digits_end)
        return writer_putc(w, '0');
    while (tok[last - 1] == '0' || tok[last - 1] == '.')
        last--;

    /* The kept digits end at index last_index of the digit sequence
     * without the point, so the value is digits x 10^(exponent + int_len - 1
     * - last_index). */
    size_t int_len = int_end - int_start;
    size_t last_index = last - 1 - int_start - (last - 1 > int_end ? 1 : 0);
    exponent += (long long)int_len - 1 - (long long)last_index;
    if (exponent > EXPONENT_LIMIT || exponent < -EXPONENT_LIMIT)
        return -1;

    /* The digits run from first to last, except for the point when it
     * lies between them. */
    size_t head_end = last, tail_start = last;
    if (first < int_end && last > int_end + 1) {
        head_end = int_end;
        tail_start = int_end + 1;
    }
    char exponent_text[24];
    size_t exponent_start = format_exponent(exponent, exponent_text);
    size_t exponent_len = sizeof exponent_text - exponent_start;
    bool negative = tok[0] == '-';
    size_t total = (size_t)negative + (head_end - first) + (last - tail_start) +
                   1 + exponent_len;

    if (writer_reserve(w, total) != 0)
        return -1;
    char *o = w->data + w->len;
    if (negative)
        *o++ = '-';
    memcpy(o, tok + first, head_end - first);
    o += head_end - first;
    memcpy(o, tok + tail_start, last - tail_start);
    o += last - tail_start;
    *o++ = 'e';
    memcpy(o, exponent_text + exponent_start, exponent_len);
    w->len += total;
    return 0;
}

int sjson_number_canonical(const char *tok, size_t len, struct strbuf *out)
{
    char buf[64];
    struct text_writer w;

    writer_init(&w, buf, sizeof buf, SIZE_MAX);
    int rc = number_canonical(tok, len, &w);
    if (rc == 0)
        rc = writer_flush(&w, out);
    writer_free(&w);
    return rc;
}

/*
 * Tell whether any of the eight bytes of word needs an escape in canonical
 * text: a control character, '"' or '\\'. Bytes of 0x80 and up need none,
 * so each test also requires a clear high bit in the byte tested. As in
 * ends_plain_run, a borrow can flag a later byte only after a byte that
 * needs an escape.
 */
static bool needs_escape(uint64_t word)
{
    uint64_t quote = word ^ BYTES8('"');
    uint64_t backslash = word ^ BYTES8('\\');
    uint64_t below = (word - BYTES8(0x20)) & ~word;

    below |= (quote - BYTES8(1)) & ~quote;
    below |= (backslash - BYTES8(1)) & ~backslash;
    return (below & BYTES8(0x80)) != 0;
}

/* needs_escape for four bytes, which it reads from the low half. */
static bool needs_escape4(uint32_t word)
{
    return needs_escape((uint64_t)word | UINT64_C(0x4141414100000000));
}

/*
 * Copy s (n bytes, 4 to 8) to o when no byte needs an escape, as two
 * words that overlap when n < 8. Returns whether it did.
 */
static bool copy_short_plain(char *o, const char *s, size_t n)
{
    uint32_t head, tail;

    memcpy(&head, s, 4);
    memcpy(&tail, s + n - 4, 4);
    if (needs_escape4(head) || needs_escape4(tail))
        return false;
    memcpy(o, &head, 4);
    memcpy(o + n - 4, &tail, 4);
    return true;
}

/* Append s (n bytes) as a JSON string, escaping only '"', '\\' and bytes
 * below 0x20, the latter always as \u00xx. */
static int canonical_string(struct text_writer *w, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";

    /* Room for the text without escapes; each escape reserves its extra
     * bytes when it comes, so the reservation never passes the final
     * length. */
    if (n > SIZE_MAX - 2 || writer_reserve(w, n + 2) != 0)
        return -1;
    char *o = w->data + w->len;
    size_t i = 0;

    *o++ = '"';
    /* Most member names have 4 to 8 bytes and need no escape. */
    if (n >= 4 && n <= 8 && copy_short_plain(o, s, n)) {
        o[n] = '"';
        w->len += n + 2;
        return 0;
    }
    for (;;) {
        while (n - i >= 8) {
            uint64_t word;
            memcpy(&word, s + i, 8);
            if (needs_escape(word))
                break;
            memcpy(o, &word, 8);
            o += 8;
            i += 8;
        }
        /* The last 1 to 7 bytes of a string of 8 or more. When the 8 bytes
         * that end the string need no escape, those of them before i were
         * copied as they are and sit just before o. So one overlapping
         * word copies the rest. */
        if (i < n && n >= 8 && n - i < 8) {
            uint64_t word;
            memcpy(&word, s + n - 8, 8);
            if (!needs_escape(word)) {
                memcpy(o - (8 - (n - i)), &word, 8);
                o += n - i;
                i = n;
            }
        }
        while (i < n) {
            unsigned char c = (unsigned char)s[i];
            if (c < 0x20 || c == '"' || c == '\\')
                break;
            *o++ = (char)c;
            i++;
        }
        if (i == n)
            break;

        unsigned char c = (unsigned char)s[i++];
        size_t escape_len = c == '"' || c == '\\' ? 2 : 6;
        w->len = (size_t)(o - w->data);
        if (writer_reserve(w, escape_len + (n - i) + 1) != 0)
            return -1;
        o = w->data + w->len;
        if (escape_len == 2) {
            o[0] = '\\';
            o[1] = (char)c;
        } else {
            memcpy(o, "\\u00", 4);
            o[4] = hex[c >> 4];
            o[5] = hex[c & 15];
        }
        o += escape_len;
    }
    *o++ = '"';
    w->len = (size_t)(o - w->data);
    return 0;
}

/* Order members by key bytes, a prefix first. Equal keys, which a parsed
 * document never has, keep their array order so the output stays fixed.
 * Returns <0, 0 or >0 like memcmp. */
static inline int member_order(const struct sjson_value *x,
                               const struct sjson_value *y)
{
    /* Most keys differ in their first byte. */
    if (x->key_len > 0 && y->key_len > 0 && x->key[0] != y->key[0])
        return (unsigned char)x->key[0] < (unsigned char)y->key[0] ? -1 : 1;

    size_t common = x->key_len < y->key_len ? x->key_len : y->key_len;
    int order = common ? memcmp(x->key, y->key, common) : 0;

    if (order != 0)
        return order;
    if (x->key_len != y->key_len)
        return x->key_len < y->key_len ? -1 : 1;
    return x < y ? -1 : (x > y);
}

/* member_order for qsort, on pointers to members. */
static int compare_members(const void *a, const void *b)
{
    return member_order(*(const struct sjson_value *const *)a,
                        *(const struct sjson_value *const *)b);
}

/* Sort the pointers of a small object's members in place. */
static void insertion_sort_members(const struct sjson_value **members,
                                   size_t count)
{
    for (size_t i = 1; i < count; i++) {
        const struct sjson_value *member = members[i];
        size_t j = i;
        while (j > 0 && member_order(member, members[j - 1]) < 0) {
            members[j] = members[j - 1];
            j--;
        }
        members[j] = member;
    }
}

/* A container being written. For an object, base indexes the sorted member
 * list in canonical_state.order. */
struct canonical_frame {
    const struct sjson_value *value;
    size_t base;
    size_t next;
};

/* Both arrays grow with the tree: frames up to its depth, order up to the
 * members of the objects open at once, so at most its value count. Each
 * starts in the stack arrays that follow. */
struct canonical_state {
    struct text_writer text;
    struct canonical_frame *frames;
    size_t depth;
    size_t frames_cap;
    const struct sjson_value **order;
    size_t order_len;
    size_t order_cap;
    struct canonical_frame stack_frames[CANONICAL_STACK_FRAMES];
    const struct sjson_value *stack_order[CANONICAL_STACK_MEMBERS];
};

/* Append the members of object to state->order, sorted by key. */
static int push_sorted_members(struct canonical_state *state,
                               const struct sjson_value *object)
{
    while (state->order_cap - state->order_len < object->count) {
        void *grown = grow_stack_array(state->order, state->stack_order,
                                       &state->order_cap, sizeof *state->order);
        if (grown == NULL)
            return -1;
        state->order = grown;
    }

    const struct sjson_value **members = state->order + state->order_len;
    for (size_t i = 0; i < object->count; i++)
        members[i] = &object->items[i];
    if (object->count <= INSERTION_SORT_MAX)
        insertion_sort_members(members, object->count);
    else
        qsort(members, object->count, sizeof *members, compare_members);
    state->order_len += object->count;
    return 0;
}

/*
 * Write a scalar completely, or the opening of a container, pushing a frame
 * so the main loop writes its children.
 */
static int canonical_begin(struct canonical_state *state,
                           const struct sjson_value *v)
{
    struct text_writer *w = &state->text;

    switch (v->type) {
    case SJSON_NULL:
        return writer_put(w, "null", 4);
    case SJSON_FALSE:
        return writer_put(w, "false", 5);
    case SJSON_TRUE:
        return writer_put(w, "true", 4);
    case SJSON_NUMBER:
        return number_canonical(v->str, v->len, w);
    case SJSON_STRING:
        return canonical_string(w, v->str, v->len);
    case SJSON_ARRAY:
    case SJSON_OBJECT:
        break;
    default:
        return -1;
    }

    if (state->depth == state->frames_cap) {
        void *grown =
            grow_stack_array(state->frames, state->stack_frames,
                             &state->frames_cap, sizeof *state->frames);
        if (grown == NULL)
            return -1;
        state->frames = grown;
    }
    struct canonical_frame *frame = &state->frames[state->depth++];
    frame->value = v;
    frame->base = state->order_len;
    frame->next = 0;
    if (writer_putc(w, v->type == SJSON_OBJECT ? '{' : '[') != 0)
        return -1;
    return v->type == SJSON_OBJECT ? push_sorted_members(state, v) : 0;
}

/* Write the next child of the innermost container, or close it. */
static int canonical_step(struct canonical_state *state)
{
    struct canonical_frame *frame = &state->frames[state->depth - 1];
    const struct sjson_value *container = frame->value;
    bool object = container->type == SJSON_OBJECT;

    if (frame->next == container->count) {
        state->order_len = frame->base;
        state->depth--;
        return writer_putc(&state->text, object ? '}' : ']');
    }

    size_t index = frame->next++;
    if (index > 0 && writer_putc(&state->text, ',') != 0)
        return -1;
    if (!object)
        return canonical_begin(state, &container->items[index]);

    /* canonical_begin may move state->order, so take the member first. */
    const struct sjson_value *member = state->order[frame->base + index];
    if (canonical_string(&state->text, member->key, member->key_len) != 0 ||
        writer_putc(&state->text, ':') != 0)
        return -1;
    return canonical_begin(state, member);
}

int sjson_canonical(const struct sjson_value *v, struct strbuf *out)
{
    char buf[CANONICAL_STACK_BYTES];
    struct canonical_state state;

    if (v == NULL || sb_error(out) != 0 || out->len > out->max)
        return -1;

    /* The text goes to out in one append at the end, and only when all of
     * it fits within out->max. */
    writer_init(&state.text, buf, sizeof buf, out->max - out->len);
    state.frames = state.stack_frames;
    state.depth = 0;
    state.frames_cap = CANONICAL_STACK_FRAMES;
    state.order = state.stack_order;
    state.order_len = 0;
    state.order_cap = CANONICAL_STACK_MEMBERS;

    int rc = canonical_begin(&state, v);
    while (rc == 0 && state.depth > 0)
        rc = canonical_step(&state);
    if (rc == 0)
        rc = writer_flush(&state.text, out);

    if (state.frames != state.stack_frames)
        free(state.frames);
    if (state.order != state.stack_order)
        free(state.order);
    writer_free(&state.text);
    return rc;
}
