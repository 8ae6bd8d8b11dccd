/*
 * Minimal test harness. A test file defines cases with TEST(name); each case
 * registers itself at start-up, and CMake registers every case with CTest as
 * its own process ("test_store store_commit_is_atomic"). Run a test binary
 * with no argument to run all its cases in one process.
 */
#ifndef PODIUM_TESTS_TESTLIB_H
#define PODIUM_TESTS_TESTLIB_H

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*test_fn)(void);
void test_register(const char *name, test_fn fn);

#define TEST(name)                                                             \
    static void name(void);                                                    \
    __attribute__((constructor)) static void test_register_##name(void)        \
    {                                                                          \
        test_register(#name, name);                                            \
    }                                                                          \
    static void name(void)

void test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));

#define ASSERT_TRUE(cond)                                                      \
    do {                                                                       \
        if (!(cond))                                                           \
            test_fail(__FILE__, __LINE__, "expected true: %s", #cond);         \
    } while (0)

#define ASSERT_FALSE(cond)                                                     \
    do {                                                                       \
        if (cond)                                                              \
            test_fail(__FILE__, __LINE__, "expected false: %s", #cond);        \
    } while (0)

#define ASSERT_EQ(a, b)                                                        \
    do {                                                                       \
        int64_t test_a_ = (int64_t)(a), test_b_ = (int64_t)(b);                \
        if (test_a_ != test_b_)                                                \
            test_fail(__FILE__, __LINE__, "%s == %s: %" PRId64 " != %" PRId64, \
                      #a, #b, test_a_, test_b_);                               \
    } while (0)

#define ASSERT_NE(a, b)                                                        \
    do {                                                                       \
        int64_t test_a_ = (int64_t)(a), test_b_ = (int64_t)(b);                \
        if (test_a_ == test_b_)                                                \
            test_fail(__FILE__, __LINE__, "%s != %s: both %" PRId64, #a, #b,   \
                      test_a_);                                                \
    } while (0)

#define ASSERT_STR_EQ(a, b)                                                    \
    do {                                                                       \
        const char *test_a_ = (a), *test_b_ = (b);                             \
        if (test_a_ == NULL || test_b_ == NULL || strcmp(test_a_, test_b_))    \
            test_fail(__FILE__, __LINE__, "%s == %s:\n  \"%s\"\n  \"%s\"", #a, \
                      #b, test_a_ ? test_a_ : "(null)",                        \
                      test_b_ ? test_b_ : "(null)");                           \
    } while (0)

#define ASSERT_MEM_EQ(a, alen, b, blen)                                        \
    do {                                                                       \
        size_t test_al_ = (alen), test_bl_ = (blen);                           \
        if (test_al_ != test_bl_ || memcmp((a), (b), test_al_) != 0)           \
            test_fail(__FILE__, __LINE__, "%s (%zu bytes) != %s (%zu bytes)",  \
                      #a, test_al_, #b, test_bl_);                             \
    } while (0)

/*
 * Create a fresh empty directory for this case under $TMPDIR (or /tmp) and
 * return its path (borrowed, valid until exit). It is removed at exit unless
 * PODIUM_KEEP_TMP is set.
 */
const char *test_tmpdir(void);

#endif
