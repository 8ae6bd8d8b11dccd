/*
 * The shared credentials and config files of the AWS CLI. Python's
 * configparser reads them for the CLI, so this reader follows its rules
 * where they matter for credentials: sections in brackets, "key = value"
 * or "key: value", option names compared in lower case, whole-line
 * comments with '#' or ';' (no inline comments: a value may contain '#'),
 * and indented lines after an option continue its value. Those
 * continuation lines hold nested settings such as "s3 =" blocks of the
 * config file, and no credential key uses them, so they are skipped.
 *
 * Error messages name the file and line only: a line may hold a secret.
 */
#include "common/awscreds_internal.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Credential keys of other kinds of profiles, which podium does not use. */
static const char *const unsupported_keys[] = {
    "role_arn",           "source_profile",
    "credential_process", "sso_start_url",
    "sso_session",        "web_identity_token_file",
    "login_session",      NULL,
};

void awscreds_profile_clear(struct awscreds_profile *p)
{
    free(p->key_id);
    free(p->secret);
    free(p->token);
    memset(p, 0, sizeof *p);
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/*
 * True when the header text (between the brackets, trimmed) names profile:
 * "NAME" in the credentials file; "profile NAME", or "default" for the
 * default profile, in the config file.
 */
static bool header_matches(const char *header, const char *profile,
                           bool config_style)
{
    if (!config_style)
        return strcmp(header, profile) == 0;
    if (strcmp(profile, "default") == 0 && strcmp(header, "default") == 0)
        return true;
    if (strncmp(header, "profile", 7) != 0 ||
        (header[7] != ' ' && header[7] != '\t'))
        return false;
    const char *name = header + 7;
    while (*name == ' ' || *name == '\t')
        name++;
    return strcmp(name, profile) == 0;
}

/* Replace *field with a copy of value. Returns 0 or -1. */
static int set_field(char **field, const char *value)
{
    char *copy = strdup(value);
    if (copy == NULL)
        return -1;
    free(*field);
    *field = copy;
    return 0;
}

/* Take one "key = value" line of the profile's section. */
static int take_option(struct awscreds_profile *out, const char *key,
                       const char *value, unsigned line)
{
    if (strcmp(key, "aws_access_key_id") == 0) {
        out->key_line = line;
        return set_field(&out->key_id, value);
    }
    if (strcmp(key, "aws_secret_access_key") == 0) {
        out->secret_line = line;
        return set_field(&out->secret, value);
    }
    if (strcmp(key, "aws_session_token") == 0)
        return set_field(&out->token, value);
    for (size_t i = 0; unsupported_keys[i] != NULL; i++) {
        if (strcmp(key, unsupported_keys[i]) == 0 && out->other == NULL)
            out->other = unsupported_keys[i];
    }
    return 0;
}

/* State of one pass over a file. */
struct ini_pass {
    const char *path;
    const char *profile;
    bool config_style;
    bool in_section;  /* inside any section */
    bool in_profile;  /* inside the profile's section */
    bool option_open; /* the last line was an option: may continue */
    size_t option_indent;
    unsigned line;
};

/* Read one line, modified in place. Returns 0 or -1 with err set. */
static int read_line(struct ini_pass *ps, struct awscreds_profile *out,
                     char *line, char *err, size_t err_len)
{
    size_t indent = strspn(line, " \t");
    char *text = trim(line);

    if (text[0] == '\0')
        return 0; /* a blank line; configparser keeps a value open */
    if (text[0] == '#' || text[0] == ';')
        return 0;
    if (ps->option_open && indent > ps->option_indent)
        return 0; /* continues the last value: a nested setting */
    ps->option_open = false;

    if (text[0] == '[') {
        size_t n = strlen(text);
        if (text[n - 1] != ']') {
            snprintf(err, err_len,
                     "%s line %u: a section header without its closing ']'; "
                     "write it as [NAME]",
                     ps->path, ps->line);
            return -1;
        }
        text[n - 1] = '\0';
        char *header = trim(text + 1);
        ps->in_section = true;
        ps->in_profile = header_matches(header, ps->profile, ps->config_style);
        if (ps->in_profile)
            out->found = true;
        return 0;
    }

    char *delim = strpbrk(text, "=:");
    if (delim == NULL || delim == text) {
        snprintf(err, err_len,
                 "%s line %u: expected \"key = value\", a [section] header "
                 "or a comment starting with # or ;",
                 ps->path, ps->line);
        return -1;
    }
    if (!ps->in_section) {
        snprintf(err, err_len,
                 "%s line %u: a setting before the first [section] header; "
                 "put it under the header of its profile",
                 ps->path, ps->line);
        return -1;
    }
    *delim = '\0';
    char *key = trim(text);
    char *value = trim(delim + 1);
    for (char *p = key; *p != '\0'; p++)
        *p = (char)tolower((unsigned char)*p);
    ps->option_open = true;
    ps->option_indent = indent;
    if (!ps->in_profile)
        return 0;
    if (take_option(out, key, value, ps->line) != 0) {
        snprintf(err, err_len, "out of memory reading %s", ps->path);
        return -1;
    }
    return 0;
}

int awscreds_read_profile(const char *path, const char *profile,
                          bool config_style, struct awscreds_profile *out,
                          char *err, size_t err_len)
{
    memset(out, 0, sizeof *out);
    FILE *file = fopen(path, "r");
    if (file == NULL) {
        if (errno == ENOENT || errno == ENOTDIR)
            return 0;
        snprintf(err, err_len,
                 "cannot read the AWS %s file %s: %s; make it readable by "
                 "this user or point %s at another file",
                 config_style ? "config" : "credentials", path, strerror(errno),
                 config_style ? "AWS_CONFIG_FILE"
                              : "AWS_SHARED_CREDENTIALS_FILE");
        return -1;
    }
    struct ini_pass ps = {
        .path = path, .profile = profile, .config_style = config_style};
    char *line = NULL;
    size_t capacity = 0;
    ssize_t length;
    int rc = 0;
    while (rc == 0 && (length = getline(&line, &capacity, file)) >= 0) {
        ps.line++;
        if (strlen(line) != (size_t)length) {
            snprintf(err, err_len,
                     "%s line %u: a NUL byte; the file must be "
                     "text",
                     path, ps.line);
            rc = -1;
        } else {
            rc = read_line(&ps, out, line, err, err_len);
        }
    }
    if (rc == 0 && ferror(file)) {
        snprintf(err, err_len, "cannot read %s: %s", path, strerror(errno));
        rc = -1;
    }
    free(line);
    fclose(file);
    if (rc != 0)
        awscreds_profile_clear(out);
    return rc;
}
