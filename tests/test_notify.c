/*
 * The systemd notification protocol of `podium run`, end to end. The real
 * podium binary (PODIUM_BIN) reads a kinesalite stream through the fault
 * proxy. It sends its datagrams to an AF_UNIX socket that the case binds
 * and passes as NOTIFY_SOCKET, the way systemd does. SO_PASSCRED makes the
 * kernel attach the sender's pid to every datagram, so each case can check
 * that only the main process speaks.
 */
/* struct ucred and SCM_CREDENTIALS. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "tests/kinesis_testlib.h"

#define STREAM "notify-test"

/* ---- the socket in the place of systemd's ------------------------------- */

struct notify_socket {
    int fd;
    char name[108]; /* the NOTIFY_SOCKET value */
};

/* One datagram with the pid of its sender and the time it arrived. */
struct datagram {
    char text[1024];
    pid_t pid;
    uint64_t at_ms;
};

static void notify_socket_open(struct notify_socket *s, bool abstract)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    socklen_t len;
    int on = 1;

    if (abstract) {
        snprintf(s->name, sizeof s->name, "@podium-notify-test-%d",
                 (int)getpid());
        memcpy(addr.sun_path, s->name, strlen(s->name));
        addr.sun_path[0] = '\0';
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
                          strlen(s->name));
    } else {
        snprintf(s->name, sizeof s->name, "%s/notify.sock", test_tmpdir());
        ASSERT_TRUE(strlen(s->name) < sizeof addr.sun_path);
        memcpy(addr.sun_path, s->name, strlen(s->name) + 1);
        len = (socklen_t)sizeof addr;
    }
    s->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_TRUE(s->fd >= 0);
    ASSERT_EQ(setsockopt(s->fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof on), 0);
    if (bind(s->fd, (struct sockaddr *)&addr, len) != 0)
        test_fail(__FILE__, __LINE__, "bind %s: %s", s->name, strerror(errno));
}

/* Wait up to timeout_ms for one datagram. Returns false on timeout. */
static bool receive(const struct notify_socket *s, struct datagram *out,
                    uint64_t timeout_ms)
{
    struct pollfd pfd = {.fd = s->fd, .events = POLLIN};
    union {
        char buf[CMSG_SPACE(sizeof(struct ucred))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {out->text, sizeof out->text - 1};
    struct msghdr msg = {.msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};

    int rc = poll(&pfd, 1, (int)timeout_ms);
    ASSERT_TRUE(rc >= 0 || errno == EINTR);
    if (rc <= 0)
        return false;
    ssize_t n = recvmsg(s->fd, &msg, 0);
    ASSERT_TRUE(n >= 0);
    out->text[n] = '\0';
    out->at_ms = now_ms();
    out->pid = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL;
         c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
            struct ucred cred;
            memcpy(&cred, CMSG_DATA(c), sizeof cred);
            out->pid = cred.pid;
        }
    }
    return true;
}

/* True when the datagram has line as one of its lines. */
static bool has_line(const struct datagram *d, const char *line)
{
    size_t len = strlen(line);
    for (const char *p = d->text; p != NULL && *p != '\0';) {
        if (strncmp(p, line, len) == 0 && (p[len] == '\n' || p[len] == '\0'))
            return true;
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    return false;
}

/* The STATUS= value of the datagram, or NULL. */
static const char *status_of(const struct datagram *d)
{
    const char *p = strstr(d->text, "STATUS=");
    if (p == NULL || (p != d->text && p[-1] != '\n'))
        return NULL;
    return p + strlen("STATUS=");
}

/* ---- the podium process ---------------------------------------------------
 */

static pid_t podium_pid;
static int podium_status;

static void kill_podium(void)
{
    if (podium_pid > 0) {
        kill(podium_pid, SIGKILL);
        waitpid(podium_pid, NULL, 0);
        podium_pid = 0;
    }
}

static const char *podium_bin(void)
{
    const char *bin = getenv("PODIUM_BIN");
    if (bin == NULL) {
        fprintf(stderr, "PODIUM_BIN is not set: run through ctest\n");
        exit(2);
    }
    return bin;
}

static const char *store_path(void)
{
    static char path[4200];
    snprintf(path, sizeof path, "%s/podium.db", test_tmpdir());
    return path;
}

static const char *stderr_path(void)
{
    static char path[4200];
    snprintf(path, sizeof path, "%s/podium.log", test_tmpdir());
    return path;
}

/*
 * Start `podium run` on the stream behind kinesis_port with its standard
 * error in stderr_path(). extra_env are more "NAME=value" entries, ending
 * in NULL; NOTIFY_SOCKET and the watchdog come only from there.
 */
static void start_podium(int kinesis_port, const char *const *extra_env)
{
    static char endpoint[128], store[4300], out[4300], config[4300];
    char *env[32];
    size_t n = 0;

    snprintf(config, sizeof config, "%s/empty.conf", test_tmpdir());
    FILE *f = fopen(config, "w");
    ASSERT_TRUE(f != NULL);
    ASSERT_EQ(fclose(f), 0);
    snprintf(endpoint, sizeof endpoint, "kinesis.endpoint=http://127.0.0.1:%d",
             kinesis_port);
    snprintf(store, sizeof store, "store.path=%s", store_path());
    snprintf(out, sizeof out, "publish.file=%s/messages.jsonl", test_tmpdir());
    env[n++] = "AWS_ACCESS_KEY_ID=AKIDEXAMPLE";
    env[n++] = "AWS_SECRET_ACCESS_KEY=SECRETEXAMPLE";
    env[n++] = "AWS_REGION=us-east-1";
    for (size_t i = 0; extra_env[i] != NULL; i++) {
        ASSERT_TRUE(n < 31);
        env[n++] = (char *)extra_env[i];
    }
    env[n] = NULL;
    char *argv[] = {(char *)podium_bin(),
                    "run",
                    "--config",
                    config,
                    "--set",
                    "stream.name=" STREAM,
                    "--set",
                    endpoint,
                    "--set",
                    store,
                    "--set",
                    "publish.transport=file",
                    "--set",
                    out,
                    "--set",
                    "kinesis.poll_interval_ms=200",
                    "--set",
                    "http.listen=127.0.0.1:0",
                    NULL};

    fflush(NULL);
    pid_t pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        int fd =
            open(stderr_path(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0 || dup2(fd, 2) < 0 || dup2(fd, 1) < 0)
            _exit(127);
        execve(argv[0], argv, env);
        _exit(127);
    }
    podium_pid = pid;
    atexit(kill_podium);
}

/* Wait for podium to exit and return its exit status. */
static int wait_podium(void)
{
    uint64_t deadline = now_ms() + WAIT_MS;
    while (now_ms() < deadline) {
        pid_t rc = waitpid(podium_pid, &podium_status, WNOHANG);
        ASSERT_TRUE(rc >= 0);
        if (rc == podium_pid) {
            podium_pid = 0;
            ASSERT_TRUE(WIFEXITED(podium_status));
            return WEXITSTATUS(podium_status);
        }
        usleep(50 * 1000);
    }
    test_fail(__FILE__, __LINE__, "podium did not exit: see %s", stderr_path());
}

/* True once podium has exited (the status is kept for wait_podium). Fails
 * when podium still runs WAIT_MS after the first call. */
static bool podium_exited(void)
{
    static uint64_t deadline;
    if (deadline == 0)
        deadline = now_ms() + WAIT_MS;
    if (now_ms() > deadline)
        test_fail(__FILE__, __LINE__, "podium did not exit: see %s",
                  stderr_path());
    if (podium_pid == 0)
        return true;
    pid_t rc = waitpid(podium_pid, &podium_status, WNOHANG);
    ASSERT_TRUE(rc >= 0);
    if (rc != podium_pid)
        return false;
    podium_pid = 0;
    return true;
}

/*
 * Receive datagrams until one has line, checking that each came from the
 * podium process. Fails after WAIT_MS.
 */
static void wait_for_line(const struct notify_socket *s, const char *line,
                          struct datagram *out)
{
    uint64_t deadline = now_ms() + WAIT_MS;
    while (now_ms() < deadline) {
        if (!receive(s, out, 200))
            continue;
        ASSERT_EQ(out->pid, podium_pid);
        if (has_line(out, line))
            return;
    }
    test_fail(__FILE__, __LINE__, "no datagram with %s arrived: see %s", line,
              stderr_path());
}

/* Number of lines of podium's standard error that contain text. */
static size_t count_log_lines(const char *text)
{
    char line[8192];
    size_t n = 0;
    FILE *f = fopen(stderr_path(), "r");
    if (f == NULL && errno == ENOENT)
        return 0; /* podium has not opened it yet */
    ASSERT_TRUE(f != NULL);
    while (fgets(line, sizeof line, f) != NULL)
        n += strstr(line, text) != NULL;
    fclose(f);
    return n;
}

/* kinesalite with a stream of shards shards, behind the fault proxy. */
static int start_stream(int shards, const char *rules)
{
    struct env e;
    int port = start_kinesalite();
    env_init(&e, port);
    create_stream(&e, STREAM, shards);
    env_close(&e);
    return start_proxy(port, rules);
}

/* ---- cases ----------------------------------------------------------------
 */

TEST(notify_ready_from_main_pid)
{
    struct notify_socket s;
    struct datagram d;
    char var[200];

    int port = start_stream(2, "[]");
    notify_socket_open(&s, false);
    snprintf(var, sizeof var, "NOTIFY_SOCKET=%s", s.name);
    start_podium(port, (const char *const[]){var, NULL});

    wait_for_line(&s, "READY=1", &d);
    ASSERT_EQ(d.pid, podium_pid);
    /* READY follows a successful ListShards reply. */
    ASSERT_TRUE(count_requests("ListShards") >= 1);
    ASSERT_TRUE(status_of(&d) != NULL);
    ASSERT_TRUE(strstr(status_of(&d), "reading 2 open shards") != NULL);

    /* Status lines follow while it runs. */
    wait_for_line(&s, "STATUS=reading 2 shards, 0 records applied, outbox 0",
                  &d);
    ASSERT_EQ(d.pid, podium_pid);
    ASSERT_EQ(kill(podium_pid, SIGTERM), 0);
    ASSERT_EQ(wait_podium(), 0);
}

TEST(notify_ready_without_open_shards)
{
    struct notify_socket s;
    struct datagram d;
    char var[200];

    int port =
        start_stream(1, "[{\"action\":\"ListShards\",\"fault\":\"noshards\"}]");
    notify_socket_open(&s, false);
    snprintf(var, sizeof var, "NOTIFY_SOCKET=%s", s.name);
    start_podium(port, (const char *const[]){var, NULL});

    wait_for_line(&s, "READY=1", &d);
    ASSERT_TRUE(status_of(&d) != NULL);
    ASSERT_TRUE(strstr(status_of(&d), "has no open shards") != NULL);
    ASSERT_EQ(kill(podium_pid, SIGTERM), 0);
    ASSERT_EQ(wait_podium(), 0);
}

TEST(notify_status_while_kinesis_unreachable)
{
    struct notify_socket s;
    struct datagram d;
    char var[200];
    size_t retry_lines = 0;

    /* Every ListShards connection is closed without a reply. */
    int port =
        start_stream(1, "[{\"action\":\"ListShards\",\"fault\":\"reset\"}]");
    notify_socket_open(&s, false);
    snprintf(var, sizeof var, "NOTIFY_SOCKET=%s", s.name);
    start_podium(port, (const char *const[]){var, NULL});

    /* Two status lines that count failed connections, and no READY. */
    uint64_t deadline = now_ms() + WAIT_MS;
    while (retry_lines < 2 && now_ms() < deadline) {
        if (!receive(&s, &d, 200))
            continue;
        ASSERT_EQ(d.pid, podium_pid);
        ASSERT_FALSE(has_line(&d, "READY=1"));
        const char *status = status_of(&d);
        if (status != NULL && strstr(status, "waiting for ListShards") &&
            strstr(status, "retrying") && !strstr(status, "(0 connection"))
            retry_lines++;
    }
    ASSERT_EQ(retry_lines, 2);
    ASSERT_FALSE(podium_exited());

    /* Kinesis comes back: READY follows. */
    set_proxy_rules("[]");
    wait_for_line(&s, "READY=1", &d);
    ASSERT_EQ(kill(podium_pid, SIGTERM), 0);
    ASSERT_EQ(wait_podium(), 0);
}

TEST(notify_watchdog_at_half_interval)
{
    struct notify_socket s;
    struct datagram d;
    char var[200], other_pid[64];
    uint64_t pings[8];
    size_t count = 0;

    int port = start_stream(1, "[]");
    notify_socket_open(&s, false);
    snprintf(var, sizeof var, "NOTIFY_SOCKET=%s", s.name);
    start_podium(port,
                 (const char *const[]){var, "WATCHDOG_USEC=2000000", NULL});

    wait_for_line(&s, "READY=1", &d);
    while (count < 8) {
        wait_for_line(&s, "WATCHDOG=1", &d);
        pings[count++] = d.at_ms;
    }
    /* A ping every 1000 ms, half of WATCHDOG_USEC. A loaded machine may
     * delay one, but never sends it early. */
    for (size_t i = 1; i < count; i++) {
        uint64_t gap = pings[i] - pings[i - 1];
        if (gap < 800 || gap > 1900)
            test_fail(__FILE__, __LINE__,
                      "ping %zu came %" PRIu64 " ms after the one before, "
                      "expected about 1000 ms",
                      i, gap);
    }
    ASSERT_EQ(kill(podium_pid, SIGTERM), 0);
    ASSERT_EQ(wait_podium(), 0);

    /* WATCHDOG_PID of another process: no pings from this one. */
    while (receive(&s, &d, 0))
        continue; /* the last datagrams of the first process */
    snprintf(other_pid, sizeof other_pid, "WATCHDOG_PID=%d", (int)getpid());
    start_podium(port, (const char *const[]){var, "WATCHDOG_USEC=200000",
                                             other_pid, NULL});
    wait_for_line(&s, "READY=1", &d);
    uint64_t until = now_ms() + 1500;
    while (now_ms() < until) {
        if (receive(&s, &d, 100))
            ASSERT_FALSE(has_line(&d, "WATCHDOG=1"));
    }
    ASSERT_EQ(kill(podium_pid, SIGTERM), 0);
    ASSERT_EQ(wait_podium(), 0);
}

TEST(notify_watchdog_stops_on_locked_store)
{
    struct notify_socket s;
    struct datagram d;
    char var[200];
    sqlite3 *db;
    char *err = NULL;

    int port = start_stream(1, "[]");
    notify_socket_open(&s, false);
    snprintf(var, sizeof var, "NOTIFY_SOCKET=%s", s.name);
    start_podium(port,
                 (const char *const[]){var, "WATCHDOG_USEC=1000000", NULL});
    wait_for_line(&s, "READY=1", &d);
    wait_for_line(&s, "WATCHDOG=1", &d);
    wait_for_line(&s, "WATCHDOG=1", &d);

    /*
     * Hold the store's write lock. The caught-up stream queues a stream-time
     * job every second, which then waits in BEGIN IMMEDIATE for the lock,
     * up to the store's busy timeout of 5 s, and fails. The loop keeps
     * running meanwhile, so only the job's age can stop the pings.
     */
    ASSERT_EQ(sqlite3_open(store_path(), &db), SQLITE_OK);
    if (sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, &err) != SQLITE_OK)
        test_fail(__FILE__, __LINE__, "BEGIN EXCLUSIVE: %s", err);
    uint64_t locked_ms = now_ms();

    /* The job starts within about 1 s and is overdue 1 s later. */
    uint64_t quiet_from = locked_ms + 2500;
    uint64_t last_ping = 0;
    bool stopping = false;
    while (!podium_exited()) {
        if (!receive(&s, &d, 100))
            continue;
        ASSERT_EQ(d.pid, podium_pid);
        if (has_line(&d, "STOPPING=1"))
            stopping = true;
        if (has_line(&d, "WATCHDOG=1"))
            last_ping = d.at_ms;
    }
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(db);

    ASSERT_TRUE(last_ping > 0);
    if (last_ping >= quiet_from)
        test_fail(__FILE__, __LINE__,
                  "a WATCHDOG=1 came %" PRIu64 " ms after the lock, while the "
                  "job waited for it",
                  last_ping - locked_ms);
    /* The job failed at the busy timeout and podium stopped with status 1. */
    ASSERT_TRUE(stopping);
    ASSERT_EQ(WEXITSTATUS(podium_status), 1);
    ASSERT_EQ(count_log_lines("withholding the systemd watchdog ping"), 1);
}

TEST(notify_stopping_ends_watchdog)
{
    struct notify_socket s;
    struct datagram d;
    char var[200];

    int port = start_stream(1, "[]");
    notify_socket_open(&s, false);
    snprintf(var, sizeof var, "NOTIFY_SOCKET=%s", s.name);
    /* Pings every 50 ms, so a ping after STOPPING=1 would show. */
    start_podium(port,
                 (const char *const[]){var, "WATCHDOG_USEC=100000", NULL});
    wait_for_line(&s, "READY=1", &d);
    wait_for_line(&s, "WATCHDOG=1", &d);

    ASSERT_EQ(kill(podium_pid, SIGTERM), 0);
    wait_for_line(&s, "STOPPING=1", &d);
    ASSERT_EQ(d.pid, podium_pid);
    while (!podium_exited()) {
        if (receive(&s, &d, 50))
            ASSERT_FALSE(has_line(&d, "WATCHDOG=1"));
    }
    while (receive(&s, &d, 0))
        ASSERT_FALSE(has_line(&d, "WATCHDOG=1"));
    ASSERT_TRUE(WIFEXITED(podium_status));
    ASSERT_EQ(WEXITSTATUS(podium_status), 0);
}

TEST(notify_silent_without_socket)
{
    struct notify_socket s;
    struct datagram d;

    int port = start_stream(1, "[]");
    /* Bound but not named to podium: nothing may arrive here. */
    notify_socket_open(&s, false);
    start_podium(port, (const char *const[]){"WATCHDOG_USEC=100000", NULL});

    uint64_t deadline = now_ms() + WAIT_MS;
    while (count_log_lines("\"ready: ") == 0 && now_ms() < deadline)
        ASSERT_FALSE(receive(&s, &d, 100));
    ASSERT_EQ(count_log_lines("\"ready: "), 1);
    /* Several watchdog intervals pass without a datagram. */
    ASSERT_FALSE(receive(&s, &d, 1000));
    ASSERT_EQ(kill(podium_pid, SIGTERM), 0);
    ASSERT_EQ(wait_podium(), 0);
    ASSERT_FALSE(receive(&s, &d, 0));
    ASSERT_EQ(count_log_lines("\"level\":\"error\""), 0);
    ASSERT_EQ(count_log_lines("NOTIFY_SOCKET"), 0);
}

TEST(notify_abstract_socket_name)
{
    struct notify_socket s;
    struct datagram d;
    char var[200];

    int port = start_stream(1, "[]");
    notify_socket_open(&s, true);
    snprintf(var, sizeof var, "NOTIFY_SOCKET=%s", s.name);
    start_podium(port,
                 (const char *const[]){var, "WATCHDOG_USEC=1000000", NULL});

    wait_for_line(&s, "READY=1", &d);
    ASSERT_EQ(d.pid, podium_pid);
    wait_for_line(&s, "WATCHDOG=1", &d);
    ASSERT_EQ(kill(podium_pid, SIGTERM), 0);
    wait_for_line(&s, "STOPPING=1", &d);
    ASSERT_EQ(wait_podium(), 0);
}
