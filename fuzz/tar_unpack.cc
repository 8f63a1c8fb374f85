// libs/artifact's tar unpacker, as a node runs it on an uploaded working directory: CheckTar,
// then the unpacking itself (UnpackTar's child, run here in-process so the fuzzer sees it) into
// a fresh directory, removed after each input. Besides crashes it checks the unpacker's promise
// that nothing lands outside the directory: the sandbox around it must hold only the tar and
// the directory afterwards.

#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "artifact/artifact.h"

namespace fs = std::filesystem;

namespace {

void Fail(const std::string& why) {
  fprintf(stderr, "tar_unpack: %s\n", why.c_str());
  abort();
}

// /tmp/serve-fuzz-tar-XXXXXX, removed when the process exits.
const fs::path& Sandbox() {
  static const fs::path sandbox = [] {
    std::string pattern = (fs::temp_directory_path() / "serve-fuzz-tar-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) Fail("cannot create a sandbox in the temp directory");
    atexit([] {
      std::error_code ignored;
      fs::remove_all(Sandbox(), ignored);
    });
    return fs::path(pattern);
  }();
  return sandbox;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fs::path& sandbox = Sandbox();
  const fs::path tar = sandbox / "input.tar";
  const fs::path out = sandbox / "out";
  {
    std::ofstream file(tar, std::ios::binary | std::ios::trunc);
    file.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    if (!file) Fail("cannot write " + tar.string());
  }
  fs::create_directory(out);

  serve::Status checked = serve::artifact::CheckTar(tar.string());
  if (!checked.ok() && checked.message().empty()) Fail("CheckTar failed without saying why");

  int tar_fd = open(tar.c_str(), O_RDONLY | O_CLOEXEC);
  int home = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (tar_fd < 0 || home < 0 || chdir(out.c_str()) != 0) Fail("cannot set up " + out.string());
  serve::Status unpacked =
      serve::artifact::internal::UnpackIntoWorkingDirectory(tar_fd, tar.string());
  if (fchdir(home) != 0) Fail("cannot return to the working directory");
  close(home);
  close(tar_fd);
  if (!unpacked.ok() && unpacked.message().empty()) Fail("unpacking failed without saying why");

  for (const fs::directory_entry& entry : fs::directory_iterator(sandbox)) {
    if (entry.path() != tar && entry.path() != out) {
      Fail("the tar wrote " + entry.path().string() + ", outside the directory it unpacks into");
    }
  }
  std::error_code error;
  fs::remove_all(out, error);
  if (error) Fail("cannot remove " + out.string() + ": " + error.message());
  return 0;
}
