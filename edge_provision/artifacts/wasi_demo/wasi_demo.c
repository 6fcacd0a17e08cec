/*
 * wasi_demo: the sample WebAssembly workload of edge-provision.
 *
 * A WASI "command" that touches each capability a Wasm runtime on an edge node has to
 * wire up, and says so on one line each, so a test (or an operator reading
 * `kubectl logs`) can check them all:
 *
 *   stdout  Random number: <unsigned 32-bit decimal>         (wasi random_get)
 *   stdout  Random bytes: [<b>, <b>, ... 16 bytes]            (wasi random_get)
 *   stdout  Printed from wasi: This is from a main function   (fd 1)
 *   stderr  This is from a main function                      (fd 2)
 *   stdout  The env vars are as follows.
 *   stdout  <NAME>: <value>                 one line per variable, in the runtime's order
 *   stdout  The args are as follows.
 *   stdout  <arg>                           one line per argv entry, argv[0] first
 *   stdout  File content is This is in a file                 (write, close, reopen, read)
 *
 * The file written and read back is /tmp.txt in the preopened root directory (the
 * container's rootfs under crun/WasmEdge), or the path in WASI_DEMO_FILE when set.
 * It is removed again afterwards. Exit status 0 on success; on any failure one line
 * "wasi_demo: <what>: <error>" on stderr and a non-zero status.
 *
 * Long-running mode (the sample Deployment): with WASI_DEMO_HEARTBEAT_SECONDS=<n> (1..86400)
 * the demo does not exit after its lines but prints
 *
 *   stdout  Heartbeat <k>                   k = 1, 2, ... every n seconds (wasi poll_oneoff)
 *
 * forever, the first one at once. Any other value is an error (exit 2), so a typo in a
 * manifest shows as a crash loop rather than a pod that quietly completes.
 *
 * Build (Debian: clang lld wasi-libc libclang-rt-14-dev-wasm32):
 *   clang --target=wasm32-wasi --sysroot=/usr/share/wasi-sysroot -O2 -Wall -Wextra \
 *         -o wasi_demo.wasm wasi_demo.c
 */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GREETING "This is from a main function"
#define FILE_TEXT "This is in a file"
#define DEFAULT_FILE "/tmp.txt"
#define N_RANDOM_BYTES 16

extern char **environ;

static int fail(const char *what) {
    int saved = errno;
    fflush(stdout);
    fprintf(stderr, "wasi_demo: %s: %s\n", what, strerror(saved));
    return 1;
}

static int show_random(void) {
    uint32_t number;
    unsigned char bytes[N_RANDOM_BYTES];

    /* getentropy() is wasi-libc's thin wrapper of the random_get host call. */
    if (getentropy(&number, sizeof number) != 0)
        return fail("random number");
    if (getentropy(bytes, sizeof bytes) != 0)
        return fail("random bytes");

    printf("Random number: %lu\n", (unsigned long)number);
    fputs("Random bytes: [", stdout);
    for (size_t i = 0; i < sizeof bytes; i++)
        printf(i ? ", %u" : "%u", (unsigned)bytes[i]);
    fputs("]\n", stdout);
    return 0;
}

static void show_environment(void) {
    puts("The env vars are as follows.");
    for (char **entry = environ; entry && *entry; entry++) {
        const char *eq = strchr(*entry, '=');
        if (eq)
            printf("%.*s: %s\n", (int)(eq - *entry), *entry, eq + 1);
        else
            printf("%s: \n", *entry);
    }
}

static void show_arguments(int argc, char **argv) {
    puts("The args are as follows.");
    for (int i = 0; i < argc; i++)
        puts(argv[i]);
}

static int round_trip_file(void) {
    const char *path = getenv("WASI_DEMO_FILE");
    char buf[64];
    size_t got;
    FILE *f;

    if (!path || !*path)
        path = DEFAULT_FILE;

    f = fopen(path, "w");
    if (!f)
        return fail(path);
    if (fputs(FILE_TEXT, f) == EOF) {
        fclose(f);
        return fail("write");
    }
    if (fclose(f) != 0)
        return fail("close after write");

    f = fopen(path, "r");
    if (!f)
        return fail(path);
    got = fread(buf, 1, sizeof buf - 1, f);
    if (ferror(f)) {
        fclose(f);
        return fail("read");
    }
    fclose(f);
    buf[got] = '\0';

    printf("File content is %s\n", buf);
    if (remove(path) != 0)
        return fail("remove");
    return 0;
}

/* 0: no heartbeat (unset or empty); -1: invalid; else the interval in seconds. */
static long heartbeat_seconds(void) {
    const char *text = getenv("WASI_DEMO_HEARTBEAT_SECONDS");
    char *end;
    long seconds;

    if (!text || !*text)
        return 0;
    errno = 0;
    seconds = strtol(text, &end, 10);
    if (errno || *end || seconds < 1 || seconds > 86400)
        return -1;
    return seconds;
}

static int heartbeat(long seconds) {
    for (unsigned long beat = 1;; beat++) {
        printf("Heartbeat %lu\n", beat);
        if (fflush(stdout) != 0)
            return fail("heartbeat");
        /* wasi-libc's sleep() is one poll_oneoff clock subscription. */
        sleep((unsigned)seconds);
    }
}

int main(int argc, char **argv) {
    long interval = heartbeat_seconds();

    if (interval < 0) {
        fprintf(stderr, "wasi_demo: WASI_DEMO_HEARTBEAT_SECONDS must be 1..86400, not %s\n",
                getenv("WASI_DEMO_HEARTBEAT_SECONDS"));
        return 2;
    }

    if (show_random() != 0)
        return 1;

    printf("Printed from wasi: %s\n", GREETING);
    fflush(stdout);
    fprintf(stderr, "%s\n", GREETING);

    show_environment();
    show_arguments(argc, argv);
    fflush(stdout);

    if (round_trip_file() != 0)
        return 1;
    if (interval > 0)
        return heartbeat(interval);
    return fflush(stdout) == 0 ? 0 : 1;
}
