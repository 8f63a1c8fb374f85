/* The C ABI between serve-replica (the host) and a `native` deployment (the plugin).
 *
 * Most users never see this file: they write a C++ class and SERVE_DEPLOYMENT(Class) from
 * serve/deployment.h defines the functions below. It is plain C so that the contract is
 * exact and any language that can export C functions can implement it.
 *
 * The contract, modelled on Triton's backend API:
 *  - The host loads the library with dlopen(RTLD_NOW | RTLD_LOCAL) and finds the functions
 *    declared under "Exported by the plugin" with dlsym. The library needs no symbols from
 *    the host executable; everything it may call on the host comes in a ServeHostApi table.
 *  - serve_abi_version() is read first. The host refuses a library whose version differs from
 *    its own SERVE_ABI_VERSION. Any change to a function's signature or meaning bumps it.
 *  - ServeRequest, ServeResponse, ServeError and ServeInstance are opaque. Requests and
 *    responses are owned by the host and only valid during the call that receives them; the
 *    instance is owned by the plugin and handed back to serve_deployment_destroy.
 *  - Errors cross as a ServeError* made with ServeHostApi.error_new; NULL means success. The
 *    host frees every error it gets back, so no memory allocated on one side is freed on the
 *    other.
 *  - Nothing may unwind across these functions: C++ plugins catch every exception and turn it
 *    into a ServeError.
 */
#ifndef SERVE_ABI_H_
#define SERVE_ABI_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on every incompatible change to this file. */
#define SERVE_ABI_VERSION 1

#if defined(_WIN32)
#define SERVE_EXPORT __declspec(dllexport)
#else
#define SERVE_EXPORT __attribute__((visibility("default")))
#endif

/* Bits of serve_deployment_flags(). */
/* The instance may be called from several threads at once (up to max_concurrent_queries);
 * without it the host never runs two serve_deployment_handle calls on one instance at once. */
#define SERVE_DEPLOYMENT_CONCURRENT 0x1u
/* serve_deployment_check_health does something; without it every check passes. */
#define SERVE_DEPLOYMENT_HAS_CHECK_HEALTH 0x2u
/* serve_deployment_reconfigure does something; without it a new user_config is accepted
 * and ignored. */
#define SERVE_DEPLOYMENT_HAS_RECONFIGURE 0x4u
/* serve_deployment_handle returns within microseconds and never blocks (no I/O, no waiting on
 * a lock held for long): the host calls it on the worker's event-loop thread, one call at a
 * time, with no hand-over to a handler thread and back. A call that blocks holds up every
 * other request of the replica and its heartbeats. Takes precedence over
 * SERVE_DEPLOYMENT_CONCURRENT. */
#define SERVE_DEPLOYMENT_NON_BLOCKING 0x8u

typedef struct ServeRequest ServeRequest;   /* one request, owned by the host */
typedef struct ServeResponse ServeResponse; /* the answer being built, owned by the host */
typedef struct ServeError ServeError;       /* a failure with a message, freed by the host */
typedef struct ServeInstance ServeInstance; /* the user's object, owned by the plugin */

/* Bytes owned by the other side: `data` need not be NUL-terminated and is valid only for the
 * duration of the call that produced it. */
typedef struct ServeString {
  const char* data;
  size_t size;
} ServeString;

/* Functions the host offers the plugin. Passed to serve_deployment_create; the table stays
 * valid until serve_deployment_destroy returns. All of them are safe to call from any thread
 * and never fail (a lookup that finds nothing answers an empty string). New members are only
 * ever appended, and `struct_size` tells the plugin how many there are. */
typedef struct ServeHostApi {
  /* sizeof(ServeHostApi) as the host compiled it. */
  uint32_t struct_size;
  /* The host's SERVE_ABI_VERSION. */
  uint32_t abi_version;

  /* An error carrying a copy of `message` (UTF-8). Return it from a plugin function; the host
   * frees it. */
  ServeError* (*error_new)(const char* message, size_t size);

  /* The request line: method ("GET"), path (route prefix included, no query), query (without
   * the '?'), and the body. */
  void (*request_method)(const ServeRequest* request, ServeString* out);
  void (*request_path)(const ServeRequest* request, ServeString* out);
  void (*request_query)(const ServeRequest* request, ServeString* out);
  void (*request_body)(const ServeRequest* request, ServeString* out);
  /* The first header called `name` (ASCII case-insensitive). Returns 1 and sets `out` when
   * there is one, else returns 0 and sets `out` to an empty string. */
  int (*request_header)(const ServeRequest* request, const char* name, size_t name_size,
                        ServeString* out);
  /* Headers in the order received: count, then name and value of the index-th. */
  size_t (*request_header_count)(const ServeRequest* request);
  void (*request_header_at)(const ServeRequest* request, size_t index, ServeString* name,
                            ServeString* value);

  /* The answer: status defaults to 200, headers to none, body to empty. Every setter copies
   * its arguments. */
  void (*response_set_status)(ServeResponse* response, int status);
  void (*response_add_header)(ServeResponse* response, const char* name, size_t name_size,
                              const char* value, size_t value_size);
  void (*response_set_body)(ServeResponse* response, const char* data, size_t size);

  /* The request's id: the client's X-Request-ID, or the one the proxy made up. The proxy's
   * access line, the replica's request line and every line logged while the request is
   * handled carry it. */
  void (*request_id)(const ServeRequest* request, ServeString* out);
  /* Writes `message` (one line) to the replica's log, with its time, deployment, replica and,
   * on a thread handling a request, that request's id. `level`: one of SERVE_LOG_*. */
  void (*log)(int level, const char* message, size_t size);
} ServeHostApi;

/* Levels for ServeHostApi.log. */
#define SERVE_LOG_DEBUG 0
#define SERVE_LOG_INFO 1
#define SERVE_LOG_WARNING 2
#define SERVE_LOG_ERROR 3

/* What serve_deployment_create is given. Strings are valid for that call only. */
typedef struct ServeConfig {
  uint32_t struct_size;        /* sizeof(ServeConfig) as the host compiled it */
  ServeString user_config;     /* JSON text from the deployment's user_config; may be empty */
  ServeString deployment_name; /* e.g. "counter" */
  ServeString replica_id;      /* this replica, e.g. "counter-3f2a1" */
} ServeConfig;

/* ---- Exported by the plugin ------------------------------------------------------------ */

/* SERVE_ABI_VERSION as the plugin was compiled. Required; called first. */
SERVE_EXPORT uint32_t serve_abi_version(void);
/* SERVE_DEPLOYMENT_* bits. Required. */
SERVE_EXPORT uint32_t serve_deployment_flags(void);
/* Builds the user's object. Required. On success sets *instance and returns NULL. `host`
 * outlives the instance. */
SERVE_EXPORT ServeError* serve_deployment_create(const ServeHostApi* host,
                                                 const ServeConfig* config,
                                                 ServeInstance** instance);
/* Destroys what serve_deployment_create built. Required. Called once, after every other call
 * on the instance returned. */
SERVE_EXPORT void serve_deployment_destroy(ServeInstance* instance);
/* Answers one request by filling `response` through the host table. Required. An error
 * becomes a 500 answer carrying its message. */
SERVE_EXPORT ServeError* serve_deployment_handle(ServeInstance* instance,
                                                 const ServeRequest* request,
                                                 ServeResponse* response);
/* The health check: NULL when healthy. Optional. Runs on the host's control thread, possibly
 * while serve_deployment_handle runs on other threads. */
SERVE_EXPORT ServeError* serve_deployment_check_health(ServeInstance* instance);
/* Applies a new user_config (JSON text). Optional. Same threading as check_health. */
SERVE_EXPORT ServeError* serve_deployment_reconfigure(ServeInstance* instance,
                                                      const char* user_config, size_t size);

/* Pointer types, for a host that finds the functions above with dlsym. */
typedef uint32_t (*ServeAbiVersionFn)(void);
typedef uint32_t (*ServeDeploymentFlagsFn)(void);
typedef ServeError* (*ServeDeploymentCreateFn)(const ServeHostApi*, const ServeConfig*,
                                               ServeInstance**);
typedef void (*ServeDeploymentDestroyFn)(ServeInstance*);
typedef ServeError* (*ServeDeploymentHandleFn)(ServeInstance*, const ServeRequest*, ServeResponse*);
typedef ServeError* (*ServeDeploymentCheckHealthFn)(ServeInstance*);
typedef ServeError* (*ServeDeploymentReconfigureFn)(ServeInstance*, const char*, size_t);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* SERVE_ABI_H_ */
