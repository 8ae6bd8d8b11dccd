/*
 * `podium check-config`: load the configuration as `podium run` would,
 * print every setting with its value and where the value came from, and
 * name the source of the AWS credentials. Secrets are masked, and
 * no request is sent unless --fetch-credentials asks for one.
 */
#include "daemon/daemon.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/awscreds.h"

extern char **environ;

/* The file that load_config() reads when --config is not given. */
#define CHECK_DEFAULT_CONFIG_FILE "/etc/podium/podium.conf"

/* Variables other than PODIUM_<KEY> that decide a setting, in the order
 * config/config.c tries them. */
static const struct {
    const char *key;
    const char *vars[3];
} env_defaults[] = {
    {"aws.region", {"AWS_REGION", "AWS_DEFAULT_REGION", NULL}},
    {"kinesis.endpoint",
     {"AWS_ENDPOINT_URL_KINESIS", "AWS_ENDPOINT_URL", NULL}},
    {"iot.endpoint", {"AWS_ENDPOINT_URL_IOT_DATA_PLANE", NULL, NULL}},
    {"store.path", {"STATE_DIRECTORY", NULL, NULL}},
};

/* Non-empty value of name in the environment, or NULL. */
static const char *env_value(const char *name)
{
    const char *value = getenv(name);
    return value != NULL && value[0] != '\0' ? value : NULL;
}

/* The variable that set key, whose source is the environment. */
static const char *env_source(const char *key, char *buf, size_t len)
{
    if (cfg_env_name(key, buf, len) == 0 && getenv(buf) != NULL)
        return buf;
    for (size_t i = 0; i < sizeof env_defaults / sizeof env_defaults[0]; i++) {
        if (strcmp(env_defaults[i].key, key) != 0)
            continue;
        for (size_t j = 0; j < 3 && env_defaults[i].vars[j] != NULL; j++) {
            if (env_value(env_defaults[i].vars[j]) != NULL)
                return env_defaults[i].vars[j];
        }
    }
    return "?";
}

/*
 * Print the settings: cfg_print writes "key = value  # source" lines in
 * table order, with secret settings masked; each source gets its details.
 */
static int print_settings(const struct podium_config *cfg, const char *file)
{
    char *text = NULL;
    size_t size = 0;
    FILE *mem = open_memstream(&text, &size);
    if (mem == NULL)
        return -1;
    cfg_print(cfg, mem);
    if (fclose(mem) != 0) {
        free(text);
        return -1;
    }
    char *line = text;
    for (size_t i = 0; i < cfg_setting_count() && line != NULL && *line; i++) {
        char *end = strchr(line, '\n');
        if (end != NULL)
            *end = '\0';
        char *mark = NULL;
        for (char *p = strstr(line, "  # "); p != NULL;
             p = strstr(p + 1, "  # "))
            mark = p;
        struct cfg_setting_info info;
        if (mark == NULL || cfg_setting_describe(i, &info) != 0) {
            free(text);
            return -1;
        }
        *mark = '\0';
        /* Only URLs are masked, so that a file name with ':' and '@'
         * stays as it is. */
        char shown[2048];
        if (strstr(line, "://") != NULL)
            cfg_mask_url(line, shown, sizeof shown);
        else
            snprintf(shown, sizeof shown, "%s", line);
        char var[128];
        printf("%s  # ", shown);
        switch (cfg_source_of(cfg, info.name)) {
        case CFG_SOURCE_DEFAULT:
            printf("default\n");
            break;
        case CFG_SOURCE_FILE:
            printf("file %s:%" PRIu32 "\n", file != NULL ? file : "?",
                   cfg->source_lines[i]);
            break;
        case CFG_SOURCE_ENV:
            printf("environment %s\n", env_source(info.name, var, sizeof var));
            break;
        case CFG_SOURCE_FLAG:
            printf("flag --set\n");
            break;
        }
        line = end != NULL ? end + 1 : NULL;
    }
    free(text);
    return 0;
}

/* Say where the credentials come from; fetch them when asked. */
static int print_credentials(const struct podium_config *cfg, bool fetch)
{
    struct aws_creds_options opts = {.env = environ, .imds = cfg->aws_imds};
    char err[1024];

    if (!fetch) {
        struct aws_creds_source src;
        if (aws_creds_find_source(&opts, &src, err, sizeof err) != 0) {
            fprintf(stderr, "podium check-config: %s\n", err);
            return 2;
        }
        printf("# credentials: %s%s\n", src.description,
               src.kind == AWS_CREDS_CONTAINER || src.kind == AWS_CREDS_IMDS
                   ? " (not fetched; --fetch-credentials fetches them)"
                   : "");
        aws_creds_source_clear(&src);
        return 0;
    }
    struct aws_credentials creds;
    int rc = daemon_credentials_open(NULL, cfg, "podium check-config", &creds);
    if (rc != 0)
        return rc;
    const struct aws_creds_source *src =
        aws_creds_provider_source(creds.provider);
    const struct aws_credentials *now =
        aws_creds_provider_current(creds.provider);
    int64_t expiry_ms = aws_creds_provider_expiry_ms(creds.provider);
    char masked[32], when[40] = "no expiry";
    aws_creds_mask_key_id(now->access_key_id, masked, sizeof masked);
    if (expiry_ms > 0) {
        time_t seconds = (time_t)(expiry_ms / 1000);
        struct tm tm;
        if (gmtime_r(&seconds, &tm) != NULL)
            strftime(when, sizeof when, "expiring at %Y-%m-%dT%H:%M:%SZ", &tm);
    }
    printf("# credentials: %s: fetched access key id %s, %s%s\n",
           src->description, masked, when,
           now->session_token != NULL && now->session_token[0] != '\0'
               ? ", with a session token"
               : "");
    daemon_credentials_close(&creds, NULL, NULL);
    return 0;
}

static void check_config_usage(FILE *out)
{
    fputs("usage: podium check-config [--config FILE] [--set KEY=VALUE]...\n"
          "    [--fetch-credentials]\n"
          "\n"
          "Load the configuration as podium run does and print every\n"
          "setting as KEY = VALUE with where it came from: default, file,\n"
          "environment (with the variable) or flag. Secrets are masked.\n"
          "The last line says where the AWS credentials come from, without\n"
          "fetching container or instance metadata credentials unless\n"
          "--fetch-credentials is given. Exit status 0 when the\n"
          "configuration is valid, 2 when not, 1 when a fetch failed.\n",
          out);
}

int cmd_check_config(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"set", required_argument, NULL, 's'},
        {"fetch-credentials", no_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct common_opts opts = {0};
    struct podium_config cfg;
    bool fetch = false;
    int opt;

    while ((opt = getopt_long(argc, argv, "c:s:fh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            opts.config_file = optarg;
            break;
        case 's':
            if (common_opts_add_set(&opts, optarg) != 0)
                return 1;
            break;
        case 'f':
            fetch = true;
            break;
        case 'h':
            check_config_usage(stdout);
            free(opts.sets);
            return 0;
        default:
            check_config_usage(stderr);
            free(opts.sets);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "podium check-config: unexpected argument \"%s\"\n",
                argv[optind]);
        free(opts.sets);
        return 2;
    }
    daemon_warn_unknown_env(environ, stderr);
    int rc = load_config(&opts, &cfg);
    free(opts.sets);
    if (rc != 0)
        return rc;
    const char *file = opts.config_file;
    if (file == NULL && access(CHECK_DEFAULT_CONFIG_FILE, F_OK) == 0)
        file = CHECK_DEFAULT_CONFIG_FILE;
    if (print_settings(&cfg, file) != 0) {
        fprintf(stderr, "podium check-config: out of memory\n");
        cfg_free(&cfg);
        return 1;
    }
    rc = print_credentials(&cfg, fetch);
    if (rc == 0 && cfg.stream_name == NULL)
        fprintf(stderr, "podium check-config: warning: stream.name is not "
                        "set; podium run and podium record need it\n");
    if (rc == 0)
        fprintf(stderr, "podium check-config: the configuration is valid\n");
    cfg_free(&cfg);
    return rc;
}
