/*
 * The settings table and the value parsers behind config.c. Only the config
 * module and its tests include this header.
 */
#ifndef PODIUM_CONFIG_CONFIG_INTERNAL_H
#define PODIUM_CONFIG_CONFIG_INTERNAL_H

#include "config/config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum cfg_type {
    CFG_TYPE_STRING,  /* char *, owned by the config */
    CFG_TYPE_INT32,   /* int32_t within [min, max] */
    CFG_TYPE_INT64,   /* int64_t within [min, max] */
    CFG_TYPE_BOOL,    /* bool */
    CFG_TYPE_ENUM,    /* int: the index of the value in enum_names */
    CFG_TYPE_POSITION /* enum cfg_position plus initial_timestamp_ms */
};

enum cfg_flag {
    CFG_FLAG_SECRET = 1u << 0,  /* cfg_print masks the value */
    CFG_FLAG_OPTIONAL = 1u << 1 /* an empty string unsets it (NULL) */
};

/* Validator of a string setting. Returns true when value is accepted. */
typedef bool (*cfg_check_fn)(const char *value);
/*
 * Validator that also explains: returns true when value is accepted, else
 * false with *reason set to a static string that explains the rejection,
 * or to NULL when the accepted form alone explains it.
 */
typedef bool (*cfg_explain_fn)(const char *value, const char **reason);

/* One setting: its name, where it lives in the struct and what it accepts. */
struct cfg_setting {
    const char *name;
    enum cfg_type type;
    size_t offset; /* offsetof(struct podium_config, field) */
    /* Default as text, parsed like user input. NULL leaves the field unset. */
    const char *default_value;
    /* Default for help output when the environment decides it, else NULL. */
    const char *default_doc;
    int64_t min, max;              /* integer types only */
    const char *const *enum_names; /* CFG_TYPE_ENUM, NULL-terminated */
    cfg_check_fn check;            /* strings, NULL accepts any string */
    cfg_explain_fn explain;        /* why check rejected a value, or NULL */
    const char *expected;          /* accepted form when check rejects */
    const char *help;              /* what it sets, with its unit */
    unsigned flags;                /* enum cfg_flag bits */
};

/*
 * Parse value (borrowed) into the field of cfg that setting describes,
 * replacing and freeing any previous string. Returns 0, or -1 when value is
 * not accepted, in which case the field is unchanged.
 */
int cfg_parse_value(struct podium_config *cfg,
                    const struct cfg_setting *setting, const char *value);

/*
 * Write what setting accepts into buf, for example "an integer from 0 to
 * 3600" or "amend or drop".
 */
void cfg_describe_expected(const struct cfg_setting *setting, char *buf,
                           size_t len);

/*
 * Write the value of setting in cfg into buf in the configuration file
 * syntax, quoted when needed. Secret values are masked.
 */
void cfg_format_value(const struct podium_config *cfg,
                      const struct cfg_setting *setting, char *buf, size_t len);

/* Write one "key = value  # source" line for check-config. */
void cfg_print_setting(const struct podium_config *cfg,
                       const struct cfg_setting *setting,
                       enum cfg_source source, FILE *out);

/*
 * Parse an ISO 8601 UTC time such as 2026-01-01T00:00:00Z, with an optional
 * fraction of a second and a Z or +hh:mm / -hh:mm offset, into milliseconds
 * since the Unix epoch (fraction digits past milliseconds are truncated).
 * Returns 0, or -1 when text is not such a time or lies before 1970.
 */
int cfg_parse_timestamp(const char *text, int64_t *ms);

bool cfg_check_nonempty(const char *value);
bool cfg_check_region(const char *value);
bool cfg_check_http_url(const char *value);
bool cfg_check_mqtt_url(const char *value);
/*
 * An http:// or https:// URL with a host name, IPv4 address or IPv6
 * address in square brackets, an optional port from 1 to 65535 and an
 * optional "/". The host has only complete percent escapes, and there is
 * no user name or password.
 */
bool cfg_explain_http_url(const char *value, const char **reason);
/* cfg_check_mqtt_url, with a reason for a user name or password. */
bool cfg_explain_mqtt_url(const char *value, const char **reason);
bool cfg_check_host_port(const char *value);
bool cfg_check_race_topic(const char *value);
bool cfg_check_class_topic(const char *value);
/* A CloudWatch metric namespace: 1 to 255 of the characters CloudWatch
 * allows, not starting with "AWS/". */
bool cfg_check_cloudwatch_namespace(const char *value);

/*
 * Check the TLS files of the MQTT transport with an mqtts:// URL: each file
 * that is set must be a readable PEM file, and the private key must match
 * the client certificate. Returns 0, or -1 with a message in err that names
 * the setting and the file.
 */
int cfg_check_mqtt_tls(const struct podium_config *cfg, char *err,
                       size_t err_len);

/*
 * Split one configuration line (borrowed, modified in place) into *key and
 * *value, both pointing into line. Surrounding whitespace is trimmed, a
 * double-quoted value is unquoted (\" and \\ escapes), and an unquoted '#'
 * after whitespace starts a comment. Returns 1 for a setting, 0 for a blank
 * or comment line, or -1 with a reason in err.
 */
int cfg_split_line(char *line, char **key, char **value, char *err,
                   size_t err_len);

/*
 * Return the known key closest to key (borrowed, from the table) when it is
 * near enough to be a likely typo, else NULL.
 */
const char *cfg_suggest_key(const char *key);

/* Return the settings table and its length. */
const struct cfg_setting *cfg_settings(size_t *count);

#endif
