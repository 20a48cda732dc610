/* count: a proxy-wasm 0.2.0 network filter in plain C (no libc): counts the
 * bytes each session sends both ways and logs them when the client's side
 * closes. Built with Debian's clang for --target=wasm32 (see build.sh). */

#define IMPORT(name) __attribute__((import_module("env"), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))

IMPORT("proxy_log") int proxy_log(int level, const char *msg, int len);

EXPORT("proxy_abi_version_0_2_0") void abi(void) {}

/* The host allocates through this to hand bytes over; this filter asks for
 * none, so a small bump area is enough. */
static unsigned char heap[4096];
static unsigned int top;
EXPORT("malloc") void *alloc(int n) {
    if (n <= 0 || (unsigned int)n > sizeof heap) return 0;
    if (top + (unsigned int)n > sizeof heap) top = 0;
    void *p = heap + top;
    top += ((unsigned int)n + 7u) & ~7u;
    return p;
}

#define SLOTS 1024
static struct { int ctx; unsigned long long down, up; } table[SLOTS];

static int slot(int ctx) { return (unsigned int)ctx % SLOTS; }

EXPORT("proxy_on_context_create") void on_context_create(int ctx, int root) {
    if (root == 0) return;
    int s = slot(ctx);
    table[s].ctx = ctx;
    table[s].down = 0;
    table[s].up = 0;
}

EXPORT("proxy_on_downstream_data") int on_downstream_data(int ctx, int size, int eos) {
    (void)eos;
    int s = slot(ctx);
    if (table[s].ctx == ctx) table[s].down += (unsigned int)size;
    return 0;
}

EXPORT("proxy_on_upstream_data") int on_upstream_data(int ctx, int size, int eos) {
    (void)eos;
    int s = slot(ctx);
    if (table[s].ctx == ctx) table[s].up += (unsigned int)size;
    return 0;
}

static char *put(char *p, const char *s) {
    while (*s) *p++ = *s++;
    return p;
}

static char *num(char *p, unsigned long long v) {
    char tmp[24];
    int n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) *p++ = tmp[--n];
    return p;
}

EXPORT("proxy_on_downstream_connection_close") void on_downstream_close(int ctx, int peer) {
    int s = slot(ctx);
    if (table[s].ctx != ctx) return;
    char line[96];
    char *p = put(line, "count: down=");
    p = num(p, table[s].down);
    p = put(p, " up=");
    p = num(p, table[s].up);
    p = put(p, " peer=");
    p = num(p, (unsigned int)peer);
    proxy_log(2, line, (int)(p - line));
}

EXPORT("proxy_on_done") int on_done(int ctx) { (void)ctx; return 1; }

EXPORT("proxy_on_delete") void on_delete(int ctx) {
    int s = slot(ctx);
    if (table[s].ctx == ctx) table[s].ctx = 0;
}
