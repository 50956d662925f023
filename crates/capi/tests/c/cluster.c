/* Barriers and locks of a cluster segment (a one-node cluster), with their error paths.
 * Usage: cluster SOCKET. Prints "cluster: all checks passed" and exits 0. */
#include <pthread.h>
#include <stdint.h>

#include "check.h"

static const char *sock;

struct party {
    uint64_t round[2];
    int status[2];
};

/* One process's worth of a barrier party: its own client (a wait holds its client). */
static void *arrive(void *arg) {
    struct party *p = arg;
    pagemesh_client *c;
    if (pagemesh_connect(sock, &c) != PAGEMESH_OK) {
        p->status[0] = p->status[1] = -100;
        return NULL;
    }
    for (int i = 0; i < 2; i++) p->status[i] = pagemesh_barrier(c, "grid", 1, 2, 20000, &p->round[i]);
    pagemesh_disconnect(c);
    return NULL;
}

static void barriers(pagemesh_client *c) {
    pthread_t t[2];
    struct party p[2] = {{{0, 0}, {0, 0}}, {{0, 0}, {0, 0}}};
    for (int i = 0; i < 2; i++) CHECK(pthread_create(&t[i], NULL, arrive, &p[i]) == 0);
    for (int i = 0; i < 2; i++) CHECK(pthread_join(t[i], NULL) == 0);
    for (int i = 0; i < 2; i++) {
        CHECK(p[i].status[0] == PAGEMESH_OK && p[i].status[1] == PAGEMESH_OK);
        CHECK(p[i].round[0] == 1 && p[i].round[1] == 2);
    }
    uint64_t round = 0;
    EXPECT(pagemesh_barrier(c, "grid", 2, 2, 300, &round), PAGEMESH_ERR_TIMED_OUT);
    EXPECT_MESSAGE("parties");
    EXPECT(pagemesh_barrier(c, "grid", 2, 2, UINT64_MAX, NULL), PAGEMESH_ERR_INVALID);
    EXPECT(pagemesh_barrier(c, "nope", 2, 2, 300, NULL), PAGEMESH_ERR_NOT_FOUND);
}

static void locks(pagemesh_client *c) {
    pagemesh_client *other;
    EXPECT(pagemesh_connect(sock, &other), PAGEMESH_OK);
    EXPECT(pagemesh_lock(c, "grid", 7, 5000), PAGEMESH_OK);
    EXPECT(pagemesh_lock(c, "grid", 7, 5000), PAGEMESH_ERR_INVALID);
    EXPECT_MESSAGE("already held");
    EXPECT(pagemesh_lock(other, "grid", 7, 300), PAGEMESH_ERR_TIMED_OUT);
    EXPECT(pagemesh_unlock(c, "grid", 7), PAGEMESH_OK);
    EXPECT(pagemesh_lock(other, "grid", 7, 5000), PAGEMESH_OK);
    /* Disconnecting releases what the client held. */
    EXPECT(pagemesh_disconnect(other), PAGEMESH_OK);
    EXPECT(pagemesh_lock(c, "grid", 7, 5000), PAGEMESH_OK);
    EXPECT(pagemesh_unlock(c, "grid", 7), PAGEMESH_OK);
    EXPECT(pagemesh_unlock(c, "grid", 7), PAGEMESH_ERR_INVALID);
    EXPECT(pagemesh_lock(c, "nope", 7, 300), PAGEMESH_ERR_NOT_FOUND);
    EXPECT(pagemesh_lock(c, "grid", 7, UINT64_MAX), PAGEMESH_ERR_INVALID);

    /* A mapping keeps its client's connection, and so the client's locks, until detached. */
    pagemesh_mapping *m;
    EXPECT(pagemesh_connect(sock, &other), PAGEMESH_OK);
    EXPECT(pagemesh_attach(other, "grid", &m), PAGEMESH_OK);
    EXPECT(pagemesh_lock(other, "grid", 8, 5000), PAGEMESH_OK);
    EXPECT(pagemesh_disconnect(other), PAGEMESH_OK);
    EXPECT(pagemesh_lock(c, "grid", 8, 300), PAGEMESH_ERR_TIMED_OUT);
    EXPECT(pagemesh_detach(m), PAGEMESH_OK);
    EXPECT(pagemesh_lock(c, "grid", 8, 5000), PAGEMESH_OK);
    EXPECT(pagemesh_unlock(c, "grid", 8), PAGEMESH_OK);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s SOCKET\n", argv[0]);
        return 2;
    }
    sock = argv[1];
    pagemesh_client *c;
    EXPECT(pagemesh_connect(sock, &c), PAGEMESH_OK);
    EXPECT(pagemesh_create(c, "grid", 64 * 1024, NULL), PAGEMESH_OK);
    pagemesh_segment_stat st;
    EXPECT(pagemesh_stat(c, "grid", &st), PAGEMESH_OK);
    CHECK(st.home_node == 1 && st.size_bytes == 64 * 1024);
    EXPECT(pagemesh_pin(c, "grid", 0, 4096, NULL), PAGEMESH_ERR_INVALID);
    EXPECT_MESSAGE("not available on cluster segments");
    barriers(c);
    locks(c);
    EXPECT(pagemesh_disconnect(c), PAGEMESH_OK);
    printf("cluster: all checks passed\n");
    return 0;
}
