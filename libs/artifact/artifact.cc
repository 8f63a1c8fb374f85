#include "artifact/artifact.h"

#include <archive.h>
#include <archive_entry.h>
#include <openssl/evp.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <vector>

#include "base/shared_library.h"

namespace serve::artifact {
namespace {

namespace fs = std::filesystem;

std::string Hex(const unsigned char* bytes, size_t size) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (size_t i = 0; i < size; ++i) {
    out.push_back(kDigits[bytes[i] >> 4]);
    out.push_back(kDigits[bytes[i] & 0xf]);
  }
  return out;
}

// libarchive is opened at first use (see base/shared_library.h): replica workers link this
// library but only those with a packaged working directory unpack anything.
#define SERVE_LIBARCHIVE_FUNCTIONS(X) \
  X(archive_entry_free) \
  X(archive_entry_new) \
  X(archive_entry_pathname) \
  X(archive_entry_set_filetype) \
  X(archive_entry_set_gid) \
  X(archive_entry_set_mtime) \
  X(archive_entry_set_pathname) \
  X(archive_entry_set_perm) \
  X(archive_entry_set_size) \
  X(archive_entry_set_symlink) \
  X(archive_entry_set_uid) \
  X(archive_error_string) \
  X(archive_read_data_block) \
  X(archive_read_free) \
  X(archive_read_new) \
  X(archive_read_next_header) \
  X(archive_read_open_filename) \
  X(archive_read_support_format_tar) \
  X(archive_write_close) \
  X(archive_write_data) \
  X(archive_write_data_block) \
  X(archive_write_disk_new) \
  X(archive_write_disk_set_options) \
  X(archive_write_finish_entry) \
  X(archive_write_free) \
  X(archive_write_header) \
  X(archive_write_new) \
  X(archive_write_open_filename) \
  X(archive_write_set_format_pax_restricted)

struct LibArchive {
  SERVE_LIBARCHIVE_FUNCTIONS(SERVE_LIBRARY_FUNCTION)
};

Result<LibArchive> LoadLibArchive() {
  SERVE_LOAD_LIBRARY(LibArchive, "libarchive.so.13", "libarchive13",
                     SERVE_LIBARCHIVE_FUNCTIONS);
}

const Result<LibArchive>& LoadedLibArchive() {
  static const Result<LibArchive> library = LoadLibArchive();
  return library;
}

// Only after LoadedLibArchive() succeeded.
const LibArchive& Archive() { return *LoadedLibArchive(); }

struct ArchiveWriter {
  void operator()(archive* a) const { Archive().archive_write_free(a); }
};
struct ArchiveReader {
  void operator()(archive* a) const { Archive().archive_read_free(a); }
};
struct EntryFree {
  void operator()(archive_entry* e) const { Archive().archive_entry_free(e); }
};

bool Skipped(const fs::path& name) {
  return name == "__pycache__" || name == ".git";
}

}  // namespace

Sha256::Sha256() : context_(EVP_MD_CTX_new()) {
  EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(context_), EVP_sha256(), nullptr);
}

Sha256::~Sha256() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(context_)); }

void Sha256::Update(std::string_view bytes) {
  EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(context_), bytes.data(), bytes.size());
}

std::string Sha256::Digest() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(context_), digest, &size);
  return "sha256:" + Hex(digest, size);
}

std::string DigestOf(std::string_view bytes) {
  Sha256 sha;
  sha.Update(bytes);
  return sha.Digest();
}

Result<std::string> DigestFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::Error("cannot read " + path + ": " + std::strerror(errno));
  Sha256 sha;
  std::vector<char> buffer(1 << 16);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    sha.Update(std::string_view(buffer.data(), static_cast<size_t>(in.gcount())));
  }
  if (in.bad()) return Status::Error("cannot read " + path + ": " + std::strerror(errno));
  return sha.Digest();
}

Result<std::string> PackDirectory(const std::string& directory, const std::string& tar_path) {
  std::error_code ec;
  if (!fs::is_directory(directory, ec)) {
    return Status::Error("working_dir " + directory + " is not a directory");
  }
  // Collect entries first, then write them sorted: directory iteration order is the file
  // system's, and the digest must not depend on it.
  std::vector<fs::path> entries;
  fs::recursive_directory_iterator it(directory, fs::directory_options::none, ec);
  if (ec) return Status::Error("cannot list " + directory + ": " + ec.message());
  for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) return Status::Error("cannot list " + directory + ": " + ec.message());
    if (Skipped(it->path().filename())) {
      if (it->is_directory() && !it->is_symlink()) it.disable_recursion_pending();
      continue;
    }
    entries.push_back(it->path().lexically_relative(directory));
  }
  std::sort(entries.begin(), entries.end());

  if (!LoadedLibArchive().ok()) return LoadedLibArchive().status();
  std::unique_ptr<archive, ArchiveWriter> out(Archive().archive_write_new());
  Archive().archive_write_set_format_pax_restricted(out.get());
  if (Archive().archive_write_open_filename(out.get(), tar_path.c_str()) != ARCHIVE_OK) {
    return Status::Error("cannot write " + tar_path + ": " + Archive().archive_error_string(out.get()));
  }
  std::vector<char> buffer(1 << 16);
  for (const fs::path& relative : entries) {
    fs::path full = fs::path(directory) / relative;
    struct stat st {};
    if (lstat(full.c_str(), &st) != 0) {
      return Status::Error("cannot read " + full.string() + ": " + std::strerror(errno));
    }
    std::unique_ptr<archive_entry, EntryFree> entry(Archive().archive_entry_new());
    Archive().archive_entry_set_pathname(entry.get(), relative.generic_string().c_str());
    Archive().archive_entry_set_mtime(entry.get(), 0, 0);
    Archive().archive_entry_set_uid(entry.get(), 0);
    Archive().archive_entry_set_gid(entry.get(), 0);
    if (S_ISDIR(st.st_mode)) {
      Archive().archive_entry_set_filetype(entry.get(), AE_IFDIR);
      Archive().archive_entry_set_perm(entry.get(), 0755);
    } else if (S_ISLNK(st.st_mode)) {
      std::string target = fs::read_symlink(full, ec).string();
      if (ec) return Status::Error("cannot read link " + full.string() + ": " + ec.message());
      Archive().archive_entry_set_filetype(entry.get(), AE_IFLNK);
      Archive().archive_entry_set_perm(entry.get(), 0777);
      Archive().archive_entry_set_symlink(entry.get(), target.c_str());
    } else if (S_ISREG(st.st_mode)) {
      Archive().archive_entry_set_filetype(entry.get(), AE_IFREG);
      Archive().archive_entry_set_perm(entry.get(), (st.st_mode & S_IXUSR) ? 0755 : 0644);
      Archive().archive_entry_set_size(entry.get(), st.st_size);
    } else {
      return Status::Error(full.string() +
                           " is neither a file, a directory nor a link; remove it from the "
                           "working_dir");
    }
    if (Archive().archive_write_header(out.get(), entry.get()) != ARCHIVE_OK) {
      return Status::Error("cannot add " + full.string() + " to " + tar_path + ": " +
                           Archive().archive_error_string(out.get()));
    }
    if (S_ISREG(st.st_mode)) {
      std::ifstream in(full, std::ios::binary);
      if (!in) return Status::Error("cannot read " + full.string() + ": " + std::strerror(errno));
      while (in) {
        in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
        auto n = static_cast<size_t>(in.gcount());
        if (n > 0 && Archive().archive_write_data(out.get(), buffer.data(), n) < 0) {
          return Status::Error("cannot write " + tar_path + ": " +
                               Archive().archive_error_string(out.get()));
        }
      }
    }
  }
  if (Archive().archive_write_close(out.get()) != ARCHIVE_OK) {
    return Status::Error("cannot finish " + tar_path + ": " + Archive().archive_error_string(out.get()));
  }
  out.reset();
  return DigestFile(tar_path);
}

Status UnpackTar(const std::string& tar_path, const std::string& directory) {
  std::error_code ec;
  fs::create_directories(directory, ec);
  if (ec) return Status::Error("cannot create " + directory + ": " + ec.message());
  if (!LoadedLibArchive().ok()) return LoadedLibArchive().status();
  std::unique_ptr<archive, ArchiveReader> in(Archive().archive_read_new());
  Archive().archive_read_support_format_tar(in.get());
  if (Archive().archive_read_open_filename(in.get(), tar_path.c_str(), 1 << 16) != ARCHIVE_OK) {
    return Status::Error("cannot open " + tar_path + ": " + Archive().archive_error_string(in.get()));
  }
  std::unique_ptr<archive, ArchiveWriter> out(Archive().archive_write_disk_new());
  Archive().archive_write_disk_set_options(
      out.get(), ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                     ARCHIVE_EXTRACT_SECURE_SYMLINKS);
  archive_entry* entry = nullptr;
  while (true) {
    int rc = Archive().archive_read_next_header(in.get(), &entry);
    if (rc == ARCHIVE_EOF) break;
    if (rc != ARCHIVE_OK) {
      return Status::Error("cannot read " + tar_path + ": " + Archive().archive_error_string(in.get()));
    }
    std::string name = Archive().archive_entry_pathname(entry);
    // Checked here rather than by libarchive, which sees the prefixed, absolute path.
    fs::path relative(name);
    bool climbs = std::any_of(relative.begin(), relative.end(),
                              [](const fs::path& part) { return part == ".."; });
    if (relative.is_absolute() || climbs) {
      return Status::Error("refusing " + name + " in " + tar_path +
                           ": it would land outside the directory it is unpacked into");
    }
    Archive().archive_entry_set_pathname(entry, (fs::path(directory) / name).c_str());
    if (Archive().archive_write_header(out.get(), entry) != ARCHIVE_OK) {
      return Status::Error("cannot unpack " + name + " from " + tar_path + ": " +
                           Archive().archive_error_string(out.get()));
    }
    const void* block = nullptr;
    size_t size = 0;
    la_int64_t offset = 0;
    while ((rc = Archive().archive_read_data_block(in.get(), &block, &size, &offset)) == ARCHIVE_OK) {
      if (Archive().archive_write_data_block(out.get(), block, size, offset) != ARCHIVE_OK) {
        return Status::Error("cannot unpack " + name + ": " + Archive().archive_error_string(out.get()));
      }
    }
    if (rc != ARCHIVE_EOF) {
      return Status::Error("cannot read " + name + " from " + tar_path + ": " +
                           Archive().archive_error_string(in.get()));
    }
    if (Archive().archive_write_finish_entry(out.get()) != ARCHIVE_OK) {
      return Status::Error("cannot unpack " + name + ": " + Archive().archive_error_string(out.get()));
    }
  }
  return Status::Ok();
}

}  // namespace serve::artifact
