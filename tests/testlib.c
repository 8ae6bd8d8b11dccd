#include "tests/testlib.h"

#include <stdarg.h>
#include <unistd.h>

#define TEST_MAX_CASES 512

static struct {
    const char *name;
    test_fn fn;
} cases[TEST_MAX_CASES];
static int case_count;
static char tmpdir[4096];
/* The process that created tmpdir; a forked child that exits leaves it. */
static pid_t tmpdir_owner;

void test_register(const char *name, test_fn fn)
{
    if (case_count == TEST_MAX_CASES) {
        fprintf(stderr, "too many test cases (max %d)\n", TEST_MAX_CASES);
        exit(2);
    }
    cases[case_count].name = name;
    cases[case_count].fn = fn;
    case_count++;
}

void test_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static void remove_tmpdir(void)
{
    if (tmpdir[0] == '\0' || getenv("PODIUM_KEEP_TMP") != NULL ||
        getpid() != tmpdir_owner)
        return;
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
}

const char *test_tmpdir(void)
{
    if (tmpdir[0] != '\0')
        return tmpdir;
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/podium-test-XXXXXX",
             base ? base : "/tmp");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        exit(2);
    }
    tmpdir_owner = getpid();
    atexit(remove_tmpdir);
    return tmpdir;
}

int main(int argc, char **argv)
{
    int ran = 0;
    for (int i = 0; i < case_count; i++) {
        if (argc > 1 && strcmp(argv[1], cases[i].name) != 0)
            continue;
        fprintf(stderr, "RUN  %s\n", cases[i].name);
        cases[i].fn();
        fprintf(stderr, "OK   %s\n", cases[i].name);
        ran++;
    }
    if (ran == 0) {
        fprintf(stderr, "no test case named %s\n", argc > 1 ? argv[1] : "");
        return 2;
    }
    return 0;
}
