#include "cli/deployments.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "artifact/artifact.h"
#include "support/process.h"

namespace serve::cli {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

class CheckLocalCodeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_path_ = dir_.path() + "/serve.yaml";
    fs::create_directories(dir_.path() + "/app");
    std::ofstream(dir_.path() + "/app/server.py") << "print('hi')\n";
  }
  // A command deployment whose code is the file `artifact`, relative to the config file.
  config::ConfigFile Command(const std::string& artifact) {
    config::Deployment d;
    d.name = "app";
    d.runtime = "command";
    d.command = {"python3", "server.py"};
    d.artifact = artifact;
    return config::ConfigFile{{d}};
  }

  serve::testing::TempDir dir_;
  std::string config_path_;
};

TEST_F(CheckLocalCodeTest, AnUncompressedTarIsAccepted) {
  auto digest = artifact::PackDirectory(dir_.path() + "/app", dir_.path() + "/app.tar");
  ASSERT_TRUE(digest.ok()) << digest.error();
  Status checked = CheckLocalCode(Command("app.tar"), config_path_);
  EXPECT_TRUE(checked.ok()) << checked.message();
}

TEST_F(CheckLocalCodeTest, GzipAndZstdTarsAreRefusedWithTheFix) {
  std::ofstream(dir_.path() + "/app.tar.gz", std::ios::binary)
      << std::string("\x1f\x8b\x08\x00", 4) << std::string(1000, '\0');
  Status gz = CheckLocalCode(Command("app.tar.gz"), config_path_);
  ASSERT_FALSE(gz.ok());
  EXPECT_THAT(gz.message(), HasSubstr("deployment 'app': artifact app.tar.gz"));
  EXPECT_THAT(gz.message(), HasSubstr("gzip-compressed"));
  EXPECT_THAT(gz.message(), HasSubstr("gunzip"));

  std::ofstream(dir_.path() + "/app.tar.zst", std::ios::binary)
      << std::string("\x28\xb5\x2f\xfd", 4) << std::string(1000, '\0');
  Status zst = CheckLocalCode(Command("app.tar.zst"), config_path_);
  ASSERT_FALSE(zst.ok());
  EXPECT_THAT(zst.message(), HasSubstr("zstd-compressed"));
  EXPECT_THAT(zst.message(), HasSubstr("working_dir"));
}

TEST_F(CheckLocalCodeTest, ANativeLibraryIsNotTakenForATar) {
  std::ofstream(dir_.path() + "/lib.so", std::ios::binary) << "\x7f"
                                                              "ELF....";
  config::ConfigFile config = Command("lib.so");
  config.deployments[0].runtime = "native";
  config.deployments[0].command.clear();
  EXPECT_TRUE(CheckLocalCode(config, config_path_).ok());
}

TEST_F(CheckLocalCodeTest, AMissingArtifactIsNamed) {
  Status missing = CheckLocalCode(Command("nope.tar"), config_path_);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.message(), HasSubstr("nope.tar"));
  EXPECT_THAT(missing.message(), HasSubstr("does not exist"));
}

// A python class's @deployment(...) fills in what the config file leaves out.
class DecoratorOptionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/python3";
    fs::create_directories(dir_.path() + "/app/pkg");
    std::ofstream(dir_.path() + "/app/model.py")
        << "from serve import deployment\n"
           "import serve\n\n"
           "@deployment(num_replicas=3, max_concurrent_queries=8, health_check_period_s=2.5,\n"
           "            route_prefix='/ignored')\n"
           "class Iris:\n    pass\n\n"
           "@serve.deployment(num_replicas=compute())\n"
           "class Computed:\n    pass\n\n"
           "@deployment(num_replicas=-1)\n"
           "class Negative:\n    pass\n\n"
           "class Plain:\n    pass\n";
    std::ofstream(dir_.path() + "/app/pkg/__init__.py")
        << "@deployment(max_concurrent_queries=4)\ndef handler(request):\n    return 'hi'\n";
  }

  Result<config::ConfigFile> Apply(const std::string& import_path, const std::string& more = "") {
    auto config = config::ParseConfig(
        "deployments:\n  - name: m\n    runtime: python\n"
        "    working_dir: app\n    import_path: \"" +
            import_path + "\"\n" + more,
        config_path_);
    if (!config.ok()) return config.status();
    if (Status applied = ApplyDecoratorOptions(*config, config_path_); !applied.ok()) {
      return applied;
    }
    return config;
  }

  serve::testing::TempDir dir_;
  std::string config_path_ = dir_.path() + "/serve.yaml";
};

TEST_F(DecoratorOptionsTest, FillsWhatTheFileLeavesOut) {
  auto config = Apply("model:Iris", "    num_replicas: 2\n");
  ASSERT_TRUE(config.ok()) << config.error();
  const config::Deployment& d = config->deployments[0];
  EXPECT_EQ(d.num_replicas, 2) << "the file wins";
  EXPECT_EQ(d.max_concurrent_queries, 8);
  EXPECT_EQ(d.health_check_period_s, 2.5);
  EXPECT_EQ(d.route_prefix, "/m") << "only the options listed are taken";
  EXPECT_EQ(d.working_dir, "app") << "the code is still to be uploaded";

  auto package = Apply("pkg:handler");
  ASSERT_TRUE(package.ok()) << package.error();
  EXPECT_EQ(package->deployments[0].max_concurrent_queries, 4);
  auto plain = Apply("model:Plain");
  ASSERT_TRUE(plain.ok()) << plain.error();
  EXPECT_EQ(plain->deployments[0].num_replicas, 1);
  EXPECT_EQ(plain->deployments[0].max_concurrent_queries, 100);
  auto elsewhere = Apply("installed.module:Model");
  ASSERT_TRUE(elsewhere.ok()) << "a module not in working_dir keeps the defaults";
}

TEST_F(DecoratorOptionsTest, ValuesThatAreNotLiteralsOrBreakTheRulesAreErrors) {
  auto computed = Apply("model:Computed");
  ASSERT_FALSE(computed.ok());
  EXPECT_THAT(computed.error(),
              AllOf(HasSubstr("@deployment(...) of model:Computed in model.py"),
                    HasSubstr("num_replicas must be a whole number written as a literal")));
  auto negative = Apply("model:Negative");
  ASSERT_FALSE(negative.ok());
  EXPECT_THAT(negative.error(), HasSubstr("num_replicas must be >= 0, got -1"));
  // The file's own value is not overridden, so the decorator's is not checked.
  EXPECT_TRUE(Apply("model:Negative", "    num_replicas: 1\n").ok());
}

}  // namespace
}  // namespace serve::cli
