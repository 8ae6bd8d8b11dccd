/*
 * Settings: built-in defaults, then a configuration file, then PODIUM_*
 * environment variables, then --set KEY=VALUE flags, each overriding the one
 * before. Every setting has a type, a unit in its name where it has one, a
 * default and an accepted range; an invalid value is reported with the key,
 * the value and what is accepted.
 */
#ifndef PODIUM_CONFIG_CONFIG_H
#define PODIUM_CONFIG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum cfg_source {
    CFG_SOURCE_DEFAULT,
    CFG_SOURCE_FILE,
    CFG_SOURCE_ENV,
    CFG_SOURCE_FLAG
};

enum cfg_position {
    CFG_POSITION_TRIM_HORIZON,
    CFG_POSITION_LATEST,
    CFG_POSITION_AT_TIMESTAMP
};
enum cfg_missing_key { CFG_MISSING_KEY_PROCESS, CFG_MISSING_KEY_REJECT };
enum cfg_late_policy { CFG_LATE_AMEND, CFG_LATE_DROP };
enum cfg_transport {
    CFG_TRANSPORT_MQTT,
    CFG_TRANSPORT_IOT,
    CFG_TRANSPORT_FILE
};

/* All strings are owned by the config and freed by cfg_free(). */
struct podium_config {
    char *stream_name; /* NULL when unset */
    char *region;
    bool aws_imds; /* may ask the instance metadata service for credentials */
    char *kinesis_endpoint; /* resolved URL, never NULL after cfg_load */
    enum cfg_position initial_position;
    int64_t initial_timestamp_ms; /* for AT_TIMESTAMP */
    int32_t poll_interval_ms;
    int32_t request_timeout_ms;
    int32_t max_records; /* GetRecords Limit */
    int32_t shard_sync_interval_s;

    char *store_path;

    char *idempotency_key;
    char *idempotency_validation; /* NULL: the whole record */
    enum cfg_missing_key missing_key;
    int64_t idempotency_expiry_s;
    int64_t idempotency_in_progress_timeout_ms;
    int32_t idempotency_cache_size;

    int32_t race_max_seconds;
    int32_t allowed_lateness_s;
    int32_t idle_close_s;
    int32_t max_future_skew_s;
    int32_t max_second_jump;
    enum cfg_late_policy late_policy;
    int32_t amend_window_s;
    int32_t top_n;

    enum cfg_transport transport;
    char *publish_file; /* "-" means standard output */
    char *mqtt_url;
    char *mqtt_client_id;
    char *mqtt_ca_file;   /* NULL when unset */
    char *mqtt_cert_file; /* NULL when unset */
    char *mqtt_key_file;  /* NULL when unset */
    char *iot_endpoint;   /* NULL when unset */
    int32_t outbox_max;   /* outbox rows allowed before reading pauses */

    char *topic_race_leaderboard;
    char *topic_race_results;
    char *topic_class_leaderboard;
    bool alleycat_enabled;
    char *alleycat_topic;

    char *http_listen;
    int log_level;  /* enum log_level */
    char *log_file; /* NULL when unset: standard error */

    bool metrics_emf; /* EMF lines on standard output */
    int32_t metrics_emf_interval_s;
    char *metrics_emf_namespace; /* CloudWatch namespace of the EMF lines */

    /* Where each setting came from (enum cfg_source), by table index. */
    unsigned char sources[96];
    /* For settings from the file: the line that set them, else 0. */
    uint32_t source_lines[96];
};

/*
 * Load the configuration. file may be NULL (no file); when file_required is
 * false a missing file is not an error (the default path). env is a
 * NULL-terminated "NAME=value" array (usually environ). sets holds the
 * "key=value" strings of --set flags in order.
 *
 * File lines are "key = value", blank or "# comment". A value may be
 * double-quoted (with \" and \\ escapes), and in an unquoted value a '#'
 * after whitespace starts a comment. Each --set is parsed like a file line.
 * An empty value unsets a setting that may be unset (the ones documented
 * "NULL when unset"). Unknown keys in the file or --set are errors, unknown
 * PODIUM_* variables are ignored. A setting that AWS_REGION,
 * AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_KINESIS, AWS_ENDPOINT_URL,
 * AWS_ENDPOINT_URL_IOT_DATA_PLANE or STATE_DIRECTORY decides has the source
 * CFG_SOURCE_ENV.
 *
 * Returns 0, or -1 with a message in err such as
 *   invalid value for race.allowed_lateness_s: "-1" (expected an integer
 *   from 0 to 3600) in /etc/podium.conf line 4
 * in which case the caller exits with status 2. On failure cfg holds no
 * memory and cfg_free() is optional.
 */
int cfg_load(struct podium_config *cfg, const char *file, bool file_required,
             char *const *env, const char *const *sets, size_t set_count,
             char *err, size_t err_len);
void cfg_free(struct podium_config *cfg);

/*
 * Write value into buf with the password of a URL replaced by "****", for
 * messages and check-config output: "mqtt://u:pw@h" becomes
 * "mqtt://u:****@h", and user info without ':' is masked whole. The user
 * info ends at the last '@', so a password with an unescaped '/' is masked
 * too, and an '@' in a path masks more than the password.
 */
void cfg_mask_url(const char *value, char *buf, size_t len);

/*
 * Print every setting as "key = value  # source" lines, secrets masked, for
 * check-config.
 */
void cfg_print(const struct podium_config *cfg, FILE *out);

/*
 * Source of a setting after cfg_load, for check-config. An unknown key
 * returns CFG_SOURCE_DEFAULT.
 */
enum cfg_source cfg_source_of(const struct podium_config *cfg, const char *key);

/* Description of one setting for --help. */
struct cfg_setting_info {
    const char *name;         /* "race.late_policy" */
    const char *help;         /* what it sets, with its unit */
    const char *default_text; /* default value or rule, "none" if none */
    char accepted[192];       /* "an integer from 0 to 3600", "amend or drop" */
};

/*
 * Number of settings. Indexes 0 to count - 1 are valid for the functions
 * below and for podium_config.sources.
 */
size_t cfg_setting_count(void);

/*
 * Fill info for the setting at index. Its strings are static. Returns 0, or
 * -1 when index is out of range.
 */
int cfg_setting_describe(size_t index, struct cfg_setting_info *info);

/*
 * Write the environment variable name of key into buf: "PODIUM_" and the
 * key in upper case with every other character turned into '_'
 * (store.path -> PODIUM_STORE_PATH). Returns 0, or -1 when buf is too short.
 */
int cfg_env_name(const char *key, char *buf, size_t len);

#endif
