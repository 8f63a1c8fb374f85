#include "cli/deployments.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "artifact/artifact.h"
#include "support/process.h"

namespace serve::cli {
namespace {

namespace fs = std::filesystem;
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

}  // namespace
}  // namespace serve::cli
