/* cirrus.h: the glue between Cirrus and your handler. Cirrus runs a C function as a
 * WASI command module, CGI-style: the request body on stdin, its method, path and query
 * in the environment, the response on stdout. This header reads all that into a
 * cirrus_request, calls your handle(), and writes its cirrus_response. */
#ifndef CIRRUS_H
#define CIRRUS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *method; /* GET, POST, … */
    const char *path;   /* below the function: /fn/NAME/a/b arrives as /a/b */
    const char *query;  /* without the '?' */
    const char *body;   /* the request body, NUL-terminated for convenience */
    size_t body_len;
} cirrus_request;

typedef struct {
    int status;
    const char *content_type;
    const char *body;
    size_t body_len; /* 0: strlen(body) */
} cirrus_response;

/* Yours: a request in, a response out. */
cirrus_response handle(const cirrus_request *request);

static const char *cirrus_env(const char *name, const char *fallback) {
    const char *value = getenv(name);
    return value ? value : fallback;
}

int main(void) {
    size_t cap = 4096, len = 0;
    char *body = malloc(cap + 1);
    size_t n;
    while (body && (n = fread(body + len, 1, cap - len, stdin)) > 0) {
        len += n;
        if (len == cap) {
            cap *= 2;
            body = realloc(body, cap + 1);
        }
    }
    if (!body) {
        fputs("out of memory\n", stderr);
        return 1;
    }
    body[len] = '\0';
    cirrus_request request = {
        cirrus_env("REQUEST_METHOD", "GET"), cirrus_env("PATH_INFO", "/"),
        cirrus_env("QUERY_STRING", ""), body, len,
    };
    cirrus_response response = handle(&request);
    size_t out = response.body_len ? response.body_len
                                    : (response.body ? strlen(response.body) : 0);
    printf("Status: %d\nContent-Type: %s\n\n", response.status ? response.status : 200,
           response.content_type ? response.content_type : "text/plain; charset=utf-8");
    if (out) fwrite(response.body, 1, out, stdout);
    return 0;
}

#endif
