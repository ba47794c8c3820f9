/*
 * hello-c: a minimal Cirrus function written in C.
 *
 * Contract (WASI preview 1 command module, CGI-style):
 *   stdin   - the event / request body
 *   stdout  - the response body
 *   stderr  - logs
 *   env     - CIRRUS_FUNCTION, CIRRUS_REQUEST_ID, REQUEST_METHOD,
 *             PATH_INFO, QUERY_STRING
 *   exit 0  - success
 */
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    char buf[4096];
    size_t total = 0, n;

    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0)
        total += n;

    fputs("Hello from Cirrus (C)!\n", stdout);
    if (total > 0)
        printf("You sent %zu bytes.\n", total);
    if (fflush(stdout) != 0)
        return 1;

    const char *req = getenv("CIRRUS_REQUEST_ID");
    fprintf(stderr, "hello-c: handled %s\n", req && *req ? req : "-");
    return 0;
}
