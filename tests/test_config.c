/*
 * Tests of config/: defaults, the order of sources, values taken from AWS
 * and systemd variables, and the exact error messages for invalid input.
 * Every case passes its environment as an explicit array, so the real
 * environment of the test process has no effect.
 */
#include "tests/testlib.h"

#include "config/config.h"
#include "config/config_internal.h"

#include <stdbool.h>

static char *const no_env[] = {NULL};
static struct podium_config cfg;
static char err[1024];

/* Write content to name under the case's temporary directory. */
static const char *write_file(const char *name, const char *content)
{
    static char path[4200];
    snprintf(path, sizeof path, "%s/%s", test_tmpdir(), name);
    FILE *file = fopen(path, "w");
    if (file == NULL)
        test_fail(__FILE__, __LINE__, "cannot create %s", path);
    fputs(content, file);
    fclose(file);
    return path;
}

/* Load with one --set flag (or none when set is NULL) and no file. */
static int load_set(char *const *env, const char *set)
{
    const char *sets[] = {set};
    return cfg_load(&cfg, NULL, false, env, sets, set != NULL ? 1 : 0, err,
                    sizeof err);
}

/* Expect --set key=value to fail with exactly the given message. */
static void expect_set_error(const char *set, const char *message, int line)
{
    if (load_set(no_env, set) == 0)
        test_fail(__FILE__, line, "--set %s loaded", set);
    if (strcmp(err, message) != 0)
        test_fail(__FILE__, line, "--set %s:\n  \"%s\"\n  \"%s\"", set, err,
                  message);
}

/* Expect --set key=value to load. */
static void expect_set_ok(const char *set, int line)
{
    if (load_set(no_env, set) != 0)
        test_fail(__FILE__, line, "--set %s: %s", set, err);
    cfg_free(&cfg);
}

TEST(config_defaults_without_any_source)
{
    ASSERT_EQ(load_set(no_env, NULL), 0);

    ASSERT_TRUE(cfg.stream_name == NULL);
    ASSERT_STR_EQ(cfg.region, "us-east-1");
    ASSERT_STR_EQ(cfg.kinesis_endpoint,
                  "https://kinesis.us-east-1.amazonaws.com");
    ASSERT_EQ(cfg.initial_position, CFG_POSITION_TRIM_HORIZON);
    ASSERT_EQ(cfg.poll_interval_ms, 250);
    ASSERT_EQ(cfg.request_timeout_ms, 10000);
    ASSERT_EQ(cfg.max_records, 10000);
    ASSERT_EQ(cfg.shard_sync_interval_s, 60);
    ASSERT_STR_EQ(cfg.store_path, "podium.db");
    ASSERT_STR_EQ(cfg.idempotency_key, "uuid");
    ASSERT_EQ(cfg.missing_key, CFG_MISSING_KEY_PROCESS);
    ASSERT_EQ(cfg.idempotency_expiry_s, 3600);
    ASSERT_EQ(cfg.race_max_seconds, 3600);
    ASSERT_EQ(cfg.allowed_lateness_s, 2);
    ASSERT_EQ(cfg.idle_close_s, 10);
    ASSERT_EQ(cfg.max_future_skew_s, 300);
    ASSERT_EQ(cfg.max_second_jump, 60);
    ASSERT_EQ(cfg.late_policy, CFG_LATE_AMEND);
    ASSERT_EQ(cfg.amend_window_s, 60);
    ASSERT_EQ(cfg.top_n, 100);
    ASSERT_EQ(cfg.transport, CFG_TRANSPORT_MQTT);
    ASSERT_STR_EQ(cfg.publish_file, "-");
    ASSERT_STR_EQ(cfg.mqtt_url, "mqtt://127.0.0.1:1883");
    ASSERT_STR_EQ(cfg.mqtt_client_id, "podium");
    ASSERT_TRUE(cfg.mqtt_ca_file == NULL);
    ASSERT_TRUE(cfg.mqtt_cert_file == NULL);
    ASSERT_TRUE(cfg.mqtt_key_file == NULL);
    ASSERT_TRUE(cfg.iot_endpoint == NULL);
    ASSERT_EQ(cfg.outbox_max, 100000);
    ASSERT_STR_EQ(cfg.topic_race_leaderboard,
                  "podium/races/{raceId}/leaderboard");
    ASSERT_STR_EQ(cfg.topic_race_results, "podium/races/{raceId}/results");
    ASSERT_STR_EQ(cfg.topic_class_leaderboard,
                  "podium/classes/{classId}/leaderboard");
    ASSERT_FALSE(cfg.alleycat_enabled);
    ASSERT_STR_EQ(cfg.alleycat_topic, "alleycat-subscribe");
    ASSERT_STR_EQ(cfg.http_listen, "127.0.0.1:9464");
    ASSERT_EQ(cfg.log_level, 2);

    for (size_t i = 0; i < cfg_setting_count(); i++)
        ASSERT_EQ(cfg.sources[i], CFG_SOURCE_DEFAULT);
    cfg_free(&cfg);
}

TEST(config_file_env_flag_precedence)
{
    const char *path = write_file("podium.conf", "leaderboard.top_n = 5\n");
    char *env[] = {"PODIUM_LEADERBOARD_TOP_N=6", NULL};
    const char *sets[] = {"leaderboard.top_n=7", "leaderboard.top_n=8"};

    ASSERT_EQ(cfg_load(&cfg, path, true, no_env, NULL, 0, err, sizeof err), 0);
    ASSERT_EQ(cfg.top_n, 5);
    ASSERT_EQ(cfg_source_of(&cfg, "leaderboard.top_n"), CFG_SOURCE_FILE);
    cfg_free(&cfg);

    ASSERT_EQ(cfg_load(&cfg, path, true, env, NULL, 0, err, sizeof err), 0);
    ASSERT_EQ(cfg.top_n, 6);
    ASSERT_EQ(cfg_source_of(&cfg, "leaderboard.top_n"), CFG_SOURCE_ENV);
    cfg_free(&cfg);

    ASSERT_EQ(cfg_load(&cfg, path, true, env, sets, 1, err, sizeof err), 0);
    ASSERT_EQ(cfg.top_n, 7);
    ASSERT_EQ(cfg_source_of(&cfg, "leaderboard.top_n"), CFG_SOURCE_FLAG);
    cfg_free(&cfg);

    /* Later --set flags override earlier ones. */
    ASSERT_EQ(cfg_load(&cfg, path, true, env, sets, 2, err, sizeof err), 0);
    ASSERT_EQ(cfg.top_n, 8);
    cfg_free(&cfg);
}

TEST(config_later_file_line_wins)
{
    const char *path = write_file("podium.conf", "race.late_policy = drop\n"
                                                 "race.late_policy = amend\n");
    ASSERT_EQ(cfg_load(&cfg, path, true, no_env, NULL, 0, err, sizeof err), 0);
    ASSERT_EQ(cfg.late_policy, CFG_LATE_AMEND);
    /* check-config shows the line that won. */
    size_t count;
    const struct cfg_setting *table = cfg_settings(&count);
    for (size_t i = 0; i < count; i++) {
        uint32_t expected =
            strcmp(table[i].name, "race.late_policy") == 0 ? 2 : 0;
        ASSERT_EQ(cfg.source_lines[i], expected);
    }
    cfg_free(&cfg);
}

TEST(config_region_from_aws_variables)
{
    char *both[] = {"AWS_DEFAULT_REGION=eu-west-1", "AWS_REGION=eu-central-1",
                    NULL};
    ASSERT_EQ(load_set(both, NULL), 0);
    ASSERT_STR_EQ(cfg.region, "eu-central-1");
    ASSERT_EQ(cfg_source_of(&cfg, "aws.region"), CFG_SOURCE_ENV);
    ASSERT_STR_EQ(cfg.kinesis_endpoint,
                  "https://kinesis.eu-central-1.amazonaws.com");
    ASSERT_EQ(cfg_source_of(&cfg, "kinesis.endpoint"), CFG_SOURCE_DEFAULT);
    cfg_free(&cfg);

    /* An empty AWS_REGION counts as unset. */
    char *fallback[] = {"AWS_REGION=", "AWS_DEFAULT_REGION=eu-west-1", NULL};
    ASSERT_EQ(load_set(fallback, NULL), 0);
    ASSERT_STR_EQ(cfg.region, "eu-west-1");
    cfg_free(&cfg);

    char *podium[] = {"AWS_REGION=eu-central-1",
                      "PODIUM_AWS_REGION=ap-southeast-2", NULL};
    ASSERT_EQ(load_set(podium, NULL), 0);
    ASSERT_STR_EQ(cfg.region, "ap-southeast-2");
    ASSERT_STR_EQ(cfg.kinesis_endpoint,
                  "https://kinesis.ap-southeast-2.amazonaws.com");
    cfg_free(&cfg);

    ASSERT_EQ(load_set(both, "aws.region=us-west-2"), 0);
    ASSERT_STR_EQ(cfg.region, "us-west-2");
    ASSERT_EQ(cfg_source_of(&cfg, "aws.region"), CFG_SOURCE_FLAG);
    cfg_free(&cfg);
}

TEST(config_invalid_aws_region_variable)
{
    char *env[] = {"AWS_REGION=EU West", NULL};
    ASSERT_EQ(load_set(env, NULL), -1);
    ASSERT_STR_EQ(err, "invalid value for aws.region: \"EU West\" (expected "
                       "an AWS region name such as us-east-1) from AWS_REGION");
}

TEST(config_china_region_endpoint)
{
    ASSERT_EQ(load_set(no_env, "aws.region=cn-north-1"), 0);
    ASSERT_STR_EQ(cfg.kinesis_endpoint,
                  "https://kinesis.cn-north-1.amazonaws.com.cn");
    cfg_free(&cfg);
}

TEST(config_kinesis_endpoint_resolution_order)
{
    char *both[] = {"AWS_ENDPOINT_URL=http://localhost:4566",
                    "AWS_ENDPOINT_URL_KINESIS=http://127.0.0.1:4567", NULL};
    ASSERT_EQ(load_set(both, NULL), 0);
    ASSERT_STR_EQ(cfg.kinesis_endpoint, "http://127.0.0.1:4567");
    ASSERT_EQ(cfg_source_of(&cfg, "kinesis.endpoint"), CFG_SOURCE_ENV);
    cfg_free(&cfg);

    char *general[] = {"AWS_ENDPOINT_URL=http://localhost:4566", NULL};
    ASSERT_EQ(load_set(general, NULL), 0);
    ASSERT_STR_EQ(cfg.kinesis_endpoint, "http://localhost:4566");
    cfg_free(&cfg);

    const char *path =
        write_file("podium.conf", "kinesis.endpoint = https://kinesis.test\n");
    ASSERT_EQ(cfg_load(&cfg, path, true, both, NULL, 0, err, sizeof err), 0);
    ASSERT_STR_EQ(cfg.kinesis_endpoint, "https://kinesis.test");
    ASSERT_EQ(cfg_source_of(&cfg, "kinesis.endpoint"), CFG_SOURCE_FILE);
    cfg_free(&cfg);

    ASSERT_EQ(load_set(both, "kinesis.endpoint=http://flag.test:1"), 0);
    ASSERT_STR_EQ(cfg.kinesis_endpoint, "http://flag.test:1");
    cfg_free(&cfg);
}

TEST(config_invalid_endpoint_variable)
{
    char *env[] = {"AWS_ENDPOINT_URL_KINESIS=localhost:4566", NULL};
    ASSERT_EQ(load_set(env, NULL), -1);
    ASSERT_STR_EQ(err, "invalid value for kinesis.endpoint: "
                       "\"localhost:4566\" (expected http://HOST[:PORT] or "
                       "https://HOST[:PORT]) from AWS_ENDPOINT_URL_KINESIS");
}

TEST(config_state_directory_default)
{
    char *env[] = {"STATE_DIRECTORY=/var/lib/podium:/var/lib/other", NULL};
    ASSERT_EQ(load_set(env, NULL), 0);
    ASSERT_STR_EQ(cfg.store_path, "/var/lib/podium/podium.db");
    ASSERT_EQ(cfg_source_of(&cfg, "store.path"), CFG_SOURCE_ENV);
    cfg_free(&cfg);

    char *slash[] = {"STATE_DIRECTORY=/var/lib/podium/", NULL};
    ASSERT_EQ(load_set(slash, NULL), 0);
    ASSERT_STR_EQ(cfg.store_path, "/var/lib/podium/podium.db");
    cfg_free(&cfg);

    char *empty[] = {"STATE_DIRECTORY=", NULL};
    ASSERT_EQ(load_set(empty, NULL), 0);
    ASSERT_STR_EQ(cfg.store_path, "podium.db");
    cfg_free(&cfg);

    const char *path = write_file("podium.conf", "store.path = /data/p.db\n");
    ASSERT_EQ(cfg_load(&cfg, path, true, env, NULL, 0, err, sizeof err), 0);
    ASSERT_STR_EQ(cfg.store_path, "/data/p.db");
    cfg_free(&cfg);

    char *podium[] = {"STATE_DIRECTORY=/var/lib/podium",
                      "PODIUM_STORE_PATH=/env/p.db", NULL};
    ASSERT_EQ(load_set(podium, NULL), 0);
    ASSERT_STR_EQ(cfg.store_path, "/env/p.db");
    cfg_free(&cfg);
}

TEST(config_invalid_integer_messages)
{
    static const char *const cases[][2] = {
        {"race.allowed_lateness_s=-1", "-1"},
        {"race.allowed_lateness_s=3601", "3601"},
        {"race.allowed_lateness_s=abc", "abc"},
        {"race.allowed_lateness_s=12abc", "12abc"},
        {"race.allowed_lateness_s=1.5", "1.5"},
        {"race.allowed_lateness_s=0x10", "0x10"},
        {"race.allowed_lateness_s=+5", "+5"},
        {"race.allowed_lateness_s=1 2", "1 2"},
        {"race.allowed_lateness_s=", ""},
        {"race.allowed_lateness_s=-", "-"},
        {"race.allowed_lateness_s=99999999999999999999",
         "99999999999999999999"},
        {"race.allowed_lateness_s=-9223372036854775809",
         "-9223372036854775809"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char expected[256];
        snprintf(expected, sizeof expected,
                 "invalid value for race.allowed_lateness_s: \"%s\" (expected "
                 "an integer from 0 to 3600) from --set",
                 cases[i][1]);
        expect_set_error(cases[i][0], expected, __LINE__);
    }
}

TEST(config_integer_range_limits)
{
    expect_set_error("kinesis.poll_interval_ms=199",
                     "invalid value for kinesis.poll_interval_ms: \"199\" "
                     "(expected an integer from 200 to 60000) from --set",
                     __LINE__);
    expect_set_error("idempotency.expiry_s=604801",
                     "invalid value for idempotency.expiry_s: \"604801\" "
                     "(expected an integer from 1 to 604800) from --set",
                     __LINE__);
    expect_set_error("outbox.max=10000001",
                     "invalid value for outbox.max: \"10000001\" (expected an "
                     "integer from 100 to 10000000) from --set",
                     __LINE__);

    ASSERT_EQ(load_set(no_env, "race.allowed_lateness_s=0"), 0);
    ASSERT_EQ(cfg.allowed_lateness_s, 0);
    cfg_free(&cfg);
    ASSERT_EQ(load_set(no_env, "race.allowed_lateness_s=3600"), 0);
    ASSERT_EQ(cfg.allowed_lateness_s, 3600);
    cfg_free(&cfg);
    /* Leading zeros are decimal, not octal. */
    ASSERT_EQ(load_set(no_env, "race.allowed_lateness_s=010"), 0);
    ASSERT_EQ(cfg.allowed_lateness_s, 10);
    cfg_free(&cfg);
    ASSERT_EQ(load_set(no_env, "idempotency.expiry_s=604800"), 0);
    ASSERT_EQ(cfg.idempotency_expiry_s, 604800);
    cfg_free(&cfg);
}

TEST(config_invalid_enum_messages)
{
    expect_set_error("race.late_policy=later",
                     "invalid value for race.late_policy: \"later\" (expected "
                     "amend or drop) from --set",
                     __LINE__);
    expect_set_error("publish.transport=kafka",
                     "invalid value for publish.transport: \"kafka\" "
                     "(expected mqtt, iot or file) from --set",
                     __LINE__);
    expect_set_error("idempotency.missing_key=skip",
                     "invalid value for idempotency.missing_key: \"skip\" "
                     "(expected process or reject) from --set",
                     __LINE__);
    expect_set_error("log.level=trace",
                     "invalid value for log.level: \"trace\" (expected error, "
                     "warn, info or debug) from --set",
                     __LINE__);
    expect_set_error("alleycat.enabled=maybe",
                     "invalid value for alleycat.enabled: \"maybe\" (expected "
                     "true, false, yes, no, on, off, 1 or 0) from --set",
                     __LINE__);
    expect_set_error("kinesis.initial_position=EARLIEST",
                     "invalid value for kinesis.initial_position: "
                     "\"EARLIEST\" (expected TRIM_HORIZON, LATEST or "
                     "AT_TIMESTAMP:<ISO 8601 time> such as "
                     "AT_TIMESTAMP:2026-01-01T00:00:00Z) from --set",
                     __LINE__);
}

TEST(config_env_error_names_variable)
{
    char *env[] = {"PODIUM_RACE_LATE_POLICY=later", NULL};
    ASSERT_EQ(load_set(env, NULL), -1);
    ASSERT_STR_EQ(err, "invalid value for race.late_policy: \"later\" "
                       "(expected amend or drop) from PODIUM_RACE_LATE_POLICY");
}

TEST(config_file_error_names_line)
{
    const char *path = write_file("podium.conf", "# podium\n"
                                                 "\n"
                                                 "leaderboard.top_n = 10\n"
                                                 "race.allowed_lateness_s = "
                                                 "-1\n");
    char expected[4400];
    snprintf(expected, sizeof expected,
             "invalid value for race.allowed_lateness_s: \"-1\" (expected an "
             "integer from 0 to 3600) in %s line 4",
             path);
    ASSERT_EQ(cfg_load(&cfg, path, true, no_env, NULL, 0, err, sizeof err), -1);
    ASSERT_STR_EQ(err, expected);
}

TEST(config_invalid_string_messages)
{
    expect_set_error("kinesis.endpoint=ftp://kinesis.test",
                     "invalid value for kinesis.endpoint: "
                     "\"ftp://kinesis.test\" (expected http://HOST[:PORT] or "
                     "https://HOST[:PORT]) from --set",
                     __LINE__);
    expect_set_error("kinesis.endpoint=https://",
                     "invalid value for kinesis.endpoint: \"https://\": the "
                     "URL has no host (expected http://HOST[:PORT] or "
                     "https://HOST[:PORT]) from --set",
                     __LINE__);
    expect_set_error("mqtt.url=tcp://broker:1883",
                     "invalid value for mqtt.url: \"tcp://broker:1883\" "
                     "(expected mqtt://HOST:PORT or mqtts://HOST:PORT) from "
                     "--set",
                     __LINE__);
    expect_set_error("http.listen=127.0.0.1:65536",
                     "invalid value for http.listen: \"127.0.0.1:65536\" "
                     "(expected HOST:PORT with a port from 0 to 65535) from "
                     "--set",
                     __LINE__);
    expect_set_error("aws.region=US-EAST-1",
                     "invalid value for aws.region: \"US-EAST-1\" (expected "
                     "an AWS region name such as us-east-1) from --set",
                     __LINE__);
    expect_set_error("idempotency.key=",
                     "invalid value for idempotency.key: \"\" (expected a "
                     "non-empty string) from --set",
                     __LINE__);
    expect_set_error("topics.race_leaderboard=races/{xyz}",
                     "invalid value for topics.race_leaderboard: "
                     "\"races/{xyz}\" (expected a non-empty MQTT topic "
                     "without + or #, with no placeholder other than "
                     "{raceId}) from --set",
                     __LINE__);
}

TEST(config_mqtt_url_and_listen_forms)
{
    expect_set_error("mqtt.url=mqtts://broker.example.com:8883",
                     "mqtt.url mqtts://broker.example.com:8883 uses TLS but "
                     "mqtt.ca_file is not set: set it to the CA certificate "
                     "that signed the broker's certificate (for AWS IoT "
                     "Core, Amazon Root CA 1), or use mqtt://",
                     __LINE__);
    expect_set_ok("mqtt.url=mqtt://[::1]:1883", __LINE__);
    expect_set_ok("http.listen=0.0.0.0:0", __LINE__);
    expect_set_ok("http.listen=[::1]:9464", __LINE__);
    expect_set_ok("http.listen=localhost:65535", __LINE__);

    static const char *const rejected[] = {
        "mqtt.url=mqtt://broker",
        "mqtt.url=mqtt://broker:",
        "mqtt.url=mqtt://:1883",
        "mqtt.url=mqtt://broker:0",
        "mqtt.url=mqtt://broker:1883/x",
        "mqtt.url=mqtt://::1:1883",
        "http.listen=9464",
        "http.listen=:9464",
        "http.listen=host:-1",
        "http.listen=host:123456",
        "http.listen=a b:80",
    };
    for (size_t i = 0; i < sizeof rejected / sizeof rejected[0]; i++) {
        if (load_set(no_env, rejected[i]) == 0)
            test_fail(__FILE__, __LINE__, "--set %s loaded", rejected[i]);
        ASSERT_TRUE(strncmp(err, "invalid value for ", 18) == 0);
    }
}

TEST(config_endpoint_url_forms)
{
    static const char *const accepted[] = {
        "kinesis.endpoint=http://127.0.0.1:4567",
        "kinesis.endpoint=https://kinesis.eu-west-1.amazonaws.com/",
        "kinesis.endpoint=HTTPS://Kinesis.Test",
        "kinesis.endpoint=http://[::1]:4566",
        "kinesis.endpoint=http://[::ffff:127.0.0.1]:1",
        "kinesis.endpoint=http://h:65535",
        "iot.endpoint=https://a1b2-ats.iot.eu-west-1.amazonaws.com",
    };
    for (size_t i = 0; i < sizeof accepted / sizeof accepted[0]; i++)
        expect_set_ok(accepted[i], __LINE__);

    /* Each rejected form with the reason the message gives for it. */
    static const struct {
        const char *url;
        const char *reason;
    } rejected[] = {
        {"https://[bad", "square brackets are allowed only around an IPv6 "
                         "address, as in http://[::1]:4566"},
        {"https://[::1", "square brackets are allowed only around an IPv6 "
                         "address, as in http://[::1]:4566"},
        {"https://h]x", "square brackets are allowed only around an IPv6 "
                        "address, as in http://[::1]:4566"},
        {"https://[::1]x", "square brackets are allowed only around an IPv6 "
                           "address, as in http://[::1]:4566"},
        {"https://[127.0.0.1]",
         "the host in square brackets is not an IPv6 address"},
        {"https://[]:80", "the host in square brackets is not an IPv6 address"},
        {"https://::1", "the URL has no host"},
        {"https://fe80::1:443", "an IPv6 address must be in square brackets, "
                                "as in http://[::1]:4566"},
        {"https://h%zz", "a % must start an escape of two hexadecimal digits, "
                         "such as %20"},
        {"https://h%4", "a % must start an escape of two hexadecimal digits, "
                        "such as %20"},
        {"https://h:0", "the port must be a number from 1 to 65535"},
        {"https://h:65536", "the port must be a number from 1 to 65535"},
        {"https://h:", "the port must be a number from 1 to 65535"},
        {"https://h:44x", "the port must be a number from 1 to 65535"},
        {"https://h:-1", "the port must be a number from 1 to 65535"},
        {"https://:443", "the URL has no host"},
        {"https:///path", "the URL has no host"},
        {"https://h/path", "the URL has a path, query or fragment"},
        {"https://h?x=1", "the URL has a path, query or fragment"},
        {"https://h b", "the URL contains a space or control character"},
    };
    for (size_t i = 0; i < sizeof rejected / sizeof rejected[0]; i++) {
        char set[256], message[512];
        snprintf(set, sizeof set, "kinesis.endpoint=%s", rejected[i].url);
        snprintf(message, sizeof message,
                 "invalid value for kinesis.endpoint: \"%s\": %s (expected "
                 "http://HOST[:PORT] or https://HOST[:PORT]) from --set",
                 rejected[i].url, rejected[i].reason);
        expect_set_error(set, message, __LINE__);
    }
}

/* A password in a rejected URL is masked in the message. */
TEST(config_url_password_masked)
{
    expect_set_error("iot.endpoint=https://u:pw%zz@[bad",
                     "invalid value for iot.endpoint: \"https://u:****@[bad\": "
                     "a user name or password in the URL is not supported, "
                     "because podium signs its requests with AWS credentials "
                     "(expected http://HOST[:PORT] or https://HOST[:PORT]) "
                     "from --set",
                     __LINE__);
    expect_set_error("kinesis.endpoint=ftp://u:ftppw55@h",
                     "invalid value for kinesis.endpoint: \"ftp://u:****@h\" "
                     "(expected http://HOST[:PORT] or https://HOST[:PORT]) "
                     "from --set",
                     __LINE__);
    /* An unescaped '/' in the password still leaves no part of it. */
    expect_set_error(
        "kinesis.endpoint=https://u:pa/ss@h",
        "invalid value for kinesis.endpoint: \"https://u:****@h\": "
        "a user name or password in the URL is not supported, "
        "because podium signs its requests with AWS credentials "
        "(expected http://HOST[:PORT] or https://HOST[:PORT]) "
        "from --set",
        __LINE__);
    expect_set_error("mqtt.url=mqtt://user:hunter2pw@127.0.0.1:1883",
                     "invalid value for mqtt.url: "
                     "\"mqtt://user:****@127.0.0.1:1883\": a user name or "
                     "password in the URL is not supported, because podium "
                     "does not log in to the broker with a password: use "
                     "mqtts:// with mqtt.cert_file and mqtt.key_file for "
                     "client authentication (expected mqtt://HOST:PORT or "
                     "mqtts://HOST:PORT) from --set",
                     __LINE__);
    expect_set_error("mqtt.url mqtt://user:hunter2pw@h:1883",
                     "invalid line \"mqtt.url mqtt://user:****@h:1883\" "
                     "(expected key = value) from --set",
                     __LINE__);

    char masked[128];
    cfg_mask_url("mqtt://u:p@ss@h:1883", masked, sizeof masked);
    ASSERT_STR_EQ(masked, "mqtt://u:****@h:1883");
    cfg_mask_url("https://token@h", masked, sizeof masked);
    ASSERT_STR_EQ(masked, "https://****@h");
    cfg_mask_url("user:pw@h:1883", masked, sizeof masked);
    ASSERT_STR_EQ(masked, "user:****@h:1883");
    cfg_mask_url("https://h:443", masked, sizeof masked);
    ASSERT_STR_EQ(masked, "https://h:443");
}

TEST(config_topic_template_checks)
{
    expect_set_ok("topics.race_results=results/{raceId}/{raceId}", __LINE__);
    expect_set_ok("topics.race_results=results", __LINE__);
    expect_set_ok("topics.class_leaderboard=c/{classId}", __LINE__);

    static const char *const rejected[] = {
        "topics.race_leaderboard=",
        "topics.race_leaderboard=races/+/leaderboard",
        "topics.race_leaderboard=\"races/#\"",
        "topics.race_leaderboard=races/{classId}",
        "topics.race_results=races/{raceId",
        "topics.race_results=races/raceId}",
        "topics.race_results=races/{}",
        "topics.class_leaderboard=classes/{raceId}",
        "topics.class_leaderboard=classes/{classid}",
    };
    for (size_t i = 0; i < sizeof rejected / sizeof rejected[0]; i++) {
        if (load_set(no_env, rejected[i]) == 0)
            test_fail(__FILE__, __LINE__, "--set %s loaded", rejected[i]);
        ASSERT_TRUE(strncmp(err, "invalid value for topics.", 25) == 0);
    }
}

TEST(config_alleycat_topic_checks)
{
    expect_set_ok("alleycat.topic=alleycat/{classId}", __LINE__);
    expect_set_error("alleycat.topic=alleycat/#",
                     "invalid value for alleycat.topic: \"alleycat/#\" "
                     "(expected a non-empty MQTT topic without + or #, with "
                     "no placeholder other than {classId}) from --set",
                     __LINE__);
    expect_set_error("alleycat.topic=alleycat/{raceId}",
                     "invalid value for alleycat.topic: "
                     "\"alleycat/{raceId}\" (expected a non-empty MQTT topic "
                     "without + or #, with no placeholder other than "
                     "{classId}) from --set",
                     __LINE__);
}

TEST(config_unknown_key_in_file)
{
    const char *path = write_file("podium.conf", "store.path = p.db\n"
                                                 "# comment\n"
                                                 "race.late_polcy = drop\n");
    char expected[4400];
    snprintf(expected, sizeof expected,
             "unknown key \"race.late_polcy\" in %s line 3 (did you mean "
             "race.late_policy?)",
             path);
    ASSERT_EQ(cfg_load(&cfg, path, true, no_env, NULL, 0, err, sizeof err), -1);
    ASSERT_STR_EQ(err, expected);

    path = write_file("other.conf", "colour = blue\n");
    snprintf(expected, sizeof expected, "unknown key \"colour\" in %s line 1",
             path);
    ASSERT_EQ(cfg_load(&cfg, path, true, no_env, NULL, 0, err, sizeof err), -1);
    ASSERT_STR_EQ(err, expected);
}

TEST(config_unknown_key_in_set)
{
    expect_set_error("top_n=5",
                     "unknown key \"top_n\" from --set (did you mean "
                     "leaderboard.top_n?)",
                     __LINE__);
    expect_set_error("Log.Level=debug",
                     "unknown key \"Log.Level\" from --set (did you mean "
                     "log.level?)",
                     __LINE__);
    expect_set_error("nothing=5", "unknown key \"nothing\" from --set",
                     __LINE__);
    expect_set_error("no equals sign",
                     "invalid line \"no equals sign\" (expected key = value) "
                     "from --set",
                     __LINE__);
    expect_set_error("", "invalid --set \"\" (expected KEY=VALUE)", __LINE__);
}

TEST(config_unknown_podium_variable_ignored)
{
    char *env[] = {"PODIUM_NO_SUCH_SETTING=1", "PODIUM_=x", "PODIUM", "=",
                   "PODIUM_LOG_LEVEL=debug",   NULL};
    ASSERT_EQ(load_set(env, NULL), 0);
    ASSERT_EQ(cfg.log_level, 3);
    cfg_free(&cfg);

    ASSERT_EQ(cfg_load(&cfg, NULL, false, NULL, NULL, 0, err, sizeof err), 0);
    cfg_free(&cfg);
}

TEST(config_line_without_equals_fails)
{
    const char *path = write_file("podium.conf", "store.path = p.db\n"
                                                 "  log.level debug  \n");
    char expected[4400];
    snprintf(expected, sizeof expected,
             "invalid line \"log.level debug\" (expected key = value) in %s "
             "line 2",
             path);
    ASSERT_EQ(cfg_load(&cfg, path, true, no_env, NULL, 0, err, sizeof err), -1);
    ASSERT_STR_EQ(err, expected);

    path = write_file("empty_key.conf", " = 5\n");
    snprintf(expected, sizeof expected,
             "invalid line \"= 5\" (expected key = value) in %s line 1", path);
    ASSERT_EQ(cfg_load(&cfg, path, true, no_env, NULL, 0, err, sizeof err), -1);
    ASSERT_STR_EQ(err, expected);
}

TEST(config_quoted_values)
{
    const char *path = write_file(
        "podium.conf",
        "  mqtt.client_id   =   \"podium \\\"one\\\" \\\\ # not a comment\"  "
        "# comment\r\n"
        "stream.name = races # comment after whitespace\n"
        "publish.file = out#1.jsonl\n"
        "store.path = \"  spaced.db  \"\n"
        "publish.file = \"\"\"\"\n");
    char expected[4400];
    snprintf(expected, sizeof expected,
             "unexpected text after quoted value for publish.file in %s line 5",
             path);
    ASSERT_EQ(cfg_load(&cfg, path, true, no_env, NULL, 0, err, sizeof err), -1);
    ASSERT_STR_EQ(err, expected);

    path = write_file("good.conf",
                      "  mqtt.client_id   =   \"podium \\\"one\\\" \\\\ # not "
                      "a comment\"  # comment\r\n"
                      "stream.name = races # comment after whitespace\n"
                      "publish.file = out#1.jsonl\n"
                      "store.path = \"  spaced.db  \"\n"
                      "mqtt.ca_file = \"\"\n");
    ASSERT_EQ(cfg_load(&cfg, path, true, no_env, NULL, 0, err, sizeof err), 0);
    ASSERT_STR_EQ(cfg.mqtt_client_id, "podium \"one\" \\ # not a comment");
    ASSERT_STR_EQ(cfg.stream_name, "races");
    ASSERT_STR_EQ(cfg.publish_file, "out#1.jsonl");
    ASSERT_STR_EQ(cfg.store_path, "  spaced.db  ");
    ASSERT_TRUE(cfg.mqtt_ca_file == NULL);
    cfg_free(&cfg);
}

TEST(config_bad_quoting_fails)
{
    const char *path = write_file("podium.conf", "mqtt.client_id = \"open\n");
    char expected[4400];
    snprintf(expected, sizeof expected,
             "unterminated quoted value for mqtt.client_id in %s line 1", path);
    ASSERT_EQ(cfg_load(&cfg, path, true, no_env, NULL, 0, err, sizeof err), -1);
    ASSERT_STR_EQ(err, expected);

    path = write_file("escape.conf", "mqtt.client_id = \"a\\nb\"\n");
    snprintf(expected, sizeof expected,
             "invalid escape in quoted value for mqtt.client_id (only \\\" "
             "and \\\\ are allowed) in %s line 1",
             path);
    ASSERT_EQ(cfg_load(&cfg, path, true, no_env, NULL, 0, err, sizeof err), -1);
    ASSERT_STR_EQ(err, expected);
}

TEST(config_quoted_value_in_set)
{
    ASSERT_EQ(load_set(no_env, "mqtt.client_id = \"a b\""), 0);
    ASSERT_STR_EQ(cfg.mqtt_client_id, "a b");
    cfg_free(&cfg);
}

TEST(config_at_timestamp_valid)
{
    static const struct {
        const char *set;
        int64_t ms;
    } cases[] = {
        {"kinesis.initial_position=AT_TIMESTAMP:2026-01-01T00:00:00Z",
         INT64_C(1767225600000)},
        {"kinesis.initial_position=AT_TIMESTAMP:2026-01-01T00:00:00.123Z",
         INT64_C(1767225600123)},
        {"kinesis.initial_position=AT_TIMESTAMP:2026-01-01T02:30:00+02:30",
         INT64_C(1767225600000)},
        {"kinesis.initial_position=AT_TIMESTAMP:2024-02-29T23:59:59.999999-01:"
         "00",
         INT64_C(1709254799999)},
        {"kinesis.initial_position=AT_TIMESTAMP:1970-01-01T00:00:00.5Z",
         INT64_C(500)},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (load_set(no_env, cases[i].set) != 0)
            test_fail(__FILE__, __LINE__, "%s: %s", cases[i].set, err);
        ASSERT_EQ(cfg.initial_position, CFG_POSITION_AT_TIMESTAMP);
        ASSERT_EQ(cfg.initial_timestamp_ms, cases[i].ms);
        cfg_free(&cfg);
    }

    ASSERT_EQ(load_set(no_env, "kinesis.initial_position=LATEST"), 0);
    ASSERT_EQ(cfg.initial_position, CFG_POSITION_LATEST);
    cfg_free(&cfg);
}

TEST(config_at_timestamp_invalid)
{
    static const char *const rejected[] = {
        "AT_TIMESTAMP:",
        "AT_TIMESTAMP:2026-01-01",
        "AT_TIMESTAMP:2026-01-01T00:00:00",
        "AT_TIMESTAMP:2026-13-01T00:00:00Z",
        "AT_TIMESTAMP:2026-02-29T00:00:00Z",
        "AT_TIMESTAMP:2026-01-01T24:00:00Z",
        "AT_TIMESTAMP:2026-01-01T00:60:00Z",
        "AT_TIMESTAMP:2026-01-01T00:00:60Z",
        "AT_TIMESTAMP:2026-01-01T00:00:00.Z",
        "AT_TIMESTAMP:2026-01-01T00:00:00.1234567890Z",
        "AT_TIMESTAMP:2026-01-01T00:00:00+0100",
        "AT_TIMESTAMP:2026-01-01T00:00:00+24:00",
        "AT_TIMESTAMP:2026-01-01T00:00:00Zjunk",
        "AT_TIMESTAMP:1969-12-31T23:59:59Z",
        "AT_TIMESTAMP 2026-01-01T00:00:00Z",
        "AT_TIMESTAMP:2026-1-01T00:00:00Z",
    };
    for (size_t i = 0; i < sizeof rejected / sizeof rejected[0]; i++) {
        char set[128], expected[512];
        snprintf(set, sizeof set, "kinesis.initial_position=%s", rejected[i]);
        snprintf(expected, sizeof expected,
                 "invalid value for kinesis.initial_position: \"%s\" "
                 "(expected TRIM_HORIZON, LATEST or AT_TIMESTAMP:<ISO 8601 "
                 "time> such as AT_TIMESTAMP:2026-01-01T00:00:00Z) from --set",
                 rejected[i]);
        expect_set_error(set, expected, __LINE__);
    }
}

TEST(config_iot_transport_requires_endpoint)
{
    expect_set_error("publish.transport=iot",
                     "iot.endpoint is required when publish.transport is iot",
                     __LINE__);

    char *env[] = {"AWS_ENDPOINT_URL_IOT_DATA_PLANE=https://iot.test", NULL};
    ASSERT_EQ(load_set(env, "publish.transport=iot"), 0);
    ASSERT_EQ(cfg.transport, CFG_TRANSPORT_IOT);
    ASSERT_STR_EQ(cfg.iot_endpoint, "https://iot.test");
    ASSERT_EQ(cfg_source_of(&cfg, "iot.endpoint"), CFG_SOURCE_ENV);
    cfg_free(&cfg);

    /* An endpoint without a scheme is a configuration error (exit 2), not
     * a failure of the publisher once the daemon runs. */
    const char *sets[] = {"publish.transport=iot", "iot.endpoint=x.iot.test"};
    ASSERT_EQ(cfg_load(&cfg, NULL, false, env, sets, 2, err, sizeof err), -1);
    ASSERT_STR_EQ(err, "invalid value for iot.endpoint: \"x.iot.test\" "
                       "(expected http://HOST[:PORT] or https://HOST[:PORT]) "
                       "from --set");
}

TEST(config_mqtt_cert_needs_key)
{
    expect_set_error("mqtt.cert_file=client.pem",
                     "mqtt.cert_file and mqtt.key_file must be set together",
                     __LINE__);
    const char *sets[] = {"mqtt.cert_file=client.pem",
                          "mqtt.key_file=client.key"};
    ASSERT_EQ(cfg_load(&cfg, NULL, false, no_env, sets, 2, err, sizeof err), 0);
    ASSERT_STR_EQ(cfg.mqtt_key_file, "client.key");
    cfg_free(&cfg);
}

TEST(config_missing_file_required_or_optional)
{
    char path[4200], expected[4400];
    snprintf(path, sizeof path, "%s/absent.conf", test_tmpdir());

    ASSERT_EQ(cfg_load(&cfg, path, true, no_env, NULL, 0, err, sizeof err), -1);
    snprintf(expected, sizeof expected,
             "cannot read %s: No such file or directory", path);
    ASSERT_STR_EQ(err, expected);

    ASSERT_EQ(cfg_load(&cfg, path, false, no_env, NULL, 0, err, sizeof err), 0);
    ASSERT_EQ(cfg.top_n, 100);
    cfg_free(&cfg);

    /* A directory opens but cannot be read, required or not. */
    ASSERT_EQ(
        cfg_load(&cfg, test_tmpdir(), false, no_env, NULL, 0, err, sizeof err),
        -1);
    snprintf(expected, sizeof expected, "cannot read %s: Is a directory",
             test_tmpdir());
    ASSERT_STR_EQ(err, expected);
}

TEST(config_boolean_spellings)
{
    static const char *const yes[] = {"true", "1", "yes", "on", "TRUE"};
    static const char *const no[] = {"false", "0", "no", "off", "Off"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        char set[64];
        snprintf(set, sizeof set, "alleycat.enabled=%s", yes[i]);
        ASSERT_EQ(load_set(no_env, set), 0);
        ASSERT_TRUE(cfg.alleycat_enabled);
        cfg_free(&cfg);

        snprintf(set, sizeof set, "alleycat.enabled=%s", no[i]);
        ASSERT_EQ(load_set(no_env, set), 0);
        ASSERT_FALSE(cfg.alleycat_enabled);
        cfg_free(&cfg);
    }
}

TEST(config_log_level_numbers)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++) {
        char set[64];
        snprintf(set, sizeof set, "log.level=%s", names[i]);
        ASSERT_EQ(load_set(no_env, set), 0);
        ASSERT_EQ(cfg.log_level, i);
        cfg_free(&cfg);
    }
}

TEST(config_print_masks_and_shows_sources)
{
    const char *path = write_file("podium.conf", "race.late_policy = drop\n"
                                                 "mqtt.key_file = k.pem\n"
                                                 "mqtt.cert_file = c.pem\n");
    char *env[] = {"AWS_REGION=eu-west-1", NULL};
    const char *sets[] = {"leaderboard.top_n=7", "mqtt.client_id=\"a # b\""};
    ASSERT_EQ(cfg_load(&cfg, path, true, env, sets, 2, err, sizeof err), 0);

    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    ASSERT_TRUE(out != NULL);
    cfg_print(&cfg, out);

    /* mqtt.key_file is a path, not a secret, so a test entry marks it. */
    struct cfg_setting secret = {
        .name = "test.secret",
        .type = CFG_TYPE_STRING,
        .offset = offsetof(struct podium_config, mqtt_key_file),
        .flags = CFG_FLAG_SECRET};
    cfg_print_setting(&cfg, &secret, CFG_SOURCE_FILE, out);
    fclose(out);

    ASSERT_TRUE(strstr(text, "race.late_policy = drop  # file\n") != NULL);
    ASSERT_TRUE(strstr(text, "aws.region = eu-west-1  # env\n") != NULL);
    ASSERT_TRUE(strstr(text, "leaderboard.top_n = 7  # --set\n") != NULL);
    ASSERT_TRUE(strstr(text, "mqtt.client_id = \"a # b\"  # --set\n") != NULL);
    ASSERT_TRUE(strstr(text, "log.level = info  # default\n") != NULL);
    ASSERT_TRUE(strstr(text, "stream.name = \"\"  # default\n") != NULL);
    ASSERT_TRUE(strstr(text, "alleycat.enabled = false  # default\n") != NULL);
    ASSERT_TRUE(strstr(text, "kinesis.initial_position = TRIM_HORIZON  # "
                             "default\n") != NULL);
    ASSERT_TRUE(strstr(text, "mqtt.key_file = k.pem  # file\n") != NULL);
    ASSERT_TRUE(strstr(text, "test.secret = ********  # file\n") != NULL);
    ASSERT_TRUE(strstr(text, "test.secret = k.pem") == NULL);
    free(text);
    cfg_free(&cfg);
}

TEST(config_print_output_loads_back)
{
    const char *sets[] = {
        "stream.name=races",
        "kinesis.initial_position=AT_TIMESTAMP:2026-01-01T00:00:00.123+01:00",
        "store.path=\" odd \\\"name\\\" #1.db\"",
        "mqtt.ca_file=ca.pem",
        "alleycat.enabled=yes",
        "idempotency.expiry_s=604800",
    };
    ASSERT_EQ(cfg_load(&cfg, NULL, false, no_env, sets, 6, err, sizeof err), 0);
    char path[4200];
    snprintf(path, sizeof path, "%s/printed.conf", test_tmpdir());
    FILE *out = fopen(path, "w");
    ASSERT_TRUE(out != NULL);
    cfg_print(&cfg, out);
    fclose(out);

    struct podium_config first = cfg;
    ASSERT_EQ(cfg_load(&cfg, path, true, no_env, NULL, 0, err, sizeof err), 0);
    ASSERT_STR_EQ(cfg.stream_name, "races");
    ASSERT_EQ(cfg.initial_position, CFG_POSITION_AT_TIMESTAMP);
    ASSERT_EQ(cfg.initial_timestamp_ms, INT64_C(1767222000123));
    ASSERT_STR_EQ(cfg.store_path, " odd \"name\" #1.db");
    ASSERT_STR_EQ(cfg.mqtt_ca_file, "ca.pem");
    ASSERT_TRUE(cfg.mqtt_cert_file == NULL);
    ASSERT_TRUE(cfg.alleycat_enabled);
    ASSERT_EQ(cfg.idempotency_expiry_s, 604800);
    ASSERT_STR_EQ(cfg.kinesis_endpoint, first.kinesis_endpoint);
    cfg_free(&cfg);
    cfg_free(&first);
}

TEST(config_setting_table_describes_all)
{
    size_t count = cfg_setting_count();
    ASSERT_TRUE(count > 0);
    ASSERT_TRUE(count <= sizeof cfg.sources);

    struct cfg_setting_info info;
    ASSERT_EQ(cfg_setting_describe(count, &info), -1);
    for (size_t i = 0; i < count; i++) {
        ASSERT_EQ(cfg_setting_describe(i, &info), 0);
        ASSERT_TRUE(info.help != NULL);
        ASSERT_TRUE(info.help[0] != '\0');
        ASSERT_TRUE(info.default_text != NULL);
        ASSERT_TRUE(info.accepted[0] != '\0');

        /* Two settings must never share an environment variable. */
        char name[128], other[128];
        ASSERT_EQ(cfg_env_name(info.name, name, sizeof name), 0);
        for (size_t j = 0; j < i; j++) {
            struct cfg_setting_info earlier;
            ASSERT_EQ(cfg_setting_describe(j, &earlier), 0);
            ASSERT_EQ(cfg_env_name(earlier.name, other, sizeof other), 0);
            ASSERT_TRUE(strcmp(name, other) != 0);
        }
    }
}

TEST(config_describe_one_setting)
{
    size_t i = 0;
    struct cfg_setting_info info;
    while (cfg_setting_describe(i, &info) == 0 &&
           strcmp(info.name, "race.allowed_lateness_s") != 0)
        i++;
    ASSERT_EQ(cfg_setting_describe(i, &info), 0);
    ASSERT_STR_EQ(info.default_text, "2");
    ASSERT_STR_EQ(info.accepted, "an integer from 0 to 3600");
    ASSERT_TRUE(strstr(info.help, "seconds") != NULL);

    char name[64];
    ASSERT_EQ(cfg_env_name("mqtt.ca_file", name, sizeof name), 0);
    ASSERT_STR_EQ(name, "PODIUM_MQTT_CA_FILE");
    ASSERT_EQ(cfg_env_name("store.path", name, 8), -1);
}

TEST(config_source_of_unknown_key)
{
    ASSERT_EQ(load_set(no_env, "log.level=debug"), 0);
    ASSERT_EQ(cfg_source_of(&cfg, "log.level"), CFG_SOURCE_FLAG);
    ASSERT_EQ(cfg_source_of(&cfg, "no.such.key"), CFG_SOURCE_DEFAULT);
    cfg_free(&cfg);
    /* cfg_free leaves nothing to free twice. */
    cfg_free(&cfg);
}

TEST(config_empty_value_unsets_optional)
{
    char *env[] = {"PODIUM_STREAM_NAME=races", NULL};
    ASSERT_EQ(load_set(env, NULL), 0);
    ASSERT_STR_EQ(cfg.stream_name, "races");
    cfg_free(&cfg);

    ASSERT_EQ(load_set(env, "stream.name="), 0);
    ASSERT_TRUE(cfg.stream_name == NULL);
    ASSERT_EQ(cfg_source_of(&cfg, "stream.name"), CFG_SOURCE_FLAG);
    cfg_free(&cfg);
}
