/*
 * toy739: a deliberately broken CS739 (2012) key-value library, for meshkv-test's
 * own tests (faultsuite/tests/kv739_backend.rs): a checker that cannot fail is no
 * checker.
 *
 * Per-server copies, no replication: each server name maps to its own store, a
 * directory under $TOY739_DIR with one file per key, so that separate client
 * processes share each server's state. A get or put goes only to the first server
 * of the list that is not failed (kv739_fail); nothing is ever copied between
 * servers. With TOY739_SHARED set (non-empty), every server name maps to one store:
 * a correct store as far as one-writer-per-key tests can tell (the control case).
 * With TOY739_NOISY set, kv739_init prints a line on stdout, as many student
 * libraries do (the suite must not mistake it for an answer).
 *
 * Build: cc -shared -fPIC -o libtoy739.so toy739.c
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_SERVERS 64
#define MAX_KEY 128
#define MAX_VALUE 2048
#define PATH_LEN 1024

static char *servers[MAX_SERVERS];
static int failed[MAX_SERVERS];
static int nservers = 0; /* 0: not initialized */
static char base_dir[PATH_LEN];
static int shared_store = 0;

static void forget(void) {
    for (int i = 0; i < nservers; i++) {
        free(servers[i]);
        servers[i] = NULL;
    }
    nservers = 0;
}

int kv739_init(char **list) {
    const char *dir = getenv("TOY739_DIR");
    const char *shared = getenv("TOY739_SHARED");
    if (list == NULL || dir == NULL || dir[0] == '\0' ||
        strlen(dir) + 1 > sizeof base_dir)
        return -1;
    forget();
    int n = 0;
    while (list[n] != NULL && list[n][0] != '\0') {
        if (n == MAX_SERVERS) {
            forget();
            return -1;
        }
        servers[n] = strdup(list[n]);
        failed[n] = 0;
        if (servers[n] == NULL) {
            forget();
            return -1;
        }
        nservers = ++n;
    }
    if (n == 0)
        return -1;
    strcpy(base_dir, dir);
    shared_store = shared != NULL && shared[0] != '\0';
    if (mkdir(base_dir, 0777) != 0 && errno != EEXIST) {
        forget();
        return -1;
    }
    if (getenv("TOY739_NOISY") != NULL) {
        printf("toy739: init with %d servers\n", n);
        fflush(stdout);
    }
    return 0;
}

static int find(const char *name) {
    if (name == NULL)
        return -1;
    for (int i = 0; i < nservers; i++)
        if (strcmp(servers[i], name) == 0)
            return i;
    return -1;
}

int kv739_fail(char *server) {
    int i = find(server);
    if (i < 0)
        return -1;
    failed[i] = 1;
    return 0;
}

int kv739_recover(char *server) {
    int i = find(server);
    if (i < 0)
        return -1;
    failed[i] = 0;
    return 0;
}

/* Keep [A-Za-z0-9_-] (and '.' after the first byte), %XX the rest. */
static int encode(const char *s, char *out, size_t cap) {
    size_t o = 0;
    for (size_t i = 0; s[i] != '\0'; i++) {
        unsigned char c = (unsigned char)s[i];
        int keep = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                   (c >= '0' && c <= '9') || c == '-' || c == '_' ||
                   (c == '.' && i > 0);
        if (o + 4 > cap)
            return -1;
        if (keep)
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, cap - o, "%%%02X", c);
    }
    out[o] = '\0';
    return 0;
}

static int valid_key(const char *key) {
    size_t n;
    if (key == NULL)
        return 0;
    n = strlen(key);
    return n >= 1 && n <= MAX_KEY && strpbrk(key, "[]") == NULL;
}

/* The file of `key` at the first server that is not failed (its store directory
 * made if needed); -1 when every server is failed or on error. */
static int key_path(const char *key, char *out, size_t cap) {
    char store[256], name[256];
    int s = -1;
    for (int i = 0; i < nservers; i++)
        if (!failed[i]) {
            s = i;
            break;
        }
    if (s < 0)
        return -1;
    if (encode(shared_store ? "shared" : servers[s], store, sizeof store) != 0 ||
        encode(key, name, sizeof name) != 0)
        return -1;
    if (snprintf(out, cap, "%s/%s", base_dir, store) >= (int)cap)
        return -1;
    if (mkdir(out, 0777) != 0 && errno != EEXIST)
        return -1;
    if (snprintf(out, cap, "%s/%s/%s", base_dir, store, name) >= (int)cap)
        return -1;
    return 0;
}

/* 0 read into value, 1 no such file, -1 error. */
static int read_value(const char *path, char *value) {
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return errno == ENOENT ? 1 : -1;
    size_t n = fread(value, 1, MAX_VALUE, f);
    int bad = ferror(f);
    fclose(f);
    if (bad)
        return -1;
    value[n] = '\0';
    return 0;
}

int kv739_get(char *key, char *value) {
    char path[PATH_LEN];
    if (nservers == 0 || value == NULL || !valid_key(key) ||
        key_path(key, path, sizeof path) != 0)
        return -1;
    return read_value(path, value);
}

int kv739_put(char *key, char *value, char *old_value) {
    char path[PATH_LEN], tmp[PATH_LEN + 32];
    if (nservers == 0 || value == NULL || old_value == NULL || !valid_key(key) ||
        strlen(value) > MAX_VALUE || strpbrk(value, "[]") != NULL ||
        key_path(key, path, sizeof path) != 0)
        return -1;
    int had = read_value(path, old_value);
    if (had < 0)
        return -1;
    if (had == 1)
        old_value[0] = '\0';
    /* Write a private file, then rename it over the key's file: readers in other
     * processes see the old value or the new one, never half of one. */
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (f == NULL)
        return -1;
    size_t len = strlen(value);
    int bad = fwrite(value, 1, len, f) != len;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return had == 0 ? 0 : 1;
}

int kv739_shutdown(void) {
    if (nservers == 0)
        return -1;
    forget();
    return 0;
}
