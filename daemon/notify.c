/*
 * The systemd notification protocol (sd_notify(3)), without libsystemd.
 * Each message is one datagram of "KEY=VALUE" lines to the AF_UNIX socket
 * that $NOTIFY_SOCKET names: a file system path, or with a leading '@' a
 * name in the abstract namespace. systemd reads the sender's pid from the
 * socket, and with NotifyAccess=main it accepts only the main process.
 *
 * Without $NOTIFY_SOCKET every call here does nothing and logs nothing.
 * Messages go out only from the process that called notifier_open, so a
 * forked child never speaks for podium, and only from the loop thread.
 */
#include "daemon/daemon.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/log.h"

struct notifier {
    int fd;
    struct sockaddr_un addr;
    socklen_t addr_len;
    pid_t pid; /* the process that opened the notifier */
    uint64_t watchdog_usec;
    bool stopping; /* STOPPING=1 was sent: no more WATCHDOG=1 */
    struct log_limit limit;
};

/*
 * Read $WATCHDOG_USEC, and $WATCHDOG_PID when set, as sd_watchdog_enabled(3)
 * does. Returns the interval in microseconds, or 0 when the watchdog is off
 * for this process.
 */
static uint64_t watchdog_from_env(void)
{
    const char *usec = getenv("WATCHDOG_USEC");
    const char *pid = getenv("WATCHDOG_PID");
    char *end;

    if (usec == NULL || usec[0] == '\0')
        return 0;
    errno = 0;
    unsigned long long value = strtoull(usec, &end, 10);
    if (errno != 0 || *end != '\0' || value == 0 || usec[0] == '-') {
        log_warn("main", NULL,
                 "ignored WATCHDOG_USEC=\"%s\": expected a positive number "
                 "of microseconds",
                 usec);
        return 0;
    }
    if (pid != NULL && pid[0] != '\0') {
        errno = 0;
        long long owner = strtoll(pid, &end, 10);
        if (errno != 0 || *end != '\0' || owner <= 0) {
            log_warn("main", NULL,
                     "ignored the watchdog: WATCHDOG_PID=\"%s\" is not a "
                     "process id",
                     pid);
            return 0;
        }
        if (owner != (long long)getpid())
            return 0; /* meant for another process */
    }
    return (uint64_t)value;
}

/* Fill n->addr from the value of $NOTIFY_SOCKET. Returns 0 or -1. */
static int parse_address(struct notifier *n, const char *name)
{
    size_t len = strlen(name);

    memset(&n->addr, 0, sizeof n->addr);
    n->addr.sun_family = AF_UNIX;
    if ((name[0] != '/' && name[0] != '@') || len < 2 ||
        len >= sizeof n->addr.sun_path)
        return -1;
    memcpy(n->addr.sun_path, name, len);
    if (name[0] == '@')
        n->addr.sun_path[0] = '\0'; /* abstract: no terminating NUL counts */
    else
        len++; /* a path counts its NUL */
    n->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    return 0;
}

struct notifier *notifier_open(void)
{
    const char *name = getenv("NOTIFY_SOCKET");
    if (name == NULL || name[0] == '\0')
        return NULL;

    struct notifier *n = calloc(1, sizeof *n);
    if (n == NULL)
        return NULL;
    n->limit = (struct log_limit)LOG_LIMIT_INIT(60000, 3);
    if (parse_address(n, name) != 0) {
        log_warn("main", NULL,
                 "ignored NOTIFY_SOCKET=\"%s\": expected an absolute path or "
                 "an abstract name starting with '@', shorter than %zu bytes",
                 name, sizeof n->addr.sun_path);
        free(n);
        return NULL;
    }
    n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (n->fd < 0) {
        log_warn("main", NULL,
                 "failed to create the socket for NOTIFY_SOCKET: %s; systemd "
                 "gets no readiness or watchdog messages",
                 strerror(errno));
        free(n);
        return NULL;
    }
    n->pid = getpid();
    n->watchdog_usec = watchdog_from_env();
    return n;
}

void notifier_close(struct notifier *n)
{
    if (n == NULL)
        return;
    close(n->fd);
    free(n);
}

uint64_t notifier_watchdog_usec(const struct notifier *n)
{
    return n != NULL ? n->watchdog_usec : 0;
}

/* Send text as one datagram. A failure is logged (rate limited) and the
 * message is dropped without a retry. */
static void send_text(struct notifier *n, const char *text)
{
    ssize_t rc;

    if (getpid() != n->pid)
        return;
    do {
        rc = sendto(n->fd, text, strlen(text), MSG_NOSIGNAL | MSG_DONTWAIT,
                    (const struct sockaddr *)&n->addr, n->addr_len);
    } while (rc < 0 && errno == EINTR);
    if (rc >= 0)
        return;

    uint32_t suppressed;
    if (log_limit_allow(&n->limit, (uint64_t)log_now_ms(), &suppressed))
        log_warn("main", NULL,
                 "failed to send \"%.*s\" to NOTIFY_SOCKET: %s (%" PRIu32
                 " earlier failures not logged)",
                 (int)strcspn(text, "\n"), text, strerror(errno), suppressed);
}

void notifier_ready(struct notifier *n, const char *status)
{
    char text[600];
    if (n == NULL)
        return;
    snprintf(text, sizeof text, "READY=1\nSTATUS=%s", status);
    send_text(n, text);
}

void notifier_status(struct notifier *n, const char *status)
{
    char text[600];
    if (n == NULL)
        return;
    snprintf(text, sizeof text, "STATUS=%s", status);
    send_text(n, text);
}

void notifier_watchdog(struct notifier *n)
{
    if (n == NULL || n->watchdog_usec == 0 || n->stopping)
        return;
    send_text(n, "WATCHDOG=1");
}

void notifier_stopping(struct notifier *n, const char *status)
{
    char text[600];
    if (n == NULL || n->stopping)
        return;
    n->stopping = true;
    snprintf(text, sizeof text, "STOPPING=1\nSTATUS=%s", status);
    send_text(n, text);
}
