/* Every call of libpagemesh against a single-node daemon, with its error paths.
 * Usage: api SOCKET WORKDIR     (WORKDIR: an empty directory for a backing file)
 * Prints "api: all checks passed" and exits 0, or names the failed check and exits 1. */
#define _POSIX_C_SOURCE 200809L

#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "check.h"

#define ZERO_SIZE (1024 * 1024 + 100) /* not a whole number of pages */
#define FILE_SIZE (64 * 1024)

static const char *sock;

/* A NULL for every pointer argument that may not be NULL: PAGEMESH_ERR_NULL, a message naming
 * the argument, nothing done. */
static void null_arguments(pagemesh_client *c, pagemesh_mapping *m) {
    pagemesh_client *cout = (pagemesh_client *)1;
    pagemesh_mapping *mout = (pagemesh_mapping *)1;
    pagemesh_segment_stat st;
    uint64_t n;
    char buf[8] = {0};

    EXPECT(pagemesh_connect(sock, NULL), PAGEMESH_ERR_NULL);
    EXPECT_MESSAGE("out is NULL");
    EXPECT(pagemesh_disconnect(NULL), PAGEMESH_ERR_NULL);
    EXPECT_MESSAGE("client is NULL");
    EXPECT(pagemesh_create(NULL, "x", 4096, NULL), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_create(c, NULL, 4096, NULL), PAGEMESH_ERR_NULL);
    EXPECT_MESSAGE("name is NULL");
    EXPECT(pagemesh_remove(NULL, "zero"), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_remove(c, NULL), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_stat(NULL, "zero", &st), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_stat(c, NULL, &st), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_stat(c, "zero", NULL), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_sync(NULL, "zero", &n), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_sync(c, NULL, &n), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_pin(NULL, "zero", 0, 4096, &n), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_pin(c, NULL, 0, 4096, &n), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_unpin(NULL, "zero", 0, 4096, &n), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_unpin(c, NULL, 0, 4096, &n), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_segment_read(NULL, "zero", 0, buf, 8), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_segment_read(c, NULL, 0, buf, 8), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_segment_read(c, "zero", 0, NULL, 8), PAGEMESH_ERR_NULL);
    EXPECT_MESSAGE("buf is NULL");
    EXPECT(pagemesh_segment_write(NULL, "zero", 0, buf, 8), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_segment_write(c, NULL, 0, buf, 8), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_segment_write(c, "zero", 0, NULL, 8), PAGEMESH_ERR_NULL);
    EXPECT_MESSAGE("data is NULL");
    EXPECT(pagemesh_barrier(NULL, "zero", 0, 2, 100, &n), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_barrier(c, NULL, 0, 2, 100, &n), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_lock(NULL, "zero", 0, 100), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_lock(c, NULL, 0, 100), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_unlock(NULL, "zero", 0), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_unlock(c, NULL, 0), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_attach(NULL, "zero", &mout), PAGEMESH_ERR_NULL);
    CHECK(mout == NULL); /* an output is cleared on failure */
    EXPECT(pagemesh_attach(c, NULL, &mout), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_attach(c, "zero", NULL), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_detach(NULL), PAGEMESH_ERR_NULL);
    EXPECT_MESSAGE("mapping is NULL");
    CHECK(pagemesh_length(NULL) == 0);
    EXPECT_MESSAGE("mapping is NULL");
    CHECK(pagemesh_base(NULL) == NULL);
    EXPECT_MESSAGE("mapping is NULL");
    EXPECT(pagemesh_read_at(NULL, 0, buf, 8), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_read_at(m, 0, NULL, 8), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_write_at(NULL, 0, buf, 8), PAGEMESH_ERR_NULL);
    EXPECT(pagemesh_write_at(m, 0, NULL, 8), PAGEMESH_ERR_NULL);
    (void)cout;
}

static void connecting(void) {
    pagemesh_client *c = (pagemesh_client *)1;
    EXPECT(pagemesh_connect("/nonexistent/pagemesh.sock", &c), PAGEMESH_ERR_CONNECT);
    EXPECT_MESSAGE("cannot connect");
    CHECK(c == NULL);
    /* NULL: $PAGEMESH_SOCKET. */
    CHECK(setenv("PAGEMESH_SOCKET", sock, 1) == 0);
    EXPECT(pagemesh_connect(NULL, &c), PAGEMESH_OK);
    CHECK(c != NULL);
    EXPECT(pagemesh_disconnect(c), PAGEMESH_OK);
}

static void creating(pagemesh_client *c) {
    EXPECT(pagemesh_create(c, "zero", ZERO_SIZE, NULL), PAGEMESH_OK);
    EXPECT(pagemesh_create(c, "zero", ZERO_SIZE, NULL), PAGEMESH_ERR_EXISTS);
    EXPECT_MESSAGE("already exists");
    EXPECT(pagemesh_create(c, "bad name!", 4096, NULL), PAGEMESH_ERR_INVALID);
    EXPECT(pagemesh_create(c, "\xff\xfe", 4096, NULL), PAGEMESH_ERR_INVALID);
    EXPECT_MESSAGE("not UTF-8");
    EXPECT(pagemesh_create(c, "empty", 0, NULL), PAGEMESH_ERR_INVALID);
    EXPECT_MESSAGE("at least one byte");
    EXPECT(pagemesh_create(c, "nofile", 0, "no-such-file.img"), PAGEMESH_ERR_INVALID);

    /* A file segment from a relative path: bytes i % 251, the file's size. */
    unsigned char data[FILE_SIZE];
    for (int i = 0; i < FILE_SIZE; i++) data[i] = (unsigned char)(i % 251);
    int fd = open("file.img", O_CREAT | O_TRUNC | O_WRONLY, 0644);
    CHECK(fd >= 0 && write(fd, data, FILE_SIZE) == FILE_SIZE && close(fd) == 0);
    EXPECT(pagemesh_create(c, "file", 0, "file.img"), PAGEMESH_OK);

    pagemesh_segment_stat st;
    EXPECT(pagemesh_stat(c, "file", &st), PAGEMESH_OK);
    CHECK(st.size_bytes == FILE_SIZE && st.backing == PAGEMESH_BACKING_FILE);
    CHECK(st.home_node == -1 && st.attached_clients == 0);
    EXPECT(pagemesh_stat(c, "zero", &st), PAGEMESH_OK);
    CHECK(st.size_bytes == ZERO_SIZE && st.backing == PAGEMESH_BACKING_ZERO);
    EXPECT(pagemesh_stat(c, "nope", &st), PAGEMESH_ERR_NOT_FOUND);
}

/* Loads and stores through the base pointer, and the copies in and out. */
static void memory(pagemesh_client *c, pagemesh_mapping *m) {
    char buf[16];
    unsigned char *base = pagemesh_base(m);
    CHECK(base != NULL);
    CHECK(pagemesh_length(m) == ZERO_SIZE);
    for (int i = 0; i < ZERO_SIZE; i += 4096) CHECK(base[i] == 0); /* dormant: zeros */
    memset(base, 0xab, 4096);
    EXPECT(pagemesh_read_at(m, 100, buf, 16), PAGEMESH_OK);
    for (int i = 0; i < 16; i++) CHECK((unsigned char)buf[i] == 0xab);
    EXPECT(pagemesh_write_at(m, 3 * 4096 + 5, "hello", 5), PAGEMESH_OK);
    CHECK(memcmp(base + 3 * 4096 + 5, "hello", 5) == 0);
    EXPECT(pagemesh_read_at(m, ZERO_SIZE - 1, buf, 1), PAGEMESH_OK);
    EXPECT(pagemesh_read_at(m, 0, buf, 0), PAGEMESH_OK);

    EXPECT(pagemesh_read_at(m, ZERO_SIZE - 1, buf, 2), PAGEMESH_ERR_RANGE);
    EXPECT_MESSAGE("outside");
    EXPECT(pagemesh_read_at(m, UINT64_MAX, buf, 1), PAGEMESH_ERR_RANGE);
    EXPECT(pagemesh_write_at(m, ZERO_SIZE, "x", 1), PAGEMESH_ERR_RANGE);
    EXPECT(pagemesh_read_at(m, 0, base + 8, 8), PAGEMESH_ERR_INVALID);
    EXPECT_MESSAGE("overlaps");
    EXPECT(pagemesh_write_at(m, 4096, base, 8), PAGEMESH_ERR_INVALID);

    /* Segment I/O through the daemon sees the mapping's bytes, and the mapping sees its. */
    EXPECT(pagemesh_segment_read(c, "zero", 3 * 4096 + 5, buf, 5), PAGEMESH_OK);
    CHECK(memcmp(buf, "hello", 5) == 0);
    EXPECT(pagemesh_segment_write(c, "zero", 2 * 4096, "world", 5), PAGEMESH_OK);
    CHECK(memcmp(base + 2 * 4096, "world", 5) == 0);
    EXPECT(pagemesh_segment_read(c, "nope", 0, buf, 5), PAGEMESH_ERR_NOT_FOUND);
    /* The daemon checks a segment I/O's range: an invalid request. */
    EXPECT(pagemesh_segment_read(c, "zero", ZERO_SIZE - 2, buf, 5), PAGEMESH_ERR_INVALID);
    EXPECT_MESSAGE("outside the segment");
    EXPECT(pagemesh_segment_write(c, "zero", ZERO_SIZE, "x", 1), PAGEMESH_ERR_INVALID);
}

static void pinning(pagemesh_client *c) {
    uint64_t n = 0;
    pagemesh_segment_stat st;
    EXPECT(pagemesh_pin(c, "zero", 0, 2 * 4096, &n), PAGEMESH_OK);
    CHECK(n == 2);
    EXPECT(pagemesh_stat(c, "zero", &st), PAGEMESH_OK);
    CHECK(st.pinned_pages == 2 && st.attached_clients == 1 && st.resident_pages >= 4);
    EXPECT(pagemesh_unpin(c, "zero", 0, 2 * 4096, NULL), PAGEMESH_OK);
    EXPECT(pagemesh_stat(c, "zero", &st), PAGEMESH_OK);
    CHECK(st.pinned_pages == 0);
    EXPECT(pagemesh_pin(c, "zero", ZERO_SIZE, 4096, &n), PAGEMESH_ERR_INVALID);
    EXPECT_MESSAGE("not inside segment zero");
    EXPECT(pagemesh_unpin(c, "zero", ZERO_SIZE, 4096, &n), PAGEMESH_ERR_INVALID);
    EXPECT(pagemesh_pin(c, "nope", 0, 4096, &n), PAGEMESH_ERR_NOT_FOUND);
}

/* Write a page of the file segment through memory; sync puts it in the file. */
static void syncing(pagemesh_client *c) {
    pagemesh_mapping *f;
    EXPECT(pagemesh_attach(c, "file", &f), PAGEMESH_OK);
    unsigned char *base = pagemesh_base(f);
    for (int i = 0; i < FILE_SIZE; i += 997) CHECK(base[i] == (unsigned char)(i % 251));
    memcpy(base + 4096, "synced!", 7);
    uint64_t written = 0;
    EXPECT(pagemesh_sync(c, "file", &written), PAGEMESH_OK);
    CHECK(written >= 1);
    char back[7];
    int fd = open("file.img", O_RDONLY);
    CHECK(fd >= 0 && pread(fd, back, 7, 4096) == 7 && close(fd) == 0);
    CHECK(memcmp(back, "synced!", 7) == 0);
    EXPECT(pagemesh_sync(c, "file", NULL), PAGEMESH_OK);
    EXPECT(pagemesh_sync(c, "nope", NULL), PAGEMESH_ERR_NOT_FOUND);
    EXPECT(pagemesh_sync(c, "zero", &written), PAGEMESH_OK); /* no file: nothing written */
    CHECK(written == 0);
    EXPECT(pagemesh_detach(f), PAGEMESH_OK);
}

static void not_a_cluster(pagemesh_client *c) {
    uint64_t round;
    EXPECT(pagemesh_barrier(c, "zero", 0, 2, 100, &round), PAGEMESH_ERR_INVALID);
    EXPECT_MESSAGE("not part of a cluster");
    EXPECT(pagemesh_lock(c, "zero", 0, 100), PAGEMESH_ERR_INVALID);
    EXPECT(pagemesh_unlock(c, "zero", 0), PAGEMESH_ERR_INVALID);
    EXPECT(pagemesh_lock(c, "zero", 0, UINT64_MAX), PAGEMESH_ERR_INVALID);
    EXPECT_MESSAGE("over the limit");
}

/* Threads share a client and a mapping; each thread has its own last error. */
struct worker {
    pagemesh_client *c;
    pagemesh_mapping *m;
    int failed;
};

static void *work(void *arg) {
    struct worker *w = arg;
    uint64_t *counter = (uint64_t *)((char *)pagemesh_base(w->m) + 8 * 4096);
    pagemesh_segment_stat st;
    for (int i = 0; i < 1000; i++) __atomic_fetch_add(counter, 1, __ATOMIC_SEQ_CST);
    if (pagemesh_stat(w->c, "zero", &st) != PAGEMESH_OK) w->failed = 1;
    if (pagemesh_last_error()[0] != '\0') w->failed = 1;
    if (pagemesh_stat(w->c, "nope", &st) != PAGEMESH_ERR_NOT_FOUND) w->failed = 1;
    if (strstr(pagemesh_last_error(), "nope") == NULL) w->failed = 1;
    return NULL;
}

static void threads(pagemesh_client *c, pagemesh_mapping *m) {
    pthread_t t[4];
    struct worker w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){c, m, 0};
        CHECK(pthread_create(&t[i], NULL, work, &w[i]) == 0);
    }
    for (int i = 0; i < 4; i++) CHECK(pthread_join(t[i], NULL) == 0 && !w[i].failed);
    uint64_t total = 0;
    EXPECT(pagemesh_read_at(m, 8 * 4096, &total, sizeof total), PAGEMESH_OK);
    CHECK(total == 4000);
}

static void removing(pagemesh_client *c, pagemesh_mapping *m) {
    pagemesh_mapping *again = (pagemesh_mapping *)1;
    EXPECT(pagemesh_remove(c, "zero"), PAGEMESH_ERR_IN_USE);
    EXPECT_MESSAGE("is attached");
    EXPECT(pagemesh_detach(m), PAGEMESH_OK);
    EXPECT(pagemesh_remove(c, "zero"), PAGEMESH_OK);
    EXPECT(pagemesh_remove(c, "zero"), PAGEMESH_ERR_NOT_FOUND);
    EXPECT(pagemesh_attach(c, "zero", &again), PAGEMESH_ERR_NOT_FOUND);
    CHECK(again == NULL);
}

/* A mapping outlives the client it was attached through. */
static void outliving(void) {
    pagemesh_client *c;
    pagemesh_mapping *f;
    EXPECT(pagemesh_connect(sock, &c), PAGEMESH_OK);
    EXPECT(pagemesh_attach(c, "file", &f), PAGEMESH_OK);
    EXPECT(pagemesh_disconnect(c), PAGEMESH_OK);
    CHECK(memcmp((char *)pagemesh_base(f) + 4096, "synced!", 7) == 0);
    EXPECT(pagemesh_detach(f), PAGEMESH_OK);
}

static void names(void) {
    CHECK(strcmp(pagemesh_strerror(PAGEMESH_OK), "PAGEMESH_OK") == 0);
    CHECK(strcmp(pagemesh_strerror(PAGEMESH_ERR_RANGE), "PAGEMESH_ERR_RANGE") == 0);
    CHECK(strcmp(pagemesh_strerror(PAGEMESH_ERR_INTERNAL), "PAGEMESH_ERR_INTERNAL") == 0);
    CHECK(strcmp(pagemesh_strerror(PAGEMESH_ERR_BUSY), "PAGEMESH_ERR_BUSY") == 0);
    CHECK(strcmp(pagemesh_strerror(PAGEMESH_ERR_IN_USE), "PAGEMESH_ERR_IN_USE") == 0);
    CHECK(strcmp(pagemesh_strerror(42), "unknown pagemesh status") == 0);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s SOCKET WORKDIR\n", argv[0]);
        return 2;
    }
    sock = argv[1];
    CHECK(chdir(argv[2]) == 0);
    CHECK(pagemesh_last_error() != NULL && pagemesh_last_error()[0] == '\0');
    names();
    connecting();
    pagemesh_client *c;
    EXPECT(pagemesh_connect(sock, &c), PAGEMESH_OK);
    creating(c);
    pagemesh_mapping *m;
    EXPECT(pagemesh_attach(c, "zero", &m), PAGEMESH_OK);
    null_arguments(c, m);
    memory(c, m);
    pinning(c);
    syncing(c);
    not_a_cluster(c);
    threads(c, m);
    removing(c, m);
    outliving();
    EXPECT(pagemesh_disconnect(c), PAGEMESH_OK);
    printf("api: all checks passed\n");
    return 0;
}
