// A library that claims an ABI version this build does not support, as one built against
// another release's sdk/include would. It exports nothing else: the version is checked first.
#include <serve/abi.h>

extern "C" SERVE_EXPORT uint32_t serve_abi_version(void) { return SERVE_ABI_VERSION + 1; }
