/* Configuration line syntax and "did you mean" suggestions for keys. */
#include "config/config_internal.h"

#include <ctype.h>
#include <string.h>

static char *skip_space(char *p)
{
    while (isspace((unsigned char)*p))
        p++;
    return p;
}

/* Cut trailing whitespace of the text that starts at start and ends at end. */
static void trim_end(char *start, char *end)
{
    while (end > start && isspace((unsigned char)end[-1]))
        end--;
    *end = '\0';
}

/*
 * Unquote the value that starts at the opening quote at p, in place. Only
 * whitespace or a comment may follow the closing quote.
 */
static int unquote(char *p, const char *key, char *err, size_t err_len)
{
    char *out = p;
    char *in = p + 1;
    for (;;) {
        if (*in == '\0') {
            snprintf(err, err_len, "unterminated quoted value for %s", key);
            return -1;
        }
        if (*in == '"')
            break;
        if (*in == '\\') {
            in++;
            if (*in != '"' && *in != '\\') {
                snprintf(err, err_len,
                         "invalid escape in quoted value for %s (only \\\" "
                         "and \\\\ are allowed)",
                         key);
                return -1;
            }
        }
        *out++ = *in++;
    }
    *out = '\0';

    in = skip_space(in + 1);
    if (*in != '\0' && *in != '#') {
        snprintf(err, err_len, "unexpected text after quoted value for %s",
                 key);
        return -1;
    }
    return 0;
}

/* Cut an unquoted value at a '#' that follows whitespace, then trim it. */
static void cut_comment(char *value)
{
    char *p = value;
    for (; *p != '\0'; p++) {
        if (*p == '#' && p > value && isspace((unsigned char)p[-1]))
            break;
    }
    trim_end(value, p);
}

int cfg_split_line(char *line, char **key, char **value, char *err,
                   size_t err_len)
{
    char *start = skip_space(line);
    trim_end(start, start + strlen(start));
    if (*start == '\0' || *start == '#')
        return 0;

    char *equals = strchr(start, '=');
    char *key_end = equals;
    while (key_end != NULL && key_end > start &&
           isspace((unsigned char)key_end[-1]))
        key_end--;
    if (equals == NULL || key_end == start) {
        char shown[512];
        cfg_mask_url(start, shown, sizeof shown);
        snprintf(err, err_len, "invalid line \"%s\" (expected key = value)",
                 shown);
        return -1;
    }
    *key_end = '\0';
    *key = start;

    char *text = skip_space(equals + 1);
    if (*text == '"') {
        if (unquote(text, start, err, err_len) != 0)
            return -1;
    } else {
        cut_comment(text);
    }
    *value = text;
    return 1;
}

/*
 * Levenshtein distance between a and b, case-insensitive. Strings longer
 * than 63 bytes count as far from everything.
 */
static size_t edit_distance(const char *a, const char *b)
{
    enum { MAX_LEN = 63 };
    size_t la = strlen(a), lb = strlen(b);
    if (la > MAX_LEN || lb > MAX_LEN)
        return SIZE_MAX;

    size_t row[MAX_LEN + 1];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diagonal = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t above = row[j];
            bool same = tolower((unsigned char)a[i - 1]) ==
                        tolower((unsigned char)b[j - 1]);
            size_t best = diagonal + (same ? 0 : 1);
            if (above + 1 < best)
                best = above + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diagonal = above;
        }
    }
    return row[lb];
}

/*
 * Distance from key to a known name. A key without a section ("top_n") is
 * also compared with the part of the name after its first dot.
 */
static size_t distance_to(const char *key, const char *name)
{
    size_t best = edit_distance(key, name);
    const char *dot = strchr(name, '.');
    if (strchr(key, '.') == NULL && dot != NULL) {
        size_t tail = edit_distance(key, dot + 1);
        if (tail < best)
            best = tail;
    }
    return best;
}

const char *cfg_suggest_key(const char *key)
{
    size_t count;
    const struct cfg_setting *settings = cfg_settings(&count);
    const char *best_name = NULL;
    size_t best = SIZE_MAX;
    for (size_t i = 0; i < count; i++) {
        size_t d = distance_to(key, settings[i].name);
        if (d < best) {
            best = d;
            best_name = settings[i].name;
        }
    }
    /* Allow about one typo per four characters, and at least two. */
    size_t limit = strlen(key) / 4;
    if (limit < 2)
        limit = 2;
    return best <= limit ? best_name : NULL;
}
