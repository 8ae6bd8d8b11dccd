/*
 * Parts of the credential provider (common/awscreds*.c) shared between its
 * files, and visible to its tests.
 */
#ifndef PODIUM_COMMON_AWSCREDS_INTERNAL_H
#define PODIUM_COMMON_AWSCREDS_INTERNAL_H

#include "common/awscreds.h"
#include "common/httpc.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The credential keys of one profile section of a shared file. Strings
 * are owned. */
struct awscreds_profile {
    bool found;        /* the file has a section for the profile */
    char *key_id;      /* aws_access_key_id */
    char *secret;      /* aws_secret_access_key */
    char *token;       /* aws_session_token */
    const char *other; /* a credential key podium cannot use (role_arn) */
    unsigned key_line; /* line of aws_access_key_id, 0 when absent */
    unsigned secret_line;
};

/*
 * Read the section of profile from the INI file at path, the way the AWS
 * CLI reads it: "[NAME]" sections in the credentials file, "[profile
 * NAME]" (or "[default]") in the config file (config_style), '=' or ':'
 * between key and value, keys in any case, full-line comments starting
 * with '#' or ';', and indented lines that continue a value (nested
 * settings) ignored. Later lines win over earlier ones. Returns 0 (with
 * out->found false when the file or the section is missing), or -1 with a
 * message in err naming the file and line, never the line's text.
 */
int awscreds_read_profile(const char *path, const char *profile,
                          bool config_style, struct awscreds_profile *out,
                          char *err, size_t err_len);
void awscreds_profile_clear(struct awscreds_profile *p);

/*
 * Check AWS_CONTAINER_CREDENTIALS_FULL_URI: http:// or https://, no user
 * info, and for http:// a loopback host (127.0.0.0/8, ::1, localhost) or
 * one of the container agents' addresses. Returns 0, or -1 with a message.
 */
int awscreds_check_full_uri(const char *uri, char *err, size_t err_len);

/* Parse "2026-12-05T01:02:03Z" (fraction and +hh:mm allowed) into ms since
 * the epoch. Returns 0, or -1. */
int awscreds_parse_time(const char *text, int64_t *ms);

/*
 * Parse a credentials reply of the container endpoint or the instance
 * metadata service: {AccessKeyId, SecretAccessKey, Token, Expiration}.
 * Returns 0 with owned strings in creds and the expiry (0 when absent),
 * or -1 with what was wrong in err (never a secret).
 */
int awscreds_parse_reply(const char *body, size_t len,
                         struct aws_credentials *creds, int64_t *expiry_ms,
                         char *err, size_t err_len);

struct awscreds_fetch;

/* Result of a fetch: creds are taken by the callback on success (err
 * NULL); on failure err describes the failure. */
typedef void (*awscreds_fetch_cb)(void *arg, struct aws_credentials *creds,
                                  int64_t expiry_ms, const char *err);

/*
 * Fetch credentials from the container endpoint or the instance metadata
 * service of src, with env for the authorization token variables. cb runs
 * exactly once unless the fetch is cancelled: before this returns when the
 * request cannot start (and NULL is returned), else from the loop.
 */
struct awscreds_fetch *awscreds_fetch_start(struct httpc *http,
                                            const struct aws_creds_source *src,
                                            char *const *env,
                                            awscreds_fetch_cb cb, void *arg);
/* Abandon a fetch: its callback will not run. */
void awscreds_fetch_cancel(struct awscreds_fetch *f);

/* Value of name in env (borrowed), or NULL. */
const char *awscreds_getenv(char *const *env, const char *name);

#endif
