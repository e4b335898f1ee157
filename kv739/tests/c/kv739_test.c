/*
 * kv739_test: drives libkv739 against running meshkv servers.
 *
 *   kv739_test chain NAME SERVER...        old/new chain through different servers,
 *                                          not-found, limits, NULLs, fail/recover
 *   kv739_test writer NAME N SERVER...     puts NAME-(i%4) = "i" for i in 0..N and
 *                                          checks each old value
 *   kv739_test reader NAME N SERVER...     reads NAME-0..3 until it has seen the
 *                                          writer's last values; no value may go back
 *   kv739_test failover SERVER...          (server 0 killed) puts and gets still work
 *   kv739_test empty-terminator A B        init with {A, "", B, garbage, NULL}
 *
 * SERVER... is passed to kv739_init as it is (argv is NULL-terminated): an empty
 * argument ends the list, and whatever follows it must not be used.
 * Prints "ok NAME" or "FAIL NAME: why" per check on stdout; exits 1 on any
 * failure, 2 on a usage error. With MESHKV_CONSISTENCY=session, replication is
 * given a bounded time where the session level allows it to lag.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kv739.h"

#define KEYS 4         /* keys of the writer and reader */
#define DEADLINE_MS 60000

static int failures = 0;

static void ok(const char *name) {
    printf("ok %s\n", name);
    fflush(stdout);
}

static void fail(const char *name, const char *fmt, ...) {
    va_list ap;
    printf("FAIL %s: ", name);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    failures++;
}

#define CHECK(name, cond, ...)          \
    do {                                \
        if (cond)                       \
            ok(name);                   \
        else                            \
            fail(name, __VA_ARGS__);    \
    } while (0)

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* Entries before the first NULL or empty string. */
static int count_servers(char **list) {
    int n = 0;
    while (list[n] != NULL && list[n][0] != '\0')
        n++;
    return n;
}

static int session_level(void) {
    const char *c = getenv("MESHKV_CONSISTENCY");
    return c != NULL && strcmp(c, "session") == 0;
}

/* kv739_get until it returns 0 with `want`, for at most `ms` (once when ms == 0).
 * Returns the last rc; `value` holds the last value read. */
static int get_until(char *key, const char *want, char *value, long ms) {
    long long deadline = now_ms() + ms;
    for (;;) {
        int rc = kv739_get(key, value);
        if ((rc == 0 && strcmp(value, want) == 0) || now_ms() >= deadline)
            return rc;
        sleep_ms(20);
    }
}

static int chain(const char *name, char **list) {
    int n = count_servers(list);
    if (n < 2) {
        fprintf(stderr, "chain needs at least two servers\n");
        return 2;
    }
    char *a = list[0], *b = list[1], *c = list[n >= 3 ? 2 : 1];
    /* At the session level replication may lag (the token makes the servers wait
     * for it, but allow a bounded retry); at the default level it may not. */
    long grace = session_level() ? 10000 : 0;
    char key[256], missing[256], value[KV739_MAX_VALUE + 1], old[KV739_MAX_VALUE + 1];
    snprintf(key, sizeof key, "%s-chain", name);
    snprintf(missing, sizeof missing, "%s-never-written", name);

    CHECK("get-before-init", kv739_get(key, value) == -1, "expected -1");
    CHECK("put-before-init", kv739_put(key, "v", old) == -1, "expected -1");
    char *none[] = {NULL};
    char *empty[] = {"", NULL};
    char *junk[] = {"not-a-server", NULL};
    CHECK("init-empty-list", kv739_init(none) == -1, "expected -1");
    CHECK("init-empty-string-first", kv739_init(empty) == -1, "expected -1");
    CHECK("init-unparsable", kv739_init(junk) == -1, "expected -1");
    CHECK("init-null", kv739_init(NULL) == -1, "expected -1");
    int rc = kv739_init(list);
    CHECK("init", rc == 0, "rc %d", rc);
    if (rc != 0)
        return 1;

    /* Pin to A. */
    int pinned = 1;
    for (int i = 1; i < n; i++)
        pinned &= kv739_fail(list[i]) == 0;
    CHECK("pin-to-A", pinned, "kv739_fail of a listed server failed");
    strcpy(old, "garbage");
    rc = kv739_put(key, "v1", old);
    CHECK("put-v1-through-A-new-key", rc == 1 && old[0] == '\0', "rc %d old \"%s\"", rc, old);
    rc = kv739_get(key, value);
    CHECK("get-v1-through-A", rc == 0 && strcmp(value, "v1") == 0, "rc %d value \"%s\"", rc,
          value);

    /* Move to B. */
    CHECK("move-to-B", kv739_recover(b) == 0 && kv739_fail(a) == 0, "recover/fail failed");
    if (grace > 0) {
        rc = get_until(key, "v1", value, grace);
        CHECK("v1-reached-B", rc == 0 && strcmp(value, "v1") == 0, "rc %d value \"%s\"", rc,
              value);
    }
    strcpy(old, "garbage");
    rc = kv739_put(key, "v2", old);
    CHECK("put-v2-through-B-old-is-v1", rc == 0 && strcmp(old, "v1") == 0,
          "rc %d old \"%s\"", rc, old);

    /* Read through C. */
    if (c != b) {
        CHECK("move-to-C", kv739_recover(c) == 0 && kv739_fail(b) == 0, "recover/fail failed");
    }
    rc = get_until(key, "v2", value, grace);
    CHECK("get-v2-through-C", rc == 0 && strcmp(value, "v2") == 0, "rc %d value \"%s\"", rc,
          value);
    rc = kv739_get(missing, value);
    CHECK("get-missing-is-1", rc == 1, "rc %d", rc);

    /* Limits. */
    char key128[KV739_MAX_KEY + 1], key129[KV739_MAX_KEY + 2];
    char val2048[KV739_MAX_VALUE + 1], val2049[KV739_MAX_VALUE + 2];
    int len = snprintf(key128, sizeof key128, "%s-max-", name);
    memset(key128 + len, 'k', KV739_MAX_KEY - len);
    key128[KV739_MAX_KEY] = '\0';
    memset(key129, 'k', KV739_MAX_KEY + 1);
    key129[KV739_MAX_KEY + 1] = '\0';
    memset(val2048, 'v', KV739_MAX_VALUE);
    val2048[KV739_MAX_VALUE] = '\0';
    memset(val2049, 'v', KV739_MAX_VALUE + 1);
    val2049[KV739_MAX_VALUE + 1] = '\0';
    rc = kv739_put(key128, val2048, old);
    CHECK("put-128-byte-key-2048-byte-value", rc == 1, "rc %d", rc);
    rc = kv739_get(key128, value);
    CHECK("get-2048-byte-value", rc == 0 && strcmp(value, val2048) == 0, "rc %d length %zu",
          rc, strlen(value));
    rc = kv739_put(key128, "small", old);
    CHECK("old-value-2048-bytes", rc == 0 && strcmp(old, val2048) == 0, "rc %d length %zu", rc,
          strlen(old));
    CHECK("put-129-byte-key", kv739_put(key129, "v", old) == -1, "expected -1");
    CHECK("get-129-byte-key", kv739_get(key129, value) == -1, "expected -1");
    CHECK("put-2049-byte-value", kv739_put(key, val2049, old) == -1, "expected -1");
    CHECK("put-key-with-[", kv739_put("a[b", "v", old) == -1, "expected -1");
    CHECK("put-key-with-]", kv739_put("a]b", "v", old) == -1, "expected -1");
    CHECK("get-key-with-[", kv739_get("a[b", value) == -1, "expected -1");
    CHECK("put-value-with-[", kv739_put(key, "x[y", old) == -1, "expected -1");
    CHECK("put-value-with-]", kv739_put(key, "x]y", old) == -1, "expected -1");
    CHECK("put-empty-key", kv739_put("", "v", old) == -1, "expected -1");
    rc = kv739_get(key, value);
    CHECK("refused-puts-changed-nothing", rc == 0 && strcmp(value, "v2") == 0,
          "rc %d value \"%s\"", rc, value);

    /* Unknown servers and NULLs. */
    CHECK("fail-unknown-server", kv739_fail("127.0.0.1:1") == -1, "expected -1");
    CHECK("recover-unknown-server", kv739_recover("nowhere:5") == -1, "expected -1");
    CHECK("null-arguments",
          kv739_get(NULL, value) == -1 && kv739_get(key, NULL) == -1 &&
              kv739_put(NULL, "v", old) == -1 && kv739_put(key, NULL, old) == -1 &&
              kv739_put(key, "v", NULL) == -1 && kv739_fail(NULL) == -1 &&
              kv739_recover(NULL) == -1,
          "some call with a NULL did not return -1");

    /* Every server failed: errors; recovered: back through A. */
    for (int i = 0; i < n; i++)
        kv739_fail(list[i]);
    CHECK("all-failed", kv739_get(key, value) == -1 && kv739_put(key, "v3", old) == -1,
          "expected -1 with every server failed");
    int recovered = 1;
    for (int i = 0; i < n; i++)
        recovered &= kv739_recover(list[i]) == 0;
    rc = get_until(key, "v2", value, grace);
    CHECK("recover-all", recovered && rc == 0 && strcmp(value, "v2") == 0,
          "recovered %d rc %d value \"%s\"", recovered, rc, value);

    /* Shutdown and init again. */
    CHECK("shutdown", kv739_shutdown() == 0, "expected 0");
    CHECK("get-after-shutdown", kv739_get(key, value) == -1, "expected -1");
    rc = kv739_init(list);
    CHECK("init-again", rc == 0, "rc %d", rc);
    rc = get_until(key, "v2", value, grace);
    CHECK("get-after-init-again", rc == 0 && strcmp(value, "v2") == 0, "rc %d value \"%s\"", rc,
          value);
    CHECK("final-shutdown", kv739_shutdown() == 0, "expected 0");
    return failures ? 1 : 0;
}

/* The last i < n with i % KEYS == j (n >= KEYS). */
static long final_value(long n, int j) {
    return j + KEYS * ((n - 1 - j) / KEYS);
}

static int writer(const char *name, long n, char **list) {
    if (kv739_init(list) != 0) {
        fail("writer-init", "kv739_init failed");
        return 1;
    }
    char key[256], value[32], old[KV739_MAX_VALUE + 1];
    long errors = 0, wrong_old = 0;
    for (long i = 0; i < n; i++) {
        snprintf(key, sizeof key, "%s-%ld", name, i % KEYS);
        snprintf(value, sizeof value, "%ld", i);
        int rc = kv739_put(key, value, old);
        if (rc == -1) {
            if (errors++ == 0)
                fail("writer-puts", "put %s=%s returned -1", key, value);
            continue;
        }
        /* Each put's old value is this writer's previous value of the key. */
        char want[32];
        snprintf(want, sizeof want, "%ld", i - KEYS);
        int good = i < KEYS ? rc == 1 : rc == 0 && strcmp(old, want) == 0;
        if (!good && wrong_old++ == 0)
            fail("writer-old-values", "put %s=%s: rc %d old \"%s\"", key, value, rc, old);
    }
    if (errors == 0)
        ok("writer-puts");
    if (wrong_old == 0)
        ok("writer-old-values");
    kv739_shutdown();
    return failures ? 1 : 0;
}

static int reader(const char *name, long n, char **list) {
    if (kv739_init(list) != 0) {
        fail("reader-init", "kv739_init failed");
        return 1;
    }
    long last[KEYS];
    for (int j = 0; j < KEYS; j++)
        last[j] = -1;
    char key[256], value[KV739_MAX_VALUE + 1];
    long reads = 0, errors = 0, backwards = 0, garbage = 0;
    long long deadline = now_ms() + DEADLINE_MS;
    int done = 0;
    while (!done && now_ms() < deadline) {
        done = 1;
        for (int j = 0; j < KEYS; j++) {
            snprintf(key, sizeof key, "%s-%d", name, j);
            int rc = kv739_get(key, value);
            reads++;
            if (rc == -1) {
                if (errors++ == 0)
                    fail("reader-gets", "get %s returned -1", key);
            } else if (rc == 1) {
                if (last[j] >= 0 && backwards++ == 0)
                    fail("reader-monotonic", "%s: saw %ld, then not found", key, last[j]);
            } else {
                char *end;
                long v = strtol(value, &end, 10);
                if (*end != '\0' || end == value || v < 0 || v >= n || v % KEYS != j) {
                    if (garbage++ == 0)
                        fail("reader-values", "%s: unexpected value \"%s\"", key, value);
                } else {
                    if (v < last[j] && backwards++ == 0)
                        fail("reader-monotonic", "%s: saw %ld, then %ld", key, last[j], v);
                    if (v > last[j])
                        last[j] = v;
                }
            }
            if (last[j] != final_value(n, j))
                done = 0;
        }
        if (!done)
            sleep_ms(2);
    }
    CHECK("reader-saw-final-values", done, "after %d ms, last values %ld %ld %ld %ld",
          DEADLINE_MS, last[0], last[1], last[2], last[3]);
    if (errors == 0)
        ok("reader-gets");
    if (backwards == 0)
        ok("reader-monotonic");
    if (garbage == 0)
        ok("reader-values");
    kv739_shutdown();
    return failures ? 1 : 0;
}

static int failover(char **list) {
    int rc = kv739_init(list);
    CHECK("failover-init", rc == 0, "rc %d", rc);
    if (rc != 0)
        return 1;
    char key[64], value[32], first[32], old[KV739_MAX_VALUE + 1], got[KV739_MAX_VALUE + 1];
    int puts = 1, gets = 1, overwrites = 1;
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof key, "failover-%d-%d", (int)getpid(), i);
        snprintf(value, sizeof value, "a%d", i);
        strcpy(first, value);
        rc = kv739_put(key, value, old);
        if (rc != 1 && puts) {
            puts = 0;
            fail("failover-puts", "put %s: rc %d", key, rc);
        }
        rc = kv739_get(key, got);
        if ((rc != 0 || strcmp(got, value) != 0) && gets) {
            gets = 0;
            fail("failover-gets", "get %s: rc %d value \"%s\"", key, rc, rc == 0 ? got : "");
        }
        snprintf(value, sizeof value, "b%d", i);
        rc = kv739_put(key, value, old);
        if ((rc != 0 || strcmp(old, first) != 0) && overwrites) {
            overwrites = 0;
            fail("failover-old-values", "put %s: rc %d old \"%s\"", key, rc, rc == 0 ? old : "");
        }
    }
    if (puts)
        ok("failover-puts");
    if (gets)
        ok("failover-gets");
    if (overwrites)
        ok("failover-old-values");
    kv739_shutdown();
    return failures ? 1 : 0;
}

static int empty_terminator(char *a, char *b) {
    /* b is a live server: if the library read past "", the ops after kv739_fail(a)
     * would succeed through it. */
    char *list[] = {a, "", b, "garbage, not an address", NULL};
    int rc = kv739_init(list);
    CHECK("init-stops-at-empty-string", rc == 0, "rc %d", rc);
    if (rc != 0)
        return 1;
    CHECK("entry-after-empty-string-is-unknown", kv739_fail(b) == -1, "kv739_fail(B) != -1");
    char key[64], value[KV739_MAX_VALUE + 1], old[KV739_MAX_VALUE + 1];
    snprintf(key, sizeof key, "empty-terminator-%d", (int)getpid());
    rc = kv739_put(key, "x", old);
    CHECK("put-through-A", rc == 1, "rc %d", rc);
    rc = kv739_get(key, value);
    CHECK("get-through-A", rc == 0 && strcmp(value, "x") == 0, "rc %d", rc);
    CHECK("fail-A", kv739_fail(a) == 0, "kv739_fail(A) != 0");
    CHECK("nothing-after-empty-string-used",
          kv739_get(key, value) == -1 && kv739_put(key, "y", old) == -1,
          "an operation succeeded with A failed");
    CHECK("recover-A", kv739_recover(a) == 0, "kv739_recover(A) != 0");
    rc = kv739_get(key, value);
    CHECK("get-through-A-again", rc == 0 && strcmp(value, "x") == 0, "rc %d", rc);
    CHECK("shutdown", kv739_shutdown() == 0, "expected 0");
    return failures ? 1 : 0;
}

static long parse_count(const char *s) {
    char *end;
    long n = strtol(s, &end, 10);
    return (*end == '\0' && end != s && n >= KEYS && n <= 1000000) ? n : -1;
}

static int usage(void) {
    fprintf(stderr,
            "usage: kv739_test chain NAME SERVER...\n"
            "       kv739_test writer|reader NAME N SERVER...   (N >= %d)\n"
            "       kv739_test failover SERVER...\n"
            "       kv739_test empty-terminator A B\n",
            KEYS);
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 3)
        return usage();
    const char *role = argv[1];
    if (strcmp(role, "chain") == 0 && argc >= 4)
        return chain(argv[2], argv + 3);
    if ((strcmp(role, "writer") == 0 || strcmp(role, "reader") == 0) && argc >= 5) {
        long n = parse_count(argv[3]);
        if (n < 0)
            return usage();
        return role[0] == 'w' ? writer(argv[2], n, argv + 4) : reader(argv[2], n, argv + 4);
    }
    if (strcmp(role, "failover") == 0)
        return failover(argv + 2);
    if (strcmp(role, "empty-terminator") == 0 && argc == 4)
        return empty_terminator(argv[2], argv[3]);
    return usage();
}
