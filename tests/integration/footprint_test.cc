// What a replica worker costs to start. One worker process runs per replica, so what it maps
// and relocates before main() is paid a thousand times by a thousand deployments; libcurl and
// libarchive (with GnuTLS, Kerberos, LDAP and ICU behind them) are opened only by the workers
// that use them (base/shared_library.h).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "support/process.h"

namespace serve::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(Footprint, WorkersDoNotLinkWhatOnlySomeOfThemUse) {
  // The dynamic loader lists what it would load, as ldd does, without running the program.
  CommandResult loaded =
      RunCommand({BinDir() + "/serve-replica"}, {{"LD_TRACE_LOADED_OBJECTS", "1"}});
  ASSERT_EQ(loaded.exit_code, 0) << loaded.output;
  ASSERT_THAT(loaded.output, HasSubstr("libnats")) << "not the loader's listing:\n"
                                                   << loaded.output;
  EXPECT_THAT(loaded.output, Not(HasSubstr("libcurl"))) << loaded.output;
  EXPECT_THAT(loaded.output, Not(HasSubstr("libarchive"))) << loaded.output;
}

}  // namespace
}  // namespace serve::testing
