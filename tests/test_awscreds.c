/*
 * The AWS credential chain: environment, profile files as the AWS CLI reads
 * them, container credentials and the instance metadata service. Fetches
 * go to a small HTTP server on 127.0.0.1 that runs in a thread of the test
 * and sends canned replies; every test that enables the instance
 * metadata service points AWS_EC2_METADATA_SERVICE_ENDPOINT at it.
 */
#include "tests/testlib.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/awscreds.h"
#include "common/awscreds_internal.h"
#include "common/log.h"

#define SECRET       "credsTestSecret/Key+NeverShown0123456789"
#define TOKEN        "credsTestSessionToken/NeverShown+0123=="
#define SECRET2      "credsTestSecondSecret/NeverShown9876543"
#define AUTH_TOKEN   "credsTestAuthorizationToken-0123"
#define MAX_ENV      16
#define MAX_REPLIES  8
#define MAX_REQUESTS 16

/* ---- environment ------------------------------------------------------ */

struct env {
    char *vars[MAX_ENV + 1];
    size_t count;
};

static void env_set(struct env *e, const char *name, const char *value)
{
    ASSERT_TRUE(e->count < MAX_ENV);
    size_t size = strlen(name) + strlen(value) + 2;
    e->vars[e->count] = malloc(size);
    snprintf(e->vars[e->count], size, "%s=%s", name, value);
    e->count++;
    e->vars[e->count] = NULL;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ASSERT_TRUE(f != NULL);
    fputs(text, f);
    fclose(f);
}

/* A HOME with ~/.aws/credentials and ~/.aws/config (NULL: no file). */
static const char *make_home(const char *credentials, const char *config)
{
    static char home[512];
    char path[600];
    snprintf(home, sizeof home, "%s/home", test_tmpdir());
    mkdir(home, 0700);
    snprintf(path, sizeof path, "%s/.aws", home);
    mkdir(path, 0700);
    if (credentials != NULL) {
        snprintf(path, sizeof path, "%s/.aws/credentials", home);
        write_file(path, credentials);
    }
    if (config != NULL) {
        snprintf(path, sizeof path, "%s/.aws/config", home);
        write_file(path, config);
    }
    return home;
}

static int find(struct env *e, bool imds, struct aws_creds_source *src,
                char *err, size_t len)
{
    struct aws_creds_options opts = {.env = e->vars, .imds = imds};
    err[0] = '\0';
    int rc = aws_creds_find_source(&opts, src, err, len);
    if (rc != 0)
        fprintf(stderr, "aws_creds_find_source: %s\n", err);
    return rc;
}

static void assert_no_secret(const char *text)
{
    ASSERT_TRUE(strstr(text, SECRET) == NULL);
    ASSERT_TRUE(strstr(text, SECRET2) == NULL);
    ASSERT_TRUE(strstr(text, TOKEN) == NULL);
    ASSERT_TRUE(strstr(text, AUTH_TOKEN) == NULL);
}

/* ---- sources without network ------------------------------------------ */

TEST(creds_env_first)
{
    struct env e = {0};
    struct aws_creds_source src;
    char err[1024];
    env_set(&e, "AWS_ACCESS_KEY_ID", "AKIDENVEXAMPLE");
    env_set(&e, "AWS_SECRET_ACCESS_KEY", SECRET);
    env_set(&e, "AWS_SESSION_TOKEN", TOKEN);
    env_set(&e, "HOME",
            make_home("[default]\naws_access_key_id = AKIDFILE\n"
                      "aws_secret_access_key = x\n",
                      NULL));
    ASSERT_EQ(find(&e, false, &src, err, sizeof err), 0);
    ASSERT_EQ(src.kind, AWS_CREDS_ENV);
    ASSERT_STR_EQ(src.creds.access_key_id, "AKIDENVEXAMPLE");
    ASSERT_STR_EQ(src.creds.secret_access_key, SECRET);
    ASSERT_STR_EQ(src.creds.session_token, TOKEN);
    ASSERT_TRUE(strstr(src.description, "****MPLE") != NULL);
    ASSERT_TRUE(strstr(src.description, "AKIDENV") == NULL);
    assert_no_secret(src.description);
    aws_creds_source_clear(&src);
}

TEST(creds_env_half_set)
{
    struct env e = {0};
    struct aws_creds_source src;
    char err[1024];
    env_set(&e, "AWS_ACCESS_KEY_ID", "AKIDENVEXAMPLE");
    env_set(&e, "HOME", make_home(NULL, NULL));
    ASSERT_EQ(find(&e, false, &src, err, sizeof err), -1);
    ASSERT_TRUE(strstr(err, "AWS_SECRET_ACCESS_KEY is not") != NULL);
}

TEST(creds_profile_ini_rules)
{
    struct env e = {0};
    struct aws_creds_source src;
    char err[1024];
    /* Comments, blank lines, indentation, keys in capitals, ':' as the
     * delimiter, a value with '#' in it and nested settings. */
    env_set(&e, "HOME",
            make_home("# the team's keys\n"
                      "; another comment\n"
                      "[other]\n"
                      "aws_access_key_id = AKIDOTHER\n"
                      "aws_secret_access_key = other\n"
                      "\n"
                      "[default]  \n"
                      "  AWS_Access_Key_ID   =   AKIDDEFAULTKEY  \n"
                      "aws_secret_access_key:" SECRET "\n"
                      "s3 =\n"
                      "    aws_access_key_id = AKIDNESTED\n"
                      "aws_session_token = " TOKEN "\n"
                      "comment = a # is no comment here\n",
                      NULL));
    ASSERT_EQ(find(&e, false, &src, err, sizeof err), 0);
    ASSERT_EQ(src.kind, AWS_CREDS_PROFILE);
    ASSERT_STR_EQ(src.creds.access_key_id, "AKIDDEFAULTKEY");
    ASSERT_STR_EQ(src.creds.secret_access_key, SECRET);
    ASSERT_STR_EQ(src.creds.session_token, TOKEN);
    ASSERT_TRUE(strstr(src.description, "profile \"default\"") != NULL);
    ASSERT_TRUE(strstr(src.description, "/.aws/credentials") != NULL);
    assert_no_secret(src.description);
    aws_creds_source_clear(&src);
}

TEST(creds_profile_config_file)
{
    struct env e = {0};
    struct aws_creds_source src;
    char err[1024];
    /* The config file names sections "profile NAME"; the credentials file
     * wins for a key that both set. */
    env_set(&e, "HOME",
            make_home("[prod]\naws_secret_access_key = " SECRET "\n",
                      "[default]\nregion = us-east-1\n"
                      "[prod]\naws_access_key_id = AKIDWRONGSECTION\n"
                      "[profile   prod]\naws_access_key_id = AKIDPRODKEY\n"
                      "aws_secret_access_key = " SECRET2 "\n"));
    env_set(&e, "AWS_PROFILE", "prod");
    ASSERT_EQ(find(&e, false, &src, err, sizeof err), 0);
    ASSERT_EQ(src.kind, AWS_CREDS_PROFILE);
    ASSERT_STR_EQ(src.creds.access_key_id, "AKIDPRODKEY");
    ASSERT_STR_EQ(src.creds.secret_access_key, SECRET);
    ASSERT_TRUE(src.creds.session_token == NULL);
    ASSERT_TRUE(strstr(src.description, "/.aws/config") != NULL);
    aws_creds_source_clear(&src);
}

TEST(creds_profile_file_variables)
{
    struct env e = {0};
    struct aws_creds_source src;
    char err[1024], path[600];
    snprintf(path, sizeof path, "%s/elsewhere", test_tmpdir());
    write_file(path, "[default]\naws_access_key_id = AKIDELSEWHERE\n"
                     "aws_secret_access_key = " SECRET "\n");
    env_set(&e, "HOME",
            make_home("[default]\naws_access_key_id = AKIDHOME\n"
                      "aws_secret_access_key = x\n",
                      NULL));
    env_set(&e, "AWS_SHARED_CREDENTIALS_FILE", path);
    ASSERT_EQ(find(&e, false, &src, err, sizeof err), 0);
    ASSERT_STR_EQ(src.creds.access_key_id, "AKIDELSEWHERE");
    ASSERT_TRUE(strstr(src.description, path) != NULL);
    aws_creds_source_clear(&src);
}

TEST(creds_profile_missing)
{
    struct env e = {0};
    struct aws_creds_source src;
    char err[1024];
    env_set(&e, "HOME",
            make_home("[default]\naws_access_key_id = AKIDX\n"
                      "aws_secret_access_key = " SECRET "\n",
                      "[profile dev]\nregion = eu-west-1\n"));
    env_set(&e, "AWS_PROFILE", "staging");
    ASSERT_EQ(find(&e, false, &src, err, sizeof err), -1);
    ASSERT_TRUE(strstr(err, "AWS_PROFILE is \"staging\"") != NULL);
    ASSERT_TRUE(strstr(err, "/.aws/credentials") != NULL);
    ASSERT_TRUE(strstr(err, "/.aws/config") != NULL);
    ASSERT_TRUE(strstr(err, "[staging]") != NULL);
    assert_no_secret(err);
}

TEST(creds_profile_without_secret)
{
    struct env e = {0};
    struct aws_creds_source src;
    char err[1024];
    env_set(&e, "HOME",
            make_home("[default]\n# rotated\n"
                      "aws_access_key_id = AKIDNOSECRET\n",
                      NULL));
    ASSERT_EQ(find(&e, false, &src, err, sizeof err), -1);
    ASSERT_TRUE(strstr(err, "no aws_secret_access_key") != NULL);
    ASSERT_TRUE(strstr(err, "/.aws/credentials (line 3)") != NULL);
}

TEST(creds_profile_unsupported_kind)
{
    struct env e = {0};
    struct aws_creds_source src;
    char err[1024];
    env_set(&e, "HOME",
            make_home(NULL, "[profile ops]\nrole_arn = arn:aws:iam::1:role/x\n"
                            "source_profile = default\n"));
    env_set(&e, "AWS_PROFILE", "ops");
    ASSERT_EQ(find(&e, false, &src, err, sizeof err), -1);
    ASSERT_TRUE(strstr(err, "uses role_arn") != NULL);
}

TEST(creds_profile_bad_line_hides_text)
{
    struct env e = {0};
    struct aws_creds_source src;
    char err[1024];
    env_set(&e, "HOME", make_home("[default]\n" SECRET "\n", NULL));
    ASSERT_EQ(find(&e, false, &src, err, sizeof err), -1);
    ASSERT_TRUE(strstr(err, "/.aws/credentials line 2") != NULL);
    assert_no_secret(err);
}

TEST(creds_none_found)
{
    struct env e = {0};
    struct aws_creds_source src;
    char err[1024];
    env_set(&e, "HOME", make_home("[dev]\naws_access_key_id = A\n", NULL));
    /* The instance metadata service stays off unless enabled, so a server
     * at the endpoint override is never asked (see creds_imds_off_no_request
     * for the provider). */
    env_set(&e, "AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9");
    ASSERT_EQ(find(&e, false, &src, err, sizeof err), -1);
    ASSERT_TRUE(strstr(err, "no AWS credentials found") != NULL);
    ASSERT_TRUE(strstr(err, "aws.imds = on") != NULL);
}

TEST(creds_container_uris)
{
    char err[512];
    ASSERT_EQ(
        awscreds_check_full_uri("http://127.0.0.1:8080/creds", err, sizeof err),
        0);
    ASSERT_EQ(awscreds_check_full_uri("http://127.1.2.3/x", err, sizeof err),
              0);
    ASSERT_EQ(awscreds_check_full_uri("http://[::1]:80/x", err, sizeof err), 0);
    ASSERT_EQ(awscreds_check_full_uri("http://localhost/x", err, sizeof err),
              0);
    ASSERT_EQ(
        awscreds_check_full_uri("https://creds.example.com/x", err, sizeof err),
        0);
    ASSERT_EQ(awscreds_check_full_uri("http://10.0.0.5/creds", err, sizeof err),
              -1);
    ASSERT_TRUE(strstr(err, "host 10.0.0.5, which is not a loopback") != NULL);
    ASSERT_EQ(awscreds_check_full_uri("http://127.0.0.1.example.com/", err,
                                      sizeof err),
              -1);
    ASSERT_EQ(
        awscreds_check_full_uri("http://u:hunter2@127.0.0.1/", err, sizeof err),
        -1);
    ASSERT_TRUE(strstr(err, "hunter2") == NULL);
    ASSERT_EQ(awscreds_check_full_uri("ftp://127.0.0.1/", err, sizeof err), -1);
}

TEST(creds_container_relative_before_full)
{
    struct env e = {0};
    struct aws_creds_source src;
    char err[1024];
    env_set(&e, "HOME", make_home(NULL, NULL));
    env_set(&e, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/credentials/x");
    env_set(&e, "AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:1/c");
    /* Only the source is found: nothing is sent to 169.254.170.2. */
    ASSERT_EQ(find(&e, false, &src, err, sizeof err), 0);
    ASSERT_EQ(src.kind, AWS_CREDS_CONTAINER);
    ASSERT_STR_EQ(src.url, "http://169.254.170.2/v2/credentials/x");
    aws_creds_source_clear(&src);
}

TEST(creds_imds_only_when_enabled)
{
    struct env e = {0};
    struct aws_creds_source src;
    char err[1024];
    env_set(&e, "HOME", make_home(NULL, NULL));
    env_set(&e, "AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9/");
    ASSERT_EQ(find(&e, false, &src, err, sizeof err), -1);
    ASSERT_EQ(find(&e, true, &src, err, sizeof err), 0);
    ASSERT_EQ(src.kind, AWS_CREDS_IMDS);
    ASSERT_STR_EQ(src.url, "http://127.0.0.1:9");
    aws_creds_source_clear(&src);
    env_set(&e, "AWS_EC2_METADATA_DISABLED", "true");
    ASSERT_EQ(find(&e, true, &src, err, sizeof err), -1);
}

TEST(creds_reply_parsing)
{
    struct aws_credentials creds;
    int64_t expiry;
    char err[512];
    const char *good =
        "{\"AccessKeyId\":\"AKIDREPLY\",\"SecretAccessKey\":\"" SECRET
        "\",\"Token\":\"" TOKEN "\",\"Expiration\":\"2026-12-05T01:02:03Z\"}";
    ASSERT_EQ(awscreds_parse_reply(good, strlen(good), &creds, &expiry, err,
                                   sizeof err),
              0);
    ASSERT_STR_EQ(creds.access_key_id, "AKIDREPLY");
    ASSERT_STR_EQ(creds.session_token, TOKEN);
    ASSERT_EQ(expiry, INT64_C(1796432523000));
    aws_credentials_clear(&creds);

    const char *bad[] = {
        "not json " SECRET,
        "{\"AccessKeyId\":\"AKID\",\"Token\":\"" TOKEN "\"}",
        "{\"AccessKeyId\":\"AKID\",\"SecretAccessKey\":\"" SECRET
        "\",\"Expiration\":\"tomorrow\"}",
        "{\"Code\":\"Failure\",\"SecretAccessKey\":\"" SECRET "\"}",
    };
    const char *expected[] = {"not a JSON object", "no SecretAccessKey",
                              "Expiration \"tomorrow\"", "Code \"Failure\""};
    for (size_t i = 0; i < 4; i++) {
        ASSERT_EQ(awscreds_parse_reply(bad[i], strlen(bad[i]), &creds, &expiry,
                                       err, sizeof err),
                  -1);
        if (strstr(err, expected[i]) == NULL)
            test_fail(__FILE__, __LINE__, "case %zu: %s", i, err);
        assert_no_secret(err);
    }
    int64_t ms;
    ASSERT_EQ(awscreds_parse_time("2026-12-05T03:02:03.250+02:00", &ms), 0);
    ASSERT_EQ(ms, INT64_C(1796432523250));
    ASSERT_EQ(awscreds_parse_time("2026-12-05 01:02:03", &ms), -1);
}

/* ---- a canned HTTP server in a thread --------------------------------- */

struct canned {
    int status;
    char body[1024];
};

struct stub {
    int listener;
    int port;
    pthread_t thread;
    pthread_mutex_t lock;
    struct canned replies[MAX_REPLIES]; /* the last one repeats */
    size_t reply_count;
    char requests[MAX_REQUESTS][4096]; /* request line and headers */
    size_t request_count;
    bool stop;
};

static void *stub_main(void *arg)
{
    struct stub *s = arg;
    for (;;) {
        int fd = accept(s->listener, NULL, NULL);
        if (fd < 0)
            return NULL;
        char buf[4096] = "";
        size_t used = 0;
        while (used < sizeof buf - 1 && strstr(buf, "\r\n\r\n") == NULL) {
            ssize_t n = read(fd, buf + used, sizeof buf - 1 - used);
            if (n <= 0)
                break;
            used += (size_t)n;
            buf[used] = '\0';
        }
        pthread_mutex_lock(&s->lock);
        if (s->stop) {
            pthread_mutex_unlock(&s->lock);
            close(fd);
            return NULL;
        }
        size_t index = s->request_count;
        if (s->request_count < MAX_REQUESTS)
            snprintf(s->requests[s->request_count++], 4096, "%s", buf);
        const struct canned *c =
            &s->replies[index < s->reply_count ? index : s->reply_count - 1];
        char out[2048];
        int n = snprintf(out, sizeof out,
                         "HTTP/1.1 %d X\r\nContent-Length: %zu\r\n"
                         "Connection: close\r\n\r\n%s",
                         c->status, strlen(c->body), c->body);
        pthread_mutex_unlock(&s->lock);
        ssize_t written = write(fd, out, (size_t)n);
        (void)written;
        close(fd);
    }
}

static void stub_reply(struct stub *s, int status, const char *body)
{
    ASSERT_TRUE(s->reply_count < MAX_REPLIES);
    s->replies[s->reply_count].status = status;
    snprintf(s->replies[s->reply_count].body, 1024, "%s", body);
    s->reply_count++;
}

static void stub_start(struct stub *s)
{
    struct sockaddr_in addr = {.sin_family = AF_INET};
    socklen_t len = sizeof addr;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->listener = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_TRUE(s->listener >= 0);
    ASSERT_EQ(bind(s->listener, (struct sockaddr *)&addr, sizeof addr), 0);
    ASSERT_EQ(listen(s->listener, 16), 0);
    ASSERT_EQ(getsockname(s->listener, (struct sockaddr *)&addr, &len), 0);
    s->port = ntohs(addr.sin_port);
    pthread_mutex_init(&s->lock, NULL);
    ASSERT_EQ(pthread_create(&s->thread, NULL, stub_main, s), 0);
}

static size_t stub_requests(struct stub *s)
{
    pthread_mutex_lock(&s->lock);
    size_t n = s->request_count;
    pthread_mutex_unlock(&s->lock);
    return n;
}

static void stub_stop(struct stub *s)
{
    pthread_mutex_lock(&s->lock);
    s->stop = true;
    pthread_mutex_unlock(&s->lock);
    shutdown(s->listener, SHUT_RDWR);
    close(s->listener);
    pthread_join(s->thread, NULL);
}

static char *reply_json(const char *key_id, const char *secret,
                        int64_t expires_in_ms)
{
    static char json[1024];
    char when[64] = "";
    if (expires_in_ms != 0) {
        int64_t ms = log_now_ms() + expires_in_ms;
        time_t seconds = (time_t)(ms / 1000);
        struct tm tm;
        gmtime_r(&seconds, &tm);
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(when + strlen(when), sizeof when - strlen(when), ".%03dZ",
                 (int)(ms % 1000));
    }
    snprintf(json, sizeof json,
             "{\"AccessKeyId\":\"%s\",\"SecretAccessKey\":\"%s\","
             "\"Token\":\"" TOKEN "\"%s%s%s}",
             key_id, secret, when[0] ? ",\"Expiration\":\"" : "", when,
             when[0] ? "\"" : "");
    return json;
}

static void container_env(struct env *e, const struct stub *s)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/creds?id=1", s->port);
    env_set(e, "HOME", make_home(NULL, NULL));
    env_set(e, "AWS_CONTAINER_CREDENTIALS_FULL_URI", url);
    env_set(e, "AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9");
}

TEST(creds_container_fetch_token_file)
{
    struct stub s = {0};
    struct env e = {0};
    struct aws_creds_provider *p;
    char err[1024], path[600];
    stub_reply(&s, 200, reply_json("AKIDCONTAINER1", SECRET, 0));
    stub_start(&s);
    container_env(&e, &s);
    snprintf(path, sizeof path, "%s/token", test_tmpdir());
    write_file(path, AUTH_TOKEN "\n");
    env_set(&e, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", path);
    env_set(&e, "AWS_CONTAINER_AUTHORIZATION_TOKEN", "ignored-token");
    struct aws_creds_options opts = {.env = e.vars};
    ASSERT_EQ(aws_creds_provider_new(NULL, &opts, &p, err, sizeof err), 0);
    const struct aws_credentials *c = aws_creds_provider_current(p);
    ASSERT_STR_EQ(c->access_key_id, "AKIDCONTAINER1");
    ASSERT_STR_EQ(c->secret_access_key, SECRET);
    ASSERT_STR_EQ(c->session_token, TOKEN);
    ASSERT_EQ(aws_creds_provider_expiry_ms(p), 0);
    aws_creds_provider_close(p, NULL, NULL);
    stub_stop(&s);
    ASSERT_EQ(s.request_count, 1);
    ASSERT_TRUE(strncmp(s.requests[0], "GET /creds?id=1 HTTP/1.1", 24) == 0);
    ASSERT_TRUE(
        strstr(s.requests[0], "\r\nauthorization: " AUTH_TOKEN "\r\n") != NULL);
}

TEST(creds_container_errors)
{
    struct stub s = {0};
    struct env e = {0};
    struct aws_creds_provider *p;
    char err[1024];
    stub_reply(&s, 403, "{\"message\":\"" SECRET "\"}");
    stub_reply(&s, 200, "{\"AccessKeyId\":\"AKID\",\"Secret\":\"" SECRET "\"}");
    stub_start(&s);
    container_env(&e, &s);
    env_set(&e, "AWS_CONTAINER_AUTHORIZATION_TOKEN", AUTH_TOKEN);
    struct aws_creds_options opts = {.env = e.vars};
    ASSERT_EQ(aws_creds_provider_new(NULL, &opts, &p, err, sizeof err), -EIO);
    ASSERT_TRUE(strstr(err, "container credentials from http://127.0.0.1:") !=
                NULL);
    ASSERT_TRUE(strstr(err, "answered HTTP 403; check the authorization "
                            "token") != NULL);
    assert_no_secret(err);
    ASSERT_EQ(aws_creds_provider_new(NULL, &opts, &p, err, sizeof err), -EIO);
    if (strstr(err, "no SecretAccessKey") == NULL)
        test_fail(__FILE__, __LINE__, "%s", err);
    assert_no_secret(err);
    stub_stop(&s);
    ASSERT_TRUE(strstr(s.requests[0], "authorization: " AUTH_TOKEN) != NULL);
}

TEST(creds_imds_v2_flow)
{
    struct stub s = {0};
    struct env e = {0};
    struct aws_creds_provider *p;
    char err[1024], url[64];
    stub_reply(&s, 200, "imds-session-token-0123");
    stub_reply(&s, 200, "podium-role\n");
    stub_reply(&s, 200, reply_json("AKIDINSTANCE1", SECRET, 3600 * 1000));
    stub_start(&s);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", s.port);
    env_set(&e, "HOME", make_home(NULL, NULL));
    env_set(&e, "AWS_EC2_METADATA_SERVICE_ENDPOINT", url);
    struct aws_creds_options opts = {.env = e.vars, .imds = true};
    int rc = aws_creds_provider_new(NULL, &opts, &p, err, sizeof err);
    if (rc != 0)
        test_fail(__FILE__, __LINE__, "%s", err);
    ASSERT_STR_EQ(aws_creds_provider_current(p)->access_key_id,
                  "AKIDINSTANCE1");
    ASSERT_TRUE(aws_creds_provider_expiry_ms(p) > log_now_ms());
    aws_creds_provider_close(p, NULL, NULL);
    stub_stop(&s);
    ASSERT_EQ(s.request_count, 3);
    ASSERT_TRUE(strncmp(s.requests[0], "PUT /latest/api/token ", 22) == 0);
    ASSERT_TRUE(strstr(s.requests[0],
                       "x-aws-ec2-metadata-token-ttl-seconds: 21600") != NULL);
    ASSERT_TRUE(strncmp(s.requests[1],
                        "GET /latest/meta-data/iam/security-credentials/ ",
                        48) == 0);
    ASSERT_TRUE(strstr(s.requests[1],
                       "x-aws-ec2-metadata-token: imds-session-token-0123") !=
                NULL);
    ASSERT_TRUE(strncmp(s.requests[2],
                        "GET /latest/meta-data/iam/security-credentials/"
                        "podium-role ",
                        59) == 0);
}

TEST(creds_imds_off_no_request)
{
    struct stub s = {0};
    struct env e = {0};
    struct aws_creds_provider *p;
    char err[1024], url[64];
    stub_reply(&s, 200, "imds-session-token-0123");
    stub_start(&s);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", s.port);
    env_set(&e, "HOME", make_home(NULL, NULL));
    env_set(&e, "AWS_EC2_METADATA_SERVICE_ENDPOINT", url);
    struct aws_creds_options opts = {.env = e.vars, .imds = false};
    ASSERT_EQ(aws_creds_provider_new(NULL, &opts, &p, err, sizeof err),
              -EINVAL);
    ASSERT_TRUE(strstr(err, "no AWS credentials found") != NULL);
    stub_stop(&s);
    ASSERT_EQ(s.request_count, 0);
}

/* ---- refreshing on a loop --------------------------------------------- */

static void on_provider_closed(void *arg)
{
    *(bool *)arg = true;
}

static void on_guard(uv_timer_t *timer)
{
    uv_timer_stop(timer);
}

/* Run loop until the provider's key id is key_id; fails after 200 turns
 * of at most 100 ms each. */
static void wait_for_key(uv_loop_t *loop, struct aws_creds_provider *p,
                         const char *key_id)
{
    uv_timer_t guard;
    uv_timer_init(loop, &guard);
    for (int i = 0; i < 200; i++) {
        if (strcmp(aws_creds_provider_current(p)->access_key_id, key_id) == 0)
            break;
        uv_timer_start(&guard, on_guard, 100, 0);
        uv_run(loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    ASSERT_STR_EQ(aws_creds_provider_current(p)->access_key_id, key_id);
}

TEST(creds_refresh_before_expiry)
{
    struct stub s = {0};
    struct env e = {0};
    struct aws_creds_provider *p;
    uv_loop_t loop;
    char err[1024];
    /* The first credentials expire in 3 s, so the refresh comes halfway;
     * it fails once and is tried again, keeping the first ones meanwhile. */
    stub_reply(&s, 200, reply_json("AKIDFIRSTKEY", SECRET, 3000));
    stub_reply(&s, 500, "{}");
    stub_reply(&s, 200, reply_json("AKIDSECONDKEY", SECRET2, 3600 * 1000));
    stub_start(&s);
    container_env(&e, &s);
    uv_loop_init(&loop);
    struct aws_creds_options opts = {.env = e.vars};
    ASSERT_EQ(aws_creds_provider_new(&loop, &opts, &p, err, sizeof err), 0);
    ASSERT_STR_EQ(aws_creds_provider_current(p)->access_key_id, "AKIDFIRSTKEY");
    wait_for_key(&loop, p, "AKIDSECONDKEY");
    ASSERT_STR_EQ(aws_creds_provider_current(p)->secret_access_key, SECRET2);
    ASSERT_EQ(stub_requests(&s), 3);
    bool closed = false;
    aws_creds_provider_close(p, on_provider_closed, &closed);
    uv_run(&loop, UV_RUN_DEFAULT);
    ASSERT_TRUE(closed);
    ASSERT_EQ(uv_loop_close(&loop), 0);
    stub_stop(&s);
}

TEST(creds_refetch_after_rejection)
{
    struct stub s = {0};
    struct env e = {0};
    struct aws_creds_provider *p;
    uv_loop_t loop;
    char err[1024];
    /* Credentials without expiry are fetched again only when a service
     * refuses them. */
    stub_reply(&s, 200, reply_json("AKIDBEFOREROTATION", SECRET, 0));
    stub_reply(&s, 200, reply_json("AKIDAFTERROTATION", SECRET2, 0));
    stub_start(&s);
    container_env(&e, &s);
    uv_loop_init(&loop);
    struct aws_creds_options opts = {.env = e.vars};
    ASSERT_EQ(aws_creds_provider_new(&loop, &opts, &p, err, sizeof err), 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    ASSERT_EQ(stub_requests(&s), 1);
    aws_creds_provider_rejected(p);
    wait_for_key(&loop, p, "AKIDAFTERROTATION");
    ASSERT_EQ(stub_requests(&s), 2);
    bool closed = false;
    aws_creds_provider_close(p, on_provider_closed, &closed);
    uv_run(&loop, UV_RUN_DEFAULT);
    ASSERT_TRUE(closed);
    ASSERT_EQ(uv_loop_close(&loop), 0);
    stub_stop(&s);
}
