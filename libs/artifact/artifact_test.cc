#include "artifact/artifact.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "support/process.h"

namespace serve::artifact {
namespace {

namespace fs = std::filesystem;

void Write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

std::string Read(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST(DigestTest, MatchesTheStandardTestVectors) {
  EXPECT_EQ(DigestOf("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(DigestOf(""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(DigestTest, FileDigestEqualsBytesDigestAndMissingFileIsNamed) {
  serve::testing::TempDir dir;
  std::string big(300000, 'x');
  Write(fs::path(dir.path()) / "f", big);
  auto digest = DigestFile(dir.path() + "/f");
  ASSERT_TRUE(digest.ok()) << digest.error();
  EXPECT_EQ(*digest, DigestOf(big));
  auto missing = DigestFile(dir.path() + "/nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().find("/nope"), std::string::npos) << missing.error();
}

class PackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    src_ = fs::path(dir_.path()) / "src";
    Write(src_ / "server.py", "print('hi')\n");
    Write(src_ / "model" / "weights.txt", "1 2 3\n");
    Write(src_ / "run.sh", "#!/bin/sh\necho run\n");
    fs::permissions(src_ / "run.sh", fs::perms::owner_exec, fs::perm_options::add);
    fs::create_symlink("server.py", src_ / "main.py");
  }
  Result<std::string> Pack(const std::string& name) {
    return PackDirectory(src_.string(), (fs::path(dir_.path()) / name).string());
  }

  serve::testing::TempDir dir_;
  fs::path src_;
};

TEST_F(PackTest, SameFilesGiveTheSameDigestWhateverTheirTimes) {
  auto first = Pack("a.tar");
  ASSERT_TRUE(first.ok()) << first.error();
  fs::last_write_time(src_ / "server.py", fs::file_time_type::clock::now() - std::chrono::hours(5));
  Write(src_ / "__pycache__" / "server.cpython-311.pyc", "compiled");
  auto second = Pack("b.tar");
  ASSERT_TRUE(second.ok()) << second.error();
  EXPECT_EQ(*first, *second);
  EXPECT_EQ(Read(fs::path(dir_.path()) / "a.tar"), Read(fs::path(dir_.path()) / "b.tar"));

  Write(src_ / "model" / "weights.txt", "1 2 4\n");
  auto changed = Pack("c.tar");
  ASSERT_TRUE(changed.ok()) << changed.error();
  EXPECT_NE(*first, *changed);
}

TEST_F(PackTest, UnpackRestoresFilesModesAndLinks) {
  auto digest = Pack("a.tar");
  ASSERT_TRUE(digest.ok()) << digest.error();
  fs::path out = fs::path(dir_.path()) / "out";
  Status unpacked = UnpackTar((fs::path(dir_.path()) / "a.tar").string(), out.string());
  ASSERT_TRUE(unpacked.ok()) << unpacked.message();
  EXPECT_EQ(Read(out / "server.py"), "print('hi')\n");
  EXPECT_EQ(Read(out / "model" / "weights.txt"), "1 2 3\n");
  EXPECT_TRUE(fs::is_symlink(out / "main.py"));
  EXPECT_EQ(Read(out / "main.py"), "print('hi')\n");
  EXPECT_NE(fs::status(out / "run.sh").permissions() & fs::perms::owner_exec, fs::perms::none);
  EXPECT_EQ(fs::status(out / "server.py").permissions() & fs::perms::owner_exec, fs::perms::none);
  EXPECT_FALSE(fs::exists(out / "__pycache__"));
}

TEST_F(PackTest, MissingDirectoryIsNamed) {
  auto result = PackDirectory(dir_.path() + "/absent", dir_.path() + "/x.tar");
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.error().find("absent"), std::string::npos) << result.error();
}

TEST(UnpackTest, RefusesEntriesThatLeaveTheDirectory) {
  serve::testing::TempDir dir;
  std::string tar = dir.path() + "/evil.tar";
  // A tar with an entry climbing out of the target, made by Python's tarfile.
  std::string script = "import io, tarfile\n"
                       "t = tarfile.open('" + tar + "', 'w')\n"
                       "data = b'owned'\n"
                       "info = tarfile.TarInfo('../escaped.txt'); info.size = len(data)\n"
                       "t.addfile(info, io.BytesIO(data)); t.close()\n";
  Write(fs::path(dir.path()) / "make.py", script);
  ASSERT_EQ(std::system(("python3 " + dir.path() + "/make.py").c_str()), 0);
  Status unpacked = UnpackTar(tar, dir.path() + "/out");
  EXPECT_FALSE(unpacked.ok());
  EXPECT_FALSE(fs::exists(fs::path(dir.path()) / "escaped.txt"));
}

TEST(UnpackTest, NotATarIsAClearError) {
  serve::testing::TempDir dir;
  Write(fs::path(dir.path()) / "x.tar", "this is not a tar file at all");
  Status unpacked = UnpackTar(dir.path() + "/x.tar", dir.path() + "/out");
  ASSERT_FALSE(unpacked.ok());
  EXPECT_NE(unpacked.message().find("x.tar"), std::string::npos) << unpacked.message();
}

}  // namespace
}  // namespace serve::artifact
