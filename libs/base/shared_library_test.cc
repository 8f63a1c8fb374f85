#include "base/shared_library.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

namespace serve {
namespace {

using ::testing::HasSubstr;

#define SERVE_TEST_LIBC_FUNCTIONS(X) X(strlen) X(strcmp)
struct TestLibC {
  SERVE_TEST_LIBC_FUNCTIONS(SERVE_LIBRARY_FUNCTION)
};
Result<TestLibC> LoadTestLibC() {
  SERVE_LOAD_LIBRARY(TestLibC, "libc.so.6", "libc6", SERVE_TEST_LIBC_FUNCTIONS);
}

TEST(SharedLibrary, ResolvesEveryListedFunction) {
  auto libc = LoadTestLibC();
  ASSERT_TRUE(libc.ok()) << libc.error();
  EXPECT_EQ(libc->strlen("four"), 4u);
  EXPECT_EQ(libc->strcmp("a", "a"), 0);
}

TEST(SharedLibrary, AMissingLibraryNamesThePackageToInstall) {
  auto opened = OpenSharedLibrary("libserve-absent.so.7", "libserve-absent7");
  ASSERT_FALSE(opened.ok());
  EXPECT_THAT(opened.error(), HasSubstr("cannot load libserve-absent.so.7"));
  EXPECT_THAT(opened.error(), HasSubstr("install the package libserve-absent7"));
}

TEST(SharedLibrary, AMissingFunctionSaysTheLibraryIsTooOld) {
  auto opened = OpenSharedLibrary("libc.so.6", "libc6");
  ASSERT_TRUE(opened.ok()) << opened.error();
  size_t (*function)(const char*) = nullptr;
  Status resolved = ResolveFunction(*opened, "libc.so.6", "serve_no_such_function", &function);
  ASSERT_FALSE(resolved.ok());
  EXPECT_THAT(resolved.message(), HasSubstr("libc.so.6 has no function serve_no_such_function"));
  EXPECT_EQ(function, nullptr);
}

}  // namespace
}  // namespace serve
