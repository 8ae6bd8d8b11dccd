/*
 * AWS credentials for the subcommands, from the chain of common/awscreds.h,
 * and the warning for PODIUM_* variables that name no setting.
 */
#include "daemon/daemon.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/awscreds.h"
#include "common/log.h"

extern char **environ;

int daemon_credentials_open(uv_loop_t *loop, const struct podium_config *cfg,
                            const char *who, struct aws_credentials *creds)
{
    struct aws_creds_options opts = {.env = environ, .imds = cfg->aws_imds};
    struct aws_creds_provider *provider;
    char err[1024];

    memset(creds, 0, sizeof *creds);
    int rc = aws_creds_provider_new(loop, &opts, &provider, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "%s: %s\n", who, err);
        /* A fetch that failed is a runtime failure, the rest is setup. */
        return rc == -EIO ? 1 : 2;
    }
    creds->provider = provider;
    return 0;
}

int daemon_credentials_check(const struct podium_config *cfg, const char *who)
{
    struct aws_creds_options opts = {.env = environ, .imds = cfg->aws_imds};
    struct aws_creds_source src;
    char err[1024];

    if (aws_creds_find_source(&opts, &src, err, sizeof err) != 0) {
        fprintf(stderr, "%s: %s\n", who, err);
        return 2;
    }
    aws_creds_source_clear(&src);
    return 0;
}

void daemon_credentials_close(struct aws_credentials *creds,
                              void (*closed_cb)(void *arg), void *arg)
{
    struct aws_creds_provider *provider = creds->provider;
    creds->provider = NULL;
    aws_creds_provider_close(provider, closed_cb, arg);
}

bool daemon_is_known_env(const char *name)
{
    char known[128];
    for (size_t i = 0; i < cfg_setting_count(); i++) {
        struct cfg_setting_info info;
        if (cfg_setting_describe(i, &info) == 0 &&
            cfg_env_name(info.name, known, sizeof known) == 0 &&
            strcmp(known, name) == 0)
            return true;
    }
    return false;
}

size_t daemon_warn_unknown_env(char *const *env, FILE *out)
{
    size_t count = 0;
    for (size_t i = 0; env != NULL && env[i] != NULL; i++) {
        if (strncmp(env[i], "PODIUM_", 7) != 0)
            continue;
        size_t n = strcspn(env[i], "=");
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)n, env[i]);
        if (n >= sizeof name || daemon_is_known_env(name))
            continue;
        count++;
        static const char what[] =
            "the environment variable %s matches no setting and is "
            "ignored: check its spelling; a setting's variable is PODIUM_ "
            "and the key in upper case with '_' for '.', such as "
            "PODIUM_STREAM_NAME (podium run --help lists the settings)";
        if (out != NULL) {
            fprintf(out, "podium: warning: ");
            fprintf(out, what, name);
            fputc('\n', out);
        } else {
            log_warn("main", NULL, what, name);
        }
    }
    return count;
}
