#include "artifact/artifact.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

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

// Writes tars by hand, ustar header by header, so a test can hold any entry a hostile client
// could upload: tar tools and libarchive's writer refuse to make some of them.
class TarBuilder {
 public:
  TarBuilder& File(const std::string& name, const std::string& data, int mode = 0644) {
    return Add(name, '0', mode, data);
  }
  TarBuilder& Directory(const std::string& name, int mode = 0755) { return Add(name, '5', mode); }
  TarBuilder& Symlink(const std::string& name, const std::string& target) {
    return Add(name, '2', 0777, "", target);
  }
  // A hard link entry may carry data, which is written into the file it links to.
  TarBuilder& HardLink(const std::string& name, const std::string& target,
                       const std::string& data = "") {
    return Add(name, '1', 0644, data, target);
  }
  // '3' character device, '4' block device, '6' FIFO.
  TarBuilder& Special(const std::string& name, char type) { return Add(name, type, 0666); }
  // A pax extended header ("27 path=some/long/name\n" records) for the entry after it.
  TarBuilder& Pax(const std::string& records) { return Add("././@PaxHeader", 'x', 0644, records); }

  void WriteTo(const fs::path& path) const {
    std::ofstream(path, std::ios::binary) << bytes_ << std::string(1024, '\0');
  }
  // Only the first `size` bytes, without the end-of-archive blocks: a tar cut short.
  void WriteCutTo(const fs::path& path, size_t size) const {
    std::ofstream(path, std::ios::binary) << bytes_.substr(0, size);
  }

 private:
  static void Put(std::string& header, size_t offset, size_t width, const std::string& text) {
    header.replace(offset, std::min(text.size(), width), text.substr(0, width));
  }
  static void Octal(std::string& header, size_t offset, size_t width, uint64_t value) {
    char text[32];
    snprintf(text, sizeof(text), "%0*llo", static_cast<int>(width - 1),
             static_cast<unsigned long long>(value));
    Put(header, offset, width - 1, text);
  }
  TarBuilder& Add(const std::string& name, char type, int mode, const std::string& data = "",
                  const std::string& link = "") {
    std::string header(512, '\0');
    Put(header, 0, 100, name);
    Octal(header, 100, 8, static_cast<uint64_t>(mode));
    Octal(header, 108, 8, 0);
    Octal(header, 116, 8, 0);
    Octal(header, 124, 12, data.size());
    Octal(header, 136, 12, 0);
    header[156] = type;
    Put(header, 157, 100, link);
    Put(header, 257, 6, std::string("ustar\0", 6));
    Put(header, 263, 2, "00");
    Octal(header, 329, 8, 1);  // device 1:3, /dev/null, for '3' and '4'
    Octal(header, 337, 8, 3);
    Put(header, 148, 8, "        ");
    unsigned sum = 0;
    for (unsigned char c : header) sum += c;
    Octal(header, 148, 7, sum);
    bytes_ += header + data + std::string((512 - data.size() % 512) % 512, '\0');
    return *this;
  }

  std::string bytes_;
};

// Every file under `root` (but not under `skip`), with its type, mode and contents: what a
// refused unpack must leave as it was.
std::map<std::string, std::string> Snapshot(const fs::path& root, const fs::path& skip) {
  std::map<std::string, std::string> files;
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator();
       ++it) {
    if (it->path() == skip) {
      it.disable_recursion_pending();
      continue;
    }
    struct stat st {};
    lstat(it->path().c_str(), &st);
    std::string what = std::to_string(st.st_mode);
    what.append(" links=").append(std::to_string(st.st_nlink));
    if (S_ISREG(st.st_mode)) what.append(" ").append(Read(it->path()));
    files[it->path().string()] = what;
  }
  return files;
}

// A directory with a file outside the unpack target, which no tar may touch.
class UnpackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = dir_.path();
    victim_ = root_ / "outside" / "victim.txt";
    Write(victim_, "original");
    out_ = root_ / "out";
    tar_ = fs::path(tars_.path()) / "t.tar";
  }
  // Unpacks `tar` into out_ and expects a refusal that mentions `entry` and `why`, with
  // nothing outside out_ changed.
  void ExpectRefused(const TarBuilder& tar, const std::string& entry, const std::string& why) {
    tar.WriteTo(tar_);
    auto before = Snapshot(root_, out_);
    Status unpacked = UnpackTar(tar_.string(), out_.string());
    ASSERT_FALSE(unpacked.ok()) << "unpacked a tar with " << entry;
    EXPECT_NE(unpacked.message().find("'" + entry + "'"), std::string::npos) << unpacked.message();
    EXPECT_NE(unpacked.message().find(why), std::string::npos) << unpacked.message();
    EXPECT_EQ(Snapshot(root_, out_), before);
    EXPECT_EQ(Read(victim_), "original");
    EXPECT_EQ(fs::hard_link_count(victim_), 1u);
  }

  serve::testing::TempDir dir_;
  serve::testing::TempDir tars_;
  fs::path root_, victim_, out_, tar_;
};

TEST_F(UnpackTest, UnpacksFilesDirectoriesLinksAndInnerHardLinks) {
  TarBuilder tar;
  tar.Directory("pkg")
      .File("pkg/a.py", "a = 1\n")
      .HardLink("pkg/b.py", "pkg/a.py")
      .Symlink("venv-python", "/usr/bin/python3")
      .Symlink("pkg/same.py", "a.py");
  tar.WriteTo(tar_);
  Status unpacked = UnpackTar(tar_.string(), out_.string());
  ASSERT_TRUE(unpacked.ok()) << unpacked.message();
  EXPECT_EQ(Read(out_ / "pkg" / "b.py"), "a = 1\n");
  EXPECT_EQ(fs::hard_link_count(out_ / "pkg" / "a.py"), 2u);
  EXPECT_EQ(fs::read_symlink(out_ / "venv-python"), "/usr/bin/python3");
  EXPECT_EQ(Read(out_ / "pkg" / "same.py"), "a = 1\n");
}

TEST_F(UnpackTest, RefusesAnAbsoluteHardLink) {
  ExpectRefused(TarBuilder().HardLink("h", victim_.string(), "owned"), "h", "absolute");
}

TEST_F(UnpackTest, RefusesAHardLinkClimbingOut) {
  ExpectRefused(TarBuilder().HardLink("h", "../outside/victim.txt", "owned"), "h", "..");
}

TEST_F(UnpackTest, RefusesAHardLinkThroughASymlink) {
  ExpectRefused(TarBuilder()
                    .Symlink("lnk", (root_ / "outside").string())
                    .HardLink("h", "lnk/victim.txt", "owned"),
                "h", "symbolic link lnk");
  ExpectRefused(TarBuilder().Symlink("rel", "../outside").HardLink("h", "rel/victim.txt", "owned"),
                "h", "symbolic link rel");
}

TEST_F(UnpackTest, RefusesAHardLinkToWhatIsNotThere) {
  ExpectRefused(TarBuilder().HardLink("h", "missing.txt"), "h", "not a regular file");
}

TEST_F(UnpackTest, RefusesDevicesAndFifos) {
  ExpectRefused(TarBuilder().File("ok.txt", "fine").Special("null", '3'), "null",
                "character device");
  EXPECT_FALSE(fs::exists(out_ / "null"));
  ExpectRefused(TarBuilder().Special("disk", '4'), "disk", "block device");
  EXPECT_FALSE(fs::exists(out_ / "disk"));
  ExpectRefused(TarBuilder().Special("pipe", '6'), "pipe", "FIFO");
  EXPECT_FALSE(fs::exists(out_ / "pipe"));
}

TEST_F(UnpackTest, RefusesWritingThroughASymlink) {
  ExpectRefused(
      TarBuilder().Symlink("lnk", (root_ / "outside").string()).File("lnk/victim.txt", "owned"),
      "lnk/victim.txt", "symbolic link lnk");
  ExpectRefused(TarBuilder().Symlink("rel", "../outside").File("rel/new.txt", "owned"),
                "rel/new.txt", "symbolic link rel");
  EXPECT_FALSE(fs::exists(root_ / "outside" / "new.txt"));
  // Replacing a link to a file by the file is refused too: it is no working directory we make.
  ExpectRefused(TarBuilder().Symlink("v", victim_.string()).File("v", "owned"), "v",
                "symbolic link v");
}

TEST_F(UnpackTest, RefusesAnAbsolutePath) {
  ExpectRefused(TarBuilder().File((root_ / "outside" / "new.txt").string(), "owned"),
                (root_ / "outside" / "new.txt").string(), "absolute");
  EXPECT_FALSE(fs::exists(root_ / "outside" / "new.txt"));
}

TEST_F(UnpackTest, RefusesAPathClimbingOut) {
  ExpectRefused(TarBuilder().File("../outside/victim.txt", "owned"), "../outside/victim.txt", "..");
  ExpectRefused(TarBuilder().File("a/../../escaped.txt", "owned"), "a/../../escaped.txt", "..");
  EXPECT_FALSE(fs::exists(root_ / "escaped.txt"));
}

TEST_F(UnpackTest, DropsSetuidSetgidAndStickyBits) {
  TarBuilder tar;
  tar.File("suid", "#!/bin/sh\n", 04755)
      .File("sgid", "#!/bin/sh\n", 02755)
      .Directory("sticky", 01777);
  tar.WriteTo(tar_);
  Status unpacked = UnpackTar(tar_.string(), out_.string());
  ASSERT_TRUE(unpacked.ok()) << unpacked.message();
  struct stat st {};
  ASSERT_EQ(lstat((out_ / "suid").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  ASSERT_EQ(lstat((out_ / "sgid").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  ASSERT_EQ(lstat((out_ / "sticky").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07000, 0u);
}

TEST_F(UnpackTest, RefusesCompressedTarsNamingTheCompression) {
  // gzip and zstd frames (their magic numbers are all CheckTar looks at).
  Write(root_ / "code.tar.gz", std::string("\x1f\x8b\x08\x00", 4) + std::string(600, 'x'));
  Status gz = CheckTar((root_ / "code.tar.gz").string());
  ASSERT_FALSE(gz.ok());
  EXPECT_NE(gz.message().find("gzip-compressed"), std::string::npos) << gz.message();
  EXPECT_NE(gz.message().find("gunzip"), std::string::npos) << gz.message();
  Write(root_ / "code.tar.zst", std::string("\x28\xb5\x2f\xfd", 4) + std::string(600, 'x'));
  Status zst = UnpackTar((root_ / "code.tar.zst").string(), out_.string());
  ASSERT_FALSE(zst.ok());
  EXPECT_NE(zst.message().find("zstd-compressed"), std::string::npos) << zst.message();
  TarBuilder().File("a", "b").WriteTo(tar_);
  EXPECT_TRUE(CheckTar(tar_.string()).ok());
}

// Found by fuzz/tar_unpack.cc: libarchive gives no error text when a tar ends inside a pax
// header's data, and the unpacker built its message from that null pointer.
TEST_F(UnpackTest, TarCutShortInsideAPaxHeaderIsAClearError) {
  TarBuilder tar;
  tar.Pax("131 path=" + std::string(121, 'a') + "\n").File("a", "b");
  tar.WriteCutTo(tar_, 512);
  Status unpacked = UnpackTar(tar_.string(), out_.string());
  ASSERT_FALSE(unpacked.ok());
  EXPECT_EQ(unpacked.message(), "cannot read " + tar_.string() +
                                    ": libarchive gave no reason (is the file cut short or "
                                    "damaged?)");
}

TEST(UnpackFileTest, NotATarIsAClearError) {
  serve::testing::TempDir dir;
  Write(fs::path(dir.path()) / "x.tar", "this is not a tar file at all");
  Status unpacked = UnpackTar(dir.path() + "/x.tar", dir.path() + "/out");
  ASSERT_FALSE(unpacked.ok());
  EXPECT_NE(unpacked.message().find("x.tar"), std::string::npos) << unpacked.message();
}

}  // namespace
}  // namespace serve::artifact
