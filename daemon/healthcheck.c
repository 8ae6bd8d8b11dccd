/*
 * `podium healthcheck`: one GET of podium run's /readyz (or --url) with the
 * project's HTTP client, for a container HEALTHCHECK or a probe that has no
 * curl. Exit status 0 when the reply is 200, 1 for any other reply or a
 * failed request, 2 for a usage or configuration error.
 */
#include "daemon/daemon.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/httpc.h"

#define HEALTHCHECK_DEFAULT_TIMEOUT_MS 5000
/* Replies of /healthz and /readyz are short; more is not shown. */
#define HEALTHCHECK_MAX_BODY 4096

struct healthcheck {
    const char *url;
    int exit_code;
    bool done;
};

static void healthcheck_usage(FILE *out)
{
    fputs("usage: podium healthcheck [--url URL] [--timeout-ms N]\n"
          "    [--config FILE] [--set KEY=VALUE]...\n"
          "\n"
          "GET the readiness endpoint of a running `podium run` and exit 0\n"
          "when it replies 200, else 1 with the reason on standard error.\n"
          "\n"
          "  --url URL        the URL to get (default: /readyz on the\n"
          "                   address of http.listen, with 127.0.0.1 for\n"
          "                   0.0.0.0 and [::1] for [::])\n"
          "  --timeout-ms N   time for the whole request, in milliseconds\n"
          "                   (default 5000, from 100 to 120000)\n",
          out);
}

/*
 * Write the URL of /readyz on the address of listen ("HOST:PORT" or
 * "[IPV6]:PORT") into buf. A wildcard host becomes the loopback address of
 * its family. Returns 0, or -1 with the reason in err.
 */
static int readyz_url(const char *listen, char *buf, size_t len, char *err,
                      size_t err_len)
{
    const char *colon = strrchr(listen, ':');
    if (colon == NULL || colon == listen) {
        snprintf(err, err_len, "http.listen \"%s\" is not HOST:PORT", listen);
        return -1;
    }
    const char *port = colon + 1;
    if (strcmp(port, "0") == 0) {
        snprintf(err, err_len,
                 "http.listen \"%s\" has port 0, so podium run picks a free "
                 "port that is not known here; pass --url with the port "
                 "that podium run logged",
                 listen);
        return -1;
    }
    int host_len = (int)(colon - listen);
    const char *host = listen;
    if (host_len == 7 && strncmp(host, "0.0.0.0", 7) == 0) {
        host = "127.0.0.1";
        host_len = 9;
    } else if (host_len == 4 && strncmp(host, "[::]", 4) == 0) {
        host = "[::1]";
        host_len = 5;
    }
    int n = snprintf(buf, len, "http://%.*s:%s/readyz", host_len, host, port);
    if (n < 0 || (size_t)n >= len) {
        snprintf(err, err_len, "http.listen \"%s\" is too long", listen);
        return -1;
    }
    return 0;
}

static void on_reply(void *arg, const struct httpc_response *resp)
{
    struct healthcheck *hc = arg;
    hc->done = true;
    if (resp->error != HTTPC_OK) {
        fprintf(stderr, "podium healthcheck: GET %s failed: %s\n", hc->url,
                resp->error_text != NULL ? resp->error_text : "unknown error");
        hc->exit_code = 1;
        return;
    }
    /* The body of /readyz ends in a line feed. */
    int body_len = (int)resp->body_len;
    while (body_len > 0 && (resp->body[body_len - 1] == '\n' ||
                            resp->body[body_len - 1] == '\r'))
        body_len--;
    if (resp->status != 200) {
        fprintf(stderr, "podium healthcheck: GET %s returned %ld: %.*s\n",
                hc->url, resp->status, body_len, resp->body);
        hc->exit_code = 1;
        return;
    }
    printf("podium healthcheck: GET %s returned 200: %.*s\n", hc->url, body_len,
           resp->body);
    hc->exit_code = 0;
}

static void on_client_closed(void *arg)
{
    (void)arg;
}

/* GET url once; returns the exit status. */
static int check_url(const char *url, long timeout_ms)
{
    uv_loop_t loop;
    struct httpc *client;
    struct healthcheck hc = {.url = url, .exit_code = 1};

    if (uv_loop_init(&loop) != 0) {
        fputs("podium healthcheck: failed to set up the event loop\n", stderr);
        return 1;
    }
    int rc = httpc_new(&loop, &client);
    if (rc != 0) {
        fprintf(stderr,
                "podium healthcheck: failed to start the HTTP client: %s\n",
                uv_strerror(rc));
        uv_loop_close(&loop);
        return 1;
    }
    struct httpc_request req = {
        .method = "GET",
        .url = url,
        .timeout_ms = timeout_ms,
        .max_response = HEALTHCHECK_MAX_BODY,
    };
    if (httpc_start(client, &req, on_reply, &hc) == NULL) {
        fprintf(stderr, "podium healthcheck: failed to start GET %s\n", url);
        hc.done = true;
    } else {
        uv_run(&loop, UV_RUN_DEFAULT);
    }
    httpc_close(client, on_client_closed, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return hc.done ? hc.exit_code : 1;
}

static int parse_timeout(const char *text, long *out)
{
    char *end;
    long value = strtol(text, &end, 10);
    if (end == text || *end != '\0' || value < 100 || value > 120000) {
        fprintf(stderr,
                "podium healthcheck: invalid --timeout-ms \"%s\" (expected "
                "an integer from 100 to 120000)\n",
                text);
        return -1;
    }
    *out = value;
    return 0;
}

int cmd_healthcheck(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"url", required_argument, NULL, 'u'},
        {"timeout-ms", required_argument, NULL, 't'},
        {"config", required_argument, NULL, 'c'},
        {"set", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct common_opts opts = {0};
    const char *url = NULL;
    long timeout_ms = HEALTHCHECK_DEFAULT_TIMEOUT_MS;
    int opt, rc = 0;

    while (rc == 0 &&
           (opt = getopt_long(argc, argv, "u:t:c:s:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'u':
            url = optarg;
            break;
        case 't':
            rc = parse_timeout(optarg, &timeout_ms) == 0 ? 0 : 2;
            break;
        case 'c':
            opts.config_file = optarg;
            break;
        case 's':
            rc = common_opts_add_set(&opts, optarg) == 0 ? 0 : 1;
            break;
        case 'h':
            healthcheck_usage(stdout);
            free(opts.sets);
            return 0;
        default:
            healthcheck_usage(stderr);
            rc = 2;
        }
    }
    if (rc == 0 && optind < argc) {
        fprintf(stderr, "podium healthcheck: unexpected argument \"%s\"\n",
                argv[optind]);
        rc = 2;
    }
    if (rc != 0) {
        free(opts.sets);
        return rc;
    }
    if (url != NULL) {
        free(opts.sets);
        return check_url(url, timeout_ms);
    }

    /* The address comes from the same settings as podium run's. */
    struct podium_config cfg;
    rc = load_config(&opts, &cfg);
    free(opts.sets);
    if (rc != 0)
        return rc;
    char built[300], err[300];
    rc = readyz_url(cfg.http_listen, built, sizeof built, err, sizeof err);
    cfg_free(&cfg);
    if (rc != 0) {
        fprintf(stderr, "podium healthcheck: %s\n", err);
        return 2;
    }
    return check_url(built, timeout_ms);
}
