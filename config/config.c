/*
 * The settings table and the loading order: defaults, file, PODIUM_*
 * variables, --set flags, then defaults that the environment decides (AWS
 * region and endpoints, systemd's STATE_DIRECTORY).
 */
#include "config/config.h"
#include "config/config_internal.h"

#include "common/log.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define FIELD(member) offsetof(struct podium_config, member)

#define STRING(key, member, def, check_fn, expect, text, flag_bits)            \
    {                                                                          \
        .name = key, .type = CFG_TYPE_STRING, .offset = FIELD(member),         \
        .default_value = def, .check = check_fn, .expected = expect,           \
        .help = text, .flags = flag_bits                                       \
    }
#define INTEGER(key, kind, member, def, low, high, text)                       \
    {                                                                          \
        .name = key, .type = kind, .offset = FIELD(member),                    \
        .default_value = def, .min = low, .max = high, .help = text            \
    }
#define INT32(key, member, def, low, high, text)                               \
    INTEGER(key, CFG_TYPE_INT32, member, def, low, high, text)
#define ENUM(key, member, def, names, text)                                    \
    {                                                                          \
        .name = key, .type = CFG_TYPE_ENUM, .offset = FIELD(member),           \
        .default_value = def, .enum_names = names, .help = text                \
    }
#define TOPIC(key, member, def, check_fn, placeholder)                         \
    STRING(key, member, def, check_fn,                                         \
           "a non-empty MQTT topic without + or #, with no placeholder "       \
           "other than " placeholder,                                          \
           "MQTT topic template, " placeholder " is replaced", 0)

static const char *const missing_key_names[] = {"process", "reject", NULL};
static const char *const late_policy_names[] = {"amend", "drop", NULL};
static const char *const transport_names[] = {"mqtt", "iot", "file", NULL};
static const char *const log_level_names[] = {"error", "warn", "info", "debug",
                                              NULL};

/* CFG_TYPE_ENUM stores the index of the name as an int into enum fields. */
_Static_assert(CFG_MISSING_KEY_REJECT == 1 && CFG_LATE_DROP == 1 &&
                   CFG_TRANSPORT_IOT == 1 && CFG_TRANSPORT_FILE == 2,
               "enum values must match the order of their names");
_Static_assert(LOG_ERROR == 0 && LOG_WARN == 1 && LOG_INFO == 2 &&
                   LOG_DEBUG == 3,
               "log_level_names must follow enum log_level");
_Static_assert(sizeof(enum cfg_missing_key) == sizeof(int) &&
                   sizeof(enum cfg_late_policy) == sizeof(int) &&
                   sizeof(enum cfg_transport) == sizeof(int),
               "enum fields are written as int");

static const char nonempty[] = "a non-empty string";

static const struct cfg_setting settings[] = {
    STRING("stream.name", stream_name, NULL, NULL, NULL,
           "Kinesis data stream to read (required by run and record)",
           CFG_FLAG_OPTIONAL),
    {.name = "aws.region",
     .type = CFG_TYPE_STRING,
     .offset = FIELD(region),
     .default_value = "us-east-1",
     .default_doc = "$AWS_REGION, else $AWS_DEFAULT_REGION, else us-east-1",
     .check = cfg_check_region,
     .expected = "an AWS region name such as us-east-1",
     .help = "AWS region of the stream, also used to sign requests"},
    {.name = "aws.imds",
     .type = CFG_TYPE_BOOL,
     .offset = FIELD(aws_imds),
     .default_value = "off",
     .help = "whether to take AWS credentials from the EC2 instance "
             "metadata service (IMDSv2) when no other source has them"},
    {.name = "kinesis.endpoint",
     .type = CFG_TYPE_STRING,
     .offset = FIELD(kinesis_endpoint),
     .default_doc = "$AWS_ENDPOINT_URL_KINESIS, else $AWS_ENDPOINT_URL, "
                    "else https://kinesis.<region>.amazonaws.com",
     .check = cfg_check_http_url,
     .explain = cfg_explain_http_url,
     .expected = "http://HOST[:PORT] or https://HOST[:PORT]",
     .help = "Kinesis API endpoint URL"},
    {.name = "kinesis.initial_position",
     .type = CFG_TYPE_POSITION,
     .offset = FIELD(initial_position),
     .default_value = "TRIM_HORIZON",
     .help = "where to start reading a shard that has no checkpoint"},
    INT32("kinesis.poll_interval_ms", poll_interval_ms, "250", 200, 60000,
          "time between GetRecords calls on one shard, in milliseconds "
          "(200 keeps a shard within 5 calls per second)"),
    INT32("kinesis.request_timeout_ms", request_timeout_ms, "10000", 1000,
          120000, "timeout of one Kinesis request, in milliseconds"),
    INT32("kinesis.max_records", max_records, "10000", 1, 10000,
          "maximum records per GetRecords call (its Limit)"),
    INT32("kinesis.shard_sync_interval_s", shard_sync_interval_s, "60", 5, 3600,
          "time between shard list refreshes, in seconds"),
    {.name = "store.path",
     .type = CFG_TYPE_STRING,
     .offset = FIELD(store_path),
     .default_value = "podium.db",
     .default_doc = "$STATE_DIRECTORY/podium.db when systemd sets "
                    "STATE_DIRECTORY, else podium.db",
     .check = cfg_check_nonempty,
     .expected = nonempty,
     .help = "SQLite database file of checkpoints, idempotency keys and "
             "the outbox"},
    STRING("idempotency.key", idempotency_key, "uuid", cfg_check_nonempty,
           nonempty,
           "key expression: a field, a dotted path, a quoted name or a "
           "list such as [raceId, uuid]",
           0),
    STRING("idempotency.validation", idempotency_validation, NULL, NULL, NULL,
           "key expression of the fields whose hash tells a repeat from a "
           "conflicting record (unset: the whole record)",
           CFG_FLAG_OPTIONAL),
    ENUM("idempotency.missing_key", missing_key, "process", missing_key_names,
         "what to do with a record without an idempotency key"),
    INTEGER("idempotency.expiry_s", CFG_TYPE_INT64, idempotency_expiry_s,
            "3600", 1, 604800,
            "how long an idempotency key is remembered, in seconds"),
    INTEGER("idempotency.in_progress_timeout_ms", CFG_TYPE_INT64,
            idempotency_in_progress_timeout_ms, "30000", 0, 86400000,
            "age after which another owner may take over an unfinished "
            "claim, in milliseconds (0: only when its owner is dead)"),
    INT32("idempotency.cache_size", idempotency_cache_size, "1024", 0, 10000000,
          "completed keys kept in an in-memory LRU cache (0: no cache)"),
    INT32("race.max_seconds", race_max_seconds, "3600", 1, 86400,
          "maximum length of a race, in seconds"),
    INT32("race.allowed_lateness_s", allowed_lateness_s, "2", 0, 3600,
          "how long a race second stays open for late records, in seconds"),
    INT32("race.idle_close_s", idle_close_s, "10", 1, 86400,
          "time without records after which a race closes, in seconds"),
    INT32("race.max_future_skew_s", max_future_skew_s, "300", 0, 86400,
          "how far device time may run ahead of arrival time, in seconds"),
    INT32("race.max_second_jump", max_second_jump, "60", 1, 86400,
          "largest forward jump of a race second between records, in "
          "seconds"),
    ENUM("race.late_policy", late_policy, "amend", late_policy_names,
         "what to do with a record for a closed second"),
    INT32("race.amend_window_s", amend_window_s, "60", 0, 86400,
          "how long late records may still amend results, in seconds"),
    INT32("leaderboard.top_n", top_n, "100", 1, 10000,
          "number of entries in a published leaderboard"),
    ENUM("publish.transport", transport, "mqtt", transport_names,
         "where messages go: an MQTT broker, the AWS IoT data plane or a "
         "file"),
    STRING("publish.file", publish_file, "-", cfg_check_nonempty, nonempty,
           "output file of transport file, - for standard output", 0),
    {.name = "mqtt.url",
     .type = CFG_TYPE_STRING,
     .offset = FIELD(mqtt_url),
     .default_value = "mqtt://127.0.0.1:1883",
     .check = cfg_check_mqtt_url,
     .explain = cfg_explain_mqtt_url,
     .expected = "mqtt://HOST:PORT or mqtts://HOST:PORT",
     .help = "MQTT broker, mqtts:// for TLS"},
    STRING("mqtt.client_id", mqtt_client_id, "podium", cfg_check_nonempty,
           nonempty, "MQTT client identifier", 0),
    STRING("mqtt.ca_file", mqtt_ca_file, NULL, NULL, NULL,
           "CA certificate file (PEM) that verifies the broker",
           CFG_FLAG_OPTIONAL),
    STRING("mqtt.cert_file", mqtt_cert_file, NULL, NULL, NULL,
           "client certificate file (PEM)", CFG_FLAG_OPTIONAL),
    STRING("mqtt.key_file", mqtt_key_file, NULL, NULL, NULL,
           "client private key file (PEM)", CFG_FLAG_OPTIONAL),
    {.name = "iot.endpoint",
     .type = CFG_TYPE_STRING,
     .offset = FIELD(iot_endpoint),
     .default_doc = "$AWS_ENDPOINT_URL_IOT_DATA_PLANE, else none",
     .check = cfg_check_http_url,
     .explain = cfg_explain_http_url,
     .expected = "http://HOST[:PORT] or https://HOST[:PORT]",
     .help = "AWS IoT data plane endpoint, required by transport iot",
     .flags = CFG_FLAG_OPTIONAL},
    INT32("outbox.max", outbox_max, "100000", 100, 10000000,
          "undelivered messages the outbox may hold before reading pauses; "
          "reading resumes below 90% of it"),
    TOPIC("topics.race_leaderboard", topic_race_leaderboard,
          "podium/races/{raceId}/leaderboard", cfg_check_race_topic,
          "{raceId}"),
    TOPIC("topics.race_results", topic_race_results,
          "podium/races/{raceId}/results", cfg_check_race_topic, "{raceId}"),
    TOPIC("topics.class_leaderboard", topic_class_leaderboard,
          "podium/classes/{classId}/leaderboard", cfg_check_class_topic,
          "{classId}"),
    {.name = "alleycat.enabled",
     .type = CFG_TYPE_BOOL,
     .offset = FIELD(alleycat_enabled),
     .default_value = "false",
     .help = "whether to send, after each race leaderboard, one message "
             "per class in the shape that the Alleycat sample's web "
             "frontend reads, to alleycat.topic"},
    TOPIC("alleycat.topic", alleycat_topic, "alleycat-subscribe",
          cfg_check_class_topic, "{classId}"),
    STRING("http.listen", http_listen, "127.0.0.1:9464", cfg_check_host_port,
           "HOST:PORT with a port from 0 to 65535",
           "address of the HTTP server for health and metrics", 0),
    ENUM("log.level", log_level, "info", log_level_names,
         "most detailed log level written; podium run applies a change on "
         "SIGHUP"),
    STRING("log.file", log_file, NULL, NULL, NULL,
           "file that podium run appends its log lines to, reopened on "
           "SIGHUP; unset for standard error",
           CFG_FLAG_OPTIONAL),
    {.name = "metrics.emf",
     .type = CFG_TYPE_BOOL,
     .offset = FIELD(metrics_emf),
     .default_value = "false",
     .help = "whether podium run writes the metrics to standard output as "
             "CloudWatch embedded metric format (EMF) lines, once every "
             "metrics.emf_interval_s"},
    INT32("metrics.emf_interval_s", metrics_emf_interval_s, "60", 1, 3600,
          "time between two EMF lines, in seconds"),
    STRING("metrics.emf_namespace", metrics_emf_namespace, "podium",
           cfg_check_cloudwatch_namespace,
           "1 to 255 letters, digits or . _ - / # : and space, not starting "
           "with AWS/",
           "CloudWatch namespace of the EMF metrics", 0),
};

#define SETTING_COUNT (sizeof settings / sizeof settings[0])

_Static_assert(SETTING_COUNT <= sizeof((struct podium_config *)0)->sources,
               "raise the size of podium_config.sources");

const struct cfg_setting *cfg_settings(size_t *count)
{
    *count = SETTING_COUNT;
    return settings;
}

size_t cfg_setting_count(void)
{
    return SETTING_COUNT;
}

/* Returns the table index of key, or SETTING_COUNT when it is unknown. */
static size_t index_of(const char *key)
{
    size_t i = 0;
    while (i < SETTING_COUNT && strcmp(settings[i].name, key) != 0)
        i++;
    return i;
}

int cfg_setting_describe(size_t index, struct cfg_setting_info *info)
{
    if (index >= SETTING_COUNT)
        return -1;
    const struct cfg_setting *setting = &settings[index];
    info->name = setting->name;
    info->help = setting->help;
    info->default_text = "none";
    if (setting->default_doc != NULL)
        info->default_text = setting->default_doc;
    else if (setting->default_value != NULL)
        info->default_text = setting->default_value;
    cfg_describe_expected(setting, info->accepted, sizeof info->accepted);
    return 0;
}

int cfg_env_name(const char *key, char *buf, size_t len)
{
    int n = snprintf(buf, len, "PODIUM_%s", key);
    if (n < 0 || (size_t)n >= len)
        return -1;
    for (char *p = buf; *p != '\0'; p++) {
        if (isalnum((unsigned char)*p))
            *p = (char)toupper((unsigned char)*p);
        else
            *p = '_';
    }
    return 0;
}

/* Returns the value of name in env (borrowed), or NULL. First match wins. */
static const char *env_lookup(char *const *env, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; env != NULL && env[i] != NULL; i++) {
        if (strncmp(env[i], name, n) == 0 && env[i][n] == '=')
            return env[i] + n + 1;
    }
    return NULL;
}

/*
 * Write the error for a rejected value: the setting, the value with any URL
 * password masked, the reason that the validator returns, and what is
 * accepted. A secret value is not shown at all.
 */
static void report_invalid_value(const struct cfg_setting *setting,
                                 const char *value, const char *origin,
                                 char *err, size_t err_len)
{
    char expected[192];
    cfg_describe_expected(setting, expected, sizeof expected);
    const char *space = origin[0] ? " " : "";
    if (setting->flags & CFG_FLAG_SECRET) {
        snprintf(err, err_len,
                 "invalid value for %s (not shown because it is secret; "
                 "expected %s)%s%s",
                 setting->name, expected, space, origin);
        return;
    }

    char shown[1024];
    cfg_mask_url(value, shown, sizeof shown);
    const char *reason = NULL;
    if (setting->explain != NULL)
        setting->explain(value, &reason);
    if (reason != NULL)
        snprintf(err, err_len,
                 "invalid value for %s: \"%s\": %s (expected %s)%s%s",
                 setting->name, shown, reason, expected, space, origin);
    else
        snprintf(err, err_len, "invalid value for %s: \"%s\" (expected %s)%s%s",
                 setting->name, shown, expected, space, origin);
}

/*
 * Parse value into setting index and record its source. origin ("from X",
 * "in FILE line N", or "") ends the error message.
 */
static int apply_value(struct podium_config *cfg, size_t index,
                       const char *value, enum cfg_source source,
                       const char *origin, char *err, size_t err_len)
{
    const struct cfg_setting *setting = &settings[index];
    if (cfg_parse_value(cfg, setting, value) != 0) {
        report_invalid_value(setting, value, origin, err, err_len);
        return -1;
    }
    cfg->sources[index] = (unsigned char)source;
    return 0;
}

/* Apply key = value from a file or --set, rejecting unknown keys. */
static int apply_key(struct podium_config *cfg, const char *key,
                     const char *value, enum cfg_source source,
                     const char *origin, char *err, size_t err_len)
{
    size_t index = index_of(key);
    if (index < SETTING_COUNT)
        return apply_value(cfg, index, value, source, origin, err, err_len);

    const char *suggestion = cfg_suggest_key(key);
    if (suggestion != NULL)
        snprintf(err, err_len, "unknown key \"%s\" %s (did you mean %s?)", key,
                 origin, suggestion);
    else
        snprintf(err, err_len, "unknown key \"%s\" %s", key, origin);
    return -1;
}

static int apply_defaults(struct podium_config *cfg, char *err, size_t err_len)
{
    for (size_t i = 0; i < SETTING_COUNT; i++) {
        cfg->sources[i] = CFG_SOURCE_DEFAULT;
        if (settings[i].default_value == NULL)
            continue;
        if (apply_value(cfg, i, settings[i].default_value, CFG_SOURCE_DEFAULT,
                        "(built-in default)", err, err_len) != 0)
            return -1;
    }
    return 0;
}

/* Apply one line of the file, which is modified in place. */
static int apply_line(struct podium_config *cfg, char *line, const char *path,
                      size_t line_number, char *err, size_t err_len)
{
    char origin[512];
    snprintf(origin, sizeof origin, "in %s line %zu", path, line_number);

    char reason[256];
    char *key, *value;
    int kind = cfg_split_line(line, &key, &value, reason, sizeof reason);
    if (kind < 0) {
        snprintf(err, err_len, "%s %s", reason, origin);
        return -1;
    }
    if (kind == 0)
        return 0;
    if (apply_key(cfg, key, value, CFG_SOURCE_FILE, origin, err, err_len) != 0)
        return -1;
    cfg->source_lines[index_of(key)] =
        line_number <= UINT32_MAX ? (uint32_t)line_number : 0;
    return 0;
}

/*
 * Read the configuration file at path. A missing file is skipped unless
 * required, and any other failure to read it is an error.
 */
static int load_file(struct podium_config *cfg, const char *path, bool required,
                     char *err, size_t err_len)
{
    FILE *file = fopen(path, "r");
    if (file == NULL) {
        if (errno == ENOENT && !required)
            return 0;
        snprintf(err, err_len, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }

    char *line = NULL;
    size_t capacity = 0;
    size_t line_number = 0;
    ssize_t length;
    int rc = 0;
    while (rc == 0 && (length = getline(&line, &capacity, file)) >= 0) {
        line_number++;
        if (strlen(line) != (size_t)length) {
            snprintf(err, err_len, "invalid line (NUL byte) in %s line %zu",
                     path, line_number);
            rc = -1;
        } else {
            rc = apply_line(cfg, line, path, line_number, err, err_len);
        }
    }
    if (rc == 0 && ferror(file)) {
        snprintf(err, err_len, "cannot read %s: %s", path, strerror(errno));
        rc = -1;
    }
    free(line);
    fclose(file);
    return rc;
}

static int apply_env(struct podium_config *cfg, char *const *env, char *err,
                     size_t err_len)
{
    for (size_t i = 0; i < SETTING_COUNT; i++) {
        char name[128];
        if (cfg_env_name(settings[i].name, name, sizeof name) != 0)
            continue;
        const char *value = env_lookup(env, name);
        if (value == NULL)
            continue;
        char origin[160];
        snprintf(origin, sizeof origin, "from %s", name);
        if (apply_value(cfg, i, value, CFG_SOURCE_ENV, origin, err, err_len) !=
            0)
            return -1;
    }
    return 0;
}

/* Apply --set flags in order. Each is parsed like a line of the file. */
static int apply_sets(struct podium_config *cfg, const char *const *sets,
                      size_t set_count, char *err, size_t err_len)
{
    for (size_t i = 0; i < set_count; i++) {
        char *copy = strdup(sets[i]);
        if (copy == NULL) {
            snprintf(err, err_len, "out of memory");
            return -1;
        }
        char reason[256];
        char *key, *value;
        int kind = cfg_split_line(copy, &key, &value, reason, sizeof reason);
        int rc = 0;
        if (kind < 0) {
            snprintf(err, err_len, "%s from --set", reason);
            rc = -1;
        } else if (kind == 0) {
            char shown[1024];
            cfg_mask_url(sets[i], shown, sizeof shown);
            snprintf(err, err_len, "invalid --set \"%s\" (expected KEY=VALUE)",
                     shown);
            rc = -1;
        } else {
            rc = apply_key(cfg, key, value, CFG_SOURCE_FLAG, "from --set", err,
                           err_len);
        }
        free(copy);
        if (rc != 0)
            return -1;
    }
    return 0;
}

/*
 * Apply the first non-empty variable of names to the setting key unless a
 * file, PODIUM_* variable or flag already set it. Returns 1 when a variable
 * was applied, 0 when none was, or -1 with a message in err.
 */
static int apply_env_default(struct podium_config *cfg, const char *key,
                             char *const *env, const char *const *names,
                             char *err, size_t err_len)
{
    size_t index = index_of(key);
    if (cfg->sources[index] != CFG_SOURCE_DEFAULT)
        return 0;
    for (size_t i = 0; names[i] != NULL; i++) {
        const char *value = env_lookup(env, names[i]);
        if (value == NULL || value[0] == '\0')
            continue;
        char origin[96];
        snprintf(origin, sizeof origin, "from %s", names[i]);
        if (apply_value(cfg, index, value, CFG_SOURCE_ENV, origin, err,
                        err_len) != 0)
            return -1;
        return 1;
    }
    return 0;
}

/* Set an unset kinesis.endpoint to the public endpoint of aws.region. */
static int apply_kinesis_endpoint(struct podium_config *cfg, char *err,
                                  size_t err_len)
{
    size_t index = index_of("kinesis.endpoint");
    if (cfg->sources[index] != CFG_SOURCE_DEFAULT)
        return 0;
    /* AWS China regions (cn-north-1, cn-northwest-1) use amazonaws.com.cn. */
    const char *suffix = strncmp(cfg->region, "cn-", 3) == 0 ? ".cn" : "";
    char url[256];
    snprintf(url, sizeof url, "https://kinesis.%s.amazonaws.com%s", cfg->region,
             suffix);
    return apply_value(cfg, index, url, CFG_SOURCE_DEFAULT,
                       "(built from aws.region)", err, err_len);
}

/*
 * Put the database under systemd's StateDirectory= when store.path is unset.
 * STATE_DIRECTORY lists one path per StateDirectory= entry, colon-separated,
 * and the first one is used.
 */
static int apply_state_directory(struct podium_config *cfg, char *const *env,
                                 char *err, size_t err_len)
{
    size_t index = index_of("store.path");
    const char *dirs = env_lookup(env, "STATE_DIRECTORY");
    if (cfg->sources[index] != CFG_SOURCE_DEFAULT || dirs == NULL ||
        dirs[0] == '\0' || dirs[0] == ':')
        return 0;

    size_t dir_len = strcspn(dirs, ":");
    while (dir_len > 0 && dirs[dir_len - 1] == '/')
        dir_len--;
    size_t size = dir_len + sizeof "/podium.db";
    char *path = malloc(size);
    if (path == NULL) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    snprintf(path, size, "%.*s/podium.db", (int)dir_len, dirs);
    int rc = apply_value(cfg, index, path, CFG_SOURCE_ENV,
                         "from STATE_DIRECTORY", err, err_len);
    free(path);
    return rc;
}

static int apply_environment_defaults(struct podium_config *cfg,
                                      char *const *env, char *err,
                                      size_t err_len)
{
    static const char *const region_vars[] = {"AWS_REGION",
                                              "AWS_DEFAULT_REGION", NULL};
    static const char *const kinesis_vars[] = {"AWS_ENDPOINT_URL_KINESIS",
                                               "AWS_ENDPOINT_URL", NULL};
    static const char *const iot_vars[] = {"AWS_ENDPOINT_URL_IOT_DATA_PLANE",
                                           NULL};
    if (apply_env_default(cfg, "aws.region", env, region_vars, err, err_len) <
            0 ||
        apply_env_default(cfg, "kinesis.endpoint", env, kinesis_vars, err,
                          err_len) < 0 ||
        apply_kinesis_endpoint(cfg, err, err_len) != 0 ||
        apply_state_directory(cfg, env, err, err_len) != 0 ||
        apply_env_default(cfg, "iot.endpoint", env, iot_vars, err, err_len) < 0)
        return -1;
    return 0;
}

/* Checks that involve more than one setting. */
static int check_combinations(const struct podium_config *cfg, char *err,
                              size_t err_len)
{
    if (cfg->transport == CFG_TRANSPORT_IOT && cfg->iot_endpoint == NULL) {
        snprintf(err, err_len,
                 "iot.endpoint is required when publish.transport is iot");
        return -1;
    }
    if ((cfg->mqtt_cert_file == NULL) != (cfg->mqtt_key_file == NULL)) {
        snprintf(err, err_len,
                 "mqtt.cert_file and mqtt.key_file must be set together");
        return -1;
    }
    if (cfg->metrics_emf && cfg->transport == CFG_TRANSPORT_FILE &&
        strcmp(cfg->publish_file, "-") == 0) {
        snprintf(err, err_len,
                 "metrics.emf and publish.file=- both write to standard "
                 "output; set publish.file to a file or turn metrics.emf "
                 "off");
        return -1;
    }
    return cfg_check_mqtt_tls(cfg, err, err_len);
}

int cfg_load(struct podium_config *cfg, const char *file, bool file_required,
             char *const *env, const char *const *sets, size_t set_count,
             char *err, size_t err_len)
{
    memset(cfg, 0, sizeof *cfg);
    if (err_len > 0)
        err[0] = '\0';

    int rc = apply_defaults(cfg, err, err_len);
    if (rc == 0 && file != NULL)
        rc = load_file(cfg, file, file_required, err, err_len);
    if (rc == 0)
        rc = apply_env(cfg, env, err, err_len);
    if (rc == 0)
        rc = apply_sets(cfg, sets, set_count, err, err_len);
    if (rc == 0)
        rc = apply_environment_defaults(cfg, env, err, err_len);
    if (rc == 0)
        rc = check_combinations(cfg, err, err_len);

    if (rc != 0)
        cfg_free(cfg);
    return rc;
}

void cfg_free(struct podium_config *cfg)
{
    for (size_t i = 0; i < SETTING_COUNT; i++) {
        if (settings[i].type != CFG_TYPE_STRING)
            continue;
        char **field = (char **)((char *)cfg + settings[i].offset);
        free(*field);
        *field = NULL;
    }
}

void cfg_print(const struct podium_config *cfg, FILE *out)
{
    for (size_t i = 0; i < SETTING_COUNT; i++)
        cfg_print_setting(cfg, &settings[i], cfg->sources[i], out);
}

enum cfg_source cfg_source_of(const struct podium_config *cfg, const char *key)
{
    size_t index = index_of(key);
    if (index == SETTING_COUNT)
        return CFG_SOURCE_DEFAULT;
    return (enum cfg_source)cfg->sources[index];
}
