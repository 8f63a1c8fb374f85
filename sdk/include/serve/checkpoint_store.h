/* The C ABI between serve-checkpointer (the host) and a checkpoint store plugin.
 *
 * A plugin keeps the checkpointer's records and code artifacts wherever its author wants
 * (a database, an object store, a directory) behind five calls on byte values named by keys.
 * It is selected with --checkpoint-path custom:///abs/path/libstore.so?key=value&k2=v2.
 * examples/checkpoint-store/directory_store.c is a complete plugin.
 *
 * The contract:
 *  - The host loads the library with dlopen(RTLD_NOW | RTLD_LOCAL) and finds every function
 *    under "Exported by the plugin" with dlsym; all of them are required. The library needs no
 *    symbols from the host.
 *  - serve_store_abi_version() is read first. The host refuses a library whose version differs
 *    from its own SERVE_STORE_ABI_VERSION. Any change to a signature or meaning bumps it.
 *  - Threads: the host calls into one ServeStore from one thread at a time (the checkpointer's
 *    loop). A plugin needs no locking of its own unless it shares state between handles.
 *  - Memory: nothing allocated on one side is freed on the other. Strings and buffers the host
 *    passes are valid only during the call. Bytes the plugin hands back go to a host callback
 *    and are valid only during that callback; the host copies what it keeps. The ServeStore is
 *    owned by the plugin and handed back to serve_store_close.
 *  - Errors: a function that can fail returns 0 on success and non-zero on failure, writing a
 *    NUL-terminated message for a person (UTF-8, truncated to fit) into the host's buffer
 *    `error` of `error_size` bytes (at least SERVE_STORE_ERROR_SIZE). The host shows it in its
 *    own error, so say what failed and how to fix it ("cannot create /var/lib/serve/ckpt:
 *    Permission denied").
 *  - Keys are NUL-terminated, 1 to 250 bytes of [A-Za-z0-9._/-], never with a leading '/',
 *    an empty or "." or ".." part between slashes. '/' groups keys into folders like an object
 *    store prefix, and one key may be the folder of another ("ckpt/a" and "ckpt/a/b"). The host
 *    uses "ckpt/<checkpoint key>" for records and "blobs/sha256/<64 hex>" for artifacts.
 *  - Durability: once put or delete returns 0 the change survives a crash of the process or
 *    the machine, and a reader sees the whole old value or the whole new one, never a mix.
 *  - Nothing may unwind across these functions: a C++ plugin catches every exception and
 *    reports it as an error.
 *
 * What the host does on top: it checks record generations itself (get, compare, put), so the
 * fencing of two writers of one key is atomic only because the controller runs one
 * checkpointer per namespace; a plugin over shared storage may add its own check. Artifacts
 * are put and got whole, so a plugin holds one in memory at a time; that suits code artifacts
 * (megabytes), not model weights.
 */
#ifndef SERVE_CHECKPOINT_STORE_H_
#define SERVE_CHECKPOINT_STORE_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on every incompatible change to this file. */
#define SERVE_STORE_ABI_VERSION 1

/* The smallest error buffer the host passes. */
#define SERVE_STORE_ERROR_SIZE 1024

#if defined(_WIN32)
#define SERVE_STORE_EXPORT __declspec(dllexport)
#else
#define SERVE_STORE_EXPORT __attribute__((visibility("default")))
#endif

/* One store opened by serve_store_open; owned by the plugin. */
typedef struct ServeStore ServeStore;

/* One query parameter of the custom:// URI, percent-decoded, NUL-terminated. */
typedef struct ServeStoreParam {
  const char* key;
  const char* value; /* "" when the URI gave "key=" */
} ServeStoreParam;

/* Receives the value of a get: `size` bytes at `data` (not NUL-terminated; data may be NULL
 * when size is 0), valid until the callback returns. Called at most once per get. */
typedef void (*ServeStoreValueFn)(void* context, const void* data, size_t size);

/* Receives one key of a list (NUL-terminated, valid until the callback returns). Return 0 to
 * go on, non-zero to stop the listing early (the list call then still returns 0). */
typedef int (*ServeStoreKeyFn)(void* context, const char* key);

/* ---- Exported by the plugin ------------------------------------------------------------ */

/* SERVE_STORE_ABI_VERSION as the plugin was compiled. Called first. */
SERVE_STORE_EXPORT uint32_t serve_store_abi_version(void);

/* Opens a store with the URI's query parameters (`count` of them, in URI order; a key appears
 * at most once). Checks them now: an unknown or missing parameter, or storage that cannot be
 * used, is an error here rather than at the first put. Returns NULL and fills `error` on
 * failure. */
SERVE_STORE_EXPORT ServeStore* serve_store_open(const ServeStoreParam* params, size_t count,
                                                char* error, size_t error_size);

/* Releases the store. Called once, after every other call on it returned. */
SERVE_STORE_EXPORT void serve_store_close(ServeStore* store);

/* Stores `size` bytes at `data` under `key`, replacing any value, durably and atomically (see
 * above). `data` may be NULL when size is 0; an empty value is a value, not a delete. */
SERVE_STORE_EXPORT int serve_store_put(ServeStore* store, const char* key, const void* data,
                                       size_t size, char* error, size_t error_size);

/* Looks `key` up. When it exists: calls on_value once with its bytes and sets *found to 1.
 * When it does not: sets *found to 0 and does not call on_value; that is not an error.
 * A value that exists but cannot be read is an error, never "not found". */
SERVE_STORE_EXPORT int serve_store_get(ServeStore* store, const char* key,
                                       ServeStoreValueFn on_value, void* context, int* found,
                                       char* error, size_t error_size);

/* Removes `key`. Removing a key that does not exist succeeds. */
SERVE_STORE_EXPORT int serve_store_delete(ServeStore* store, const char* key, char* error,
                                          size_t error_size);

/* Calls on_key for every stored key that starts with `prefix` ("" for all), in any order,
 * each once. Puts and deletes made from within on_key are not allowed. */
SERVE_STORE_EXPORT int serve_store_list(ServeStore* store, const char* prefix,
                                        ServeStoreKeyFn on_key, void* context, char* error,
                                        size_t error_size);

/* Pointer types, for a host that finds the functions above with dlsym. */
typedef uint32_t (*ServeStoreAbiVersionFn)(void);
typedef ServeStore* (*ServeStoreOpenFn)(const ServeStoreParam*, size_t, char*, size_t);
typedef void (*ServeStoreCloseFn)(ServeStore*);
typedef int (*ServeStorePutFn)(ServeStore*, const char*, const void*, size_t, char*, size_t);
typedef int (*ServeStoreGetFn)(ServeStore*, const char*, ServeStoreValueFn, void*, int*, char*,
                               size_t);
typedef int (*ServeStoreDeleteFn)(ServeStore*, const char*, char*, size_t);
typedef int (*ServeStoreListFn)(ServeStore*, const char*, ServeStoreKeyFn, void*, char*, size_t);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* SERVE_CHECKPOINT_STORE_H_ */
