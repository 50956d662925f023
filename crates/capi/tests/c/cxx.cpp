// pagemesh.h from C++: it compiles, links and behaves (no daemon needed).
#include <pagemesh.h>

#include <cstdio>
#include <cstring>

int main() {
    pagemesh_client *c = nullptr;
    pagemesh_status s = pagemesh_connect("/nonexistent/pagemesh.sock", &c);
    if (s != PAGEMESH_ERR_CONNECT || c != nullptr) return 1;
    if (std::strcmp(pagemesh_strerror(s), "PAGEMESH_ERR_CONNECT") != 0) return 1;
    if (std::strstr(pagemesh_last_error(), "cannot connect") == nullptr) return 1;
    if (pagemesh_length(nullptr) != 0 || pagemesh_base(nullptr) != nullptr) return 1;
    pagemesh_segment_stat st{};
    if (pagemesh_stat(nullptr, "x", &st) != PAGEMESH_ERR_NULL) return 1;
    std::printf("c++: all checks passed\n");
    return 0;
}
