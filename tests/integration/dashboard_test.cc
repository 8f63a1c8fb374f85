// The dashboard in a real browser: Debian's chromium driven by playwright-core
// (tests/dashboard/check_dashboard.cjs), against a real instance.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "integration/cluster.h"
#include "support/servers.h"

namespace serve::testing {
namespace {

TEST(Dashboard, ShowsDeploymentsLiveInARealBrowser) {
  namespace fs = std::filesystem;
  std::string playwright = (fs::current_path() / ".tools/node_modules/playwright-core").string();
  std::string script = (fs::current_path() / "tests/dashboard/check_dashboard.cjs").string();
  bool available = fs::exists("/usr/bin/chromium") && fs::exists(playwright);
  if (!available) {
    if (TestServersRequired()) FAIL() << "chromium or playwright-core is missing: run ./dev test";
    GTEST_SKIP() << "chromium or playwright-core is not installed (./dev test installs them)";
  }
  Cluster cluster;
  cluster.Deploy(
      "deployments:\n"
      "  - name: flaky\n"
      "    runtime: native\n"
      "    artifact: " +
      TestLibrary("test_handlers") +
      "\n"
      "    health_check_period_s: 0.2\n"
      "    health_check_timeout_s: 5\n");
  ASSERT_TRUE(cluster.WaitForStatus("/flaky/config", 200));
  // Kept beside the test binaries, so a run leaves the picture to look at.
  fs::path out = fs::path(BinDir()).parent_path() / "test-output";
  fs::create_directories(out);
  std::string screenshot = (out / "dashboard.png").string();
  CommandResult checked =
      RunCommand({"node", script, "http://127.0.0.1:" + std::to_string(cluster.api_port()),
                  "http://127.0.0.1:" + std::to_string(cluster.http_port()), screenshot},
                 {{"PLAYWRIGHT_CORE", playwright}}, std::chrono::seconds(120));
  std::cout << checked.output << std::flush;
  EXPECT_EQ(checked.exit_code, 0) << checked.output << "\ncontroller log:\n"
                                  << cluster.Log("controller");
  EXPECT_TRUE(fs::exists(screenshot));
}

}  // namespace
}  // namespace serve::testing
