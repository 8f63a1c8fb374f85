#pragma once

// Shared libraries opened at first use instead of linked. A replica worker is a process of its
// own, started once per replica; linking libcurl and libarchive (and the thirty-odd libraries
// they bring: GnuTLS, Kerberos, LDAP, ICU, ...) would make every worker map and relocate them
// before main(), though only command runtimes and packaged working directories use them.
//
// A library's functions are listed once in an X-list and used through a table:
//
//   #define SERVE_LIBFOO_FUNCTIONS(X) X(foo_open) X(foo_close)
//   struct LibFoo { SERVE_LIBFOO_FUNCTIONS(SERVE_LIBRARY_FUNCTION) };
//   Result<LibFoo> LoadLibFoo() {
//     SERVE_LOAD_LIBRARY(LibFoo, "libfoo.so.1", "libfoo1", SERVE_LIBFOO_FUNCTIONS);
//   }
//
// Each member has the type of the function declared in the library's header, so calls are
// checked as if linked. Libraries are never closed: their functions stay valid for the life of
// the process.

#include <dlfcn.h>

#include <string>

#include "base/status.h"

namespace serve {

// Opens `soname` (RTLD_NOW, so a missing symbol fails here and not at a later call).
// `package` names what installs it, for the error.
inline Result<void*> OpenSharedLibrary(const char* soname, const char* package) {
  void* handle = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    return Status::Error(std::string("cannot load ") + soname + " (" + (why ? why : "unknown") +
                         "): install the package " + package);
  }
  return handle;
}

template <typename Function>
Status ResolveFunction(void* handle, const char* soname, const char* symbol, Function* out) {
  void* address = dlsym(handle, symbol);
  if (address == nullptr) {
    return Status::Error(std::string(soname) + " has no function " + symbol +
                         ": the installed version is older than the one Serve was built with");
  }
  *out = reinterpret_cast<Function>(address);
  return Status::Ok();
}

}  // namespace serve

#define SERVE_LIBRARY_FUNCTION(symbol) decltype(&::symbol) symbol = nullptr;

#define SERVE_RESOLVE_LIBRARY_FUNCTION(symbol)                                             \
  if (::serve::Status resolved = ::serve::ResolveFunction(serve_handle_, serve_soname_,    \
                                                          #symbol, &serve_table_.symbol);  \
      !resolved.ok()) {                                                                    \
    return resolved;                                                                       \
  }

// The body of a function returning Result<Table>: opens the library and resolves every function
// of the X-list `functions`.
#define SERVE_LOAD_LIBRARY(Table, soname, package, functions)                           \
  const char* serve_soname_ = soname;                                                    \
  auto serve_opened_ = ::serve::OpenSharedLibrary(serve_soname_, package);              \
  if (!serve_opened_.ok()) return serve_opened_.status();                               \
  void* serve_handle_ = *serve_opened_;                                                  \
  Table serve_table_;                                                                    \
  functions(SERVE_RESOLVE_LIBRARY_FUNCTION) return serve_table_
