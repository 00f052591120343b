/* The least a VMM's API can do: bind the Unix socket given after
 * --api-sock, then answer every connection's first request with a fixed
 * 200 and close it. bench/compare.py --floor times it the way it times the
 * VMMs, which shows how much of "start -> API" and "GET / latency" is the
 * client, the kernel and exec rather than the VMM. */
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static const char answer[] =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";

int main(int argc, char **argv) {
    const char *path = NULL;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--api-sock")) path = argv[i + 1];
    if (!path) return 2;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) ||
        listen(listener, 128))
        return 1;
    char buf[4096];
    for (;;) {
        int c = accept(listener, NULL, NULL);
        if (c < 0) continue;
        size_t got = 0;
        while (got < sizeof buf - 1) {
            ssize_t n = read(c, buf + got, sizeof buf - 1 - got);
            if (n <= 0) break;
            got += (size_t)n;
            buf[got] = 0;
            if (strstr(buf, "\r\n\r\n")) {
                if (write(c, answer, sizeof answer - 1) < 0) break;
                break;
            }
        }
        close(c);
    }
}
