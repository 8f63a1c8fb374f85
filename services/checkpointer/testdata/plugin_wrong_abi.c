/* A checkpoint store plugin built for a future ABI version: custom_store_test checks that the
 * host refuses it and names both versions. Only the version function is needed for that. */
#include "serve/checkpoint_store.h"

SERVE_STORE_EXPORT uint32_t serve_store_abi_version(void) { return SERVE_STORE_ABI_VERSION + 98; }
