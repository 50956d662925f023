/* The daemon goes away under an attached segment: calls fail with PAGEMESH_ERR_CONNECT, and
 * the next access to a page not yet in this process raises SIGBUS (never zeros, never a hang).
 * Usage: gone SOCKET. Prints "attached", waits for a line on stdin (the daemon is killed
 * meanwhile), then touches the segment: it should die of SIGBUS. */
#include <stdint.h>

#include "check.h"

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s SOCKET\n", argv[0]);
        return 2;
    }
    pagemesh_client *c;
    pagemesh_mapping *m;
    EXPECT(pagemesh_connect(argv[1], &c), PAGEMESH_OK);
    EXPECT(pagemesh_create(c, "gone", 1 << 20, NULL), PAGEMESH_OK);
    EXPECT(pagemesh_attach(c, "gone", &m), PAGEMESH_OK);
    volatile unsigned char *base = pagemesh_base(m);
    base[0] = 1;
    printf("attached\n");
    fflush(stdout);

    char line[16];
    CHECK(fgets(line, sizeof line, stdin) != NULL);
    pagemesh_segment_stat st;
    EXPECT(pagemesh_stat(c, "gone", &st), PAGEMESH_ERR_CONNECT);
    printf("stat after the daemon died: %s\n", pagemesh_strerror(PAGEMESH_ERR_CONNECT));
    fflush(stdout);
    /* A page this process never touched. */
    unsigned char v = base[5 * 4096];
    printf("read %u from a segment whose daemon is gone: no SIGBUS\n", v);
    return 3;
}
