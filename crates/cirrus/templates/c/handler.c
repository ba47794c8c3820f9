/* {{name}}: a Cirrus function in C. Edit handle(): a request comes in, a response
 * goes out. */
#include "cirrus.h"

cirrus_response handle(const cirrus_request *request) {
    static char text[512];
    const char *name = request->body_len ? request->body : "world";
    snprintf(text, sizeof text, "Hello, %s! (%s %s)\n", name, request->method, request->path);
    /* stderr is the function's log (`cirrus logs`, `cirrus dev`). */
    fprintf(stderr, "handled %s %s\n", request->method, request->path);
    return (cirrus_response){200, "text/plain; charset=utf-8", text, 0};
}
