/*
 * libkv739: the CS739 (2012) key-value C API over meshkv's HTTP API.
 *
 * Link with -l739kv (lib739kv.so, a copy of cargo's libkv739.so) or -lkv739.
 * Every function is thread-safe (one global lock) and never writes to stdout,
 * nor to stderr unless the environment variable KV739_DEBUG is set. NULL
 * pointers, and calls before kv739_init (or after kv739_shutdown), return -1.
 *
 * Limits: keys are 1..128 bytes, values 0..2048 bytes, and neither may contain
 * '[' or ']'; a violation returns -1 and sends nothing. Buffers for values
 * must hold KV739_MAX_VALUE + 1 bytes (the value and a NUL).
 *
 * Each operation goes to the first server of the list that is not failed
 * (kv739_fail) and moves on to the next when one cannot be reached, answers
 * 503 (not ready, no majority for the key) or has not caught up with this
 * client's session token; -1 when none could answer.
 *
 * Environment, read by kv739_init: MESHKV_CONSISTENCY=session|linearizable
 * (default: the servers' default level), MESHKV_TOKEN (bearer token),
 * KV739_TIMEOUT_MS (per request, default 5000), KV739_DEBUG.
 */
#ifndef KV739_H
#define KV739_H

#ifdef __cplusplus
extern "C" {
#endif

#define KV739_MAX_KEY 128
#define KV739_MAX_VALUE 2048

/* servers: "host:port" strings (HTTP addresses), ending at a NULL pointer or
 * an empty string, whichever comes first (nothing after it is read).
 * 0 ok; -1 error (NULL or empty list, unparsable entry, bad environment).
 * Calling it again replaces the previous state. */
int kv739_init(char **servers);

/* Client-side only: stop using that server (the string is copied, never kept).
 * 0 ok; -1 not a server of the list. */
int kv739_fail(char *server);

/* Use that server again. 0 ok; -1 not a server of the list. */
int kv739_recover(char *server);

/* 0 found (value copied into value, NUL-terminated, at most 2048 bytes + NUL);
 * 1 not found; -1 error. */
int kv739_get(char *key, char *value);

/* 0 there was an old value (copied into old_value, at most 2048 bytes + NUL);
 * 1 there was none (old_value set to ""); -1 error. */
int kv739_put(char *key, char *value, char *old_value);

/* 0 ok (state freed; kv739_init may be called again); -1 not initialized. */
int kv739_shutdown(void);

#ifdef __cplusplus
}
#endif

#endif /* KV739_H */
