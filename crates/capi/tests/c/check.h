/* Checks for the C tests of libpagemesh: a failed check prints where, what, and the library's
 * last error, and exits 1. */
#ifndef PAGEMESH_TEST_CHECK_H
#define PAGEMESH_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pagemesh.h>

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "%s:%d: check failed: %s (last error: \"%s\")\n", __FILE__, \
                    __LINE__, #cond, pagemesh_last_error());                           \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

/* `call` returns `want`; when `want` is an error, the thread's last error says something, and
 * when it is PAGEMESH_OK, the last error is empty. */
#define EXPECT(call, want)                                                                    \
    do {                                                                                      \
        int got_ = (int)(call);                                                               \
        const char *msg_ = pagemesh_last_error();                                             \
        if (got_ != (int)(want)) {                                                            \
            fprintf(stderr, "%s:%d: %s returned %s, expected %s (last error: \"%s\")\n",      \
                    __FILE__, __LINE__, #call, pagemesh_strerror(got_),                       \
                    pagemesh_strerror((int)(want)), msg_);                                    \
            exit(1);                                                                          \
        }                                                                                     \
        if ((got_ == PAGEMESH_OK) != (msg_[0] == '\0')) {                                     \
            fprintf(stderr, "%s:%d: %s returned %s with last error \"%s\"\n", __FILE__,        \
                    __LINE__, #call, pagemesh_strerror(got_), msg_);                          \
            exit(1);                                                                          \
        }                                                                                     \
    } while (0)

/* The last error contains `part`. */
#define EXPECT_MESSAGE(part)                                                                \
    do {                                                                                    \
        const char *msg_ = pagemesh_last_error();                                           \
        if (strstr(msg_, (part)) == NULL) {                                                 \
            fprintf(stderr, "%s:%d: last error \"%s\" does not say \"%s\"\n", __FILE__,      \
                    __LINE__, msg_, (part));                                                \
            exit(1);                                                                        \
        }                                                                                   \
    } while (0)

#endif /* PAGEMESH_TEST_CHECK_H */
