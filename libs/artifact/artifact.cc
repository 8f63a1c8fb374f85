#include "artifact/artifact.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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
  X(archive_entry_filetype)           \
  X(archive_entry_free)               \
  X(archive_entry_hardlink)           \
  X(archive_entry_new)                \
  X(archive_entry_pathname)           \
  X(archive_entry_perm)               \
  X(archive_entry_set_filetype)       \
  X(archive_entry_set_gid)            \
  X(archive_entry_set_mtime)          \
  X(archive_entry_set_pathname)       \
  X(archive_entry_set_perm)           \
  X(archive_entry_set_size)           \
  X(archive_entry_set_symlink)        \
  X(archive_entry_set_uid)            \
  X(archive_error_string)             \
  X(archive_read_data_block)          \
  X(archive_read_free)                \
  X(archive_read_new)                 \
  X(archive_read_next_header)         \
  X(archive_read_open_fd)             \
  X(archive_read_open_filename)       \
  X(archive_read_support_format_tar)  \
  X(archive_write_close)              \
  X(archive_write_data)               \
  X(archive_write_data_block)         \
  X(archive_write_disk_new)           \
  X(archive_write_disk_set_options)   \
  X(archive_write_finish_entry)       \
  X(archive_write_free)               \
  X(archive_write_header)             \
  X(archive_write_new)                \
  X(archive_write_open_filename)      \
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

// libarchive's description of the last error on `a`. It has none for some failures (and for
// warnings), and a null pointer must not reach a std::string.
std::string ErrorOf(archive* a) {
  const char* text = Archive().archive_error_string(a);
  return text != nullptr && *text != '\0'
             ? text
             : "libarchive gave no reason (is the file cut short or damaged?)";
}

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
    return Status::Error("cannot write " + tar_path + ": " + ErrorOf(out.get()));
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
                           ErrorOf(out.get()));
    }
    if (S_ISREG(st.st_mode)) {
      std::ifstream in(full, std::ios::binary);
      if (!in) return Status::Error("cannot read " + full.string() + ": " + std::strerror(errno));
      while (in) {
        in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
        auto n = static_cast<size_t>(in.gcount());
        if (n > 0 && Archive().archive_write_data(out.get(), buffer.data(), n) < 0) {
          return Status::Error("cannot write " + tar_path + ": " + ErrorOf(out.get()));
        }
      }
    }
  }
  if (Archive().archive_write_close(out.get()) != ARCHIVE_OK) {
    return Status::Error("cannot finish " + tar_path + ": " + ErrorOf(out.get()));
  }
  out.reset();
  return DigestFile(tar_path);
}

namespace {

// Why `path`, a name from a tar, may not be used as a path inside the directory it is unpacked
// into: empty when it may.
std::string PathRefusal(const char* path) {
  if (path == nullptr || *path == '\0') return "it has no name";
  fs::path relative(path);
  if (relative.is_absolute()) return "it is an absolute path";
  for (const fs::path& part : relative) {
    if (part == "..") return "it climbs out with \"..\"";
  }
  return "";
}

// The first symbolic link met walking `path` (relative to the working directory) component by
// component, the last one included; empty when there is none. Components that do not exist
// yet end the walk: nothing below them can be a link.
std::string FirstSymlinkOn(const std::string& path) {
  fs::path walked;
  for (const fs::path& part : fs::path(path)) {
    if (part.empty() || part == "." || part == "/") continue;
    walked /= part;
    struct stat st {};
    if (lstat(walked.c_str(), &st) != 0) return "";
    if (S_ISLNK(st.st_mode)) return walked.string();
  }
  return "";
}

// Why the entry may not be unpacked into the working directory: empty when it may. Only
// regular files, directories, symbolic links (to anywhere: the code they belong to runs with
// the rights it has anyway) and hard links to files already unpacked are allowed, and nothing
// is written through a link.
std::string EntryRefusal(archive_entry* entry) {
  const char* name = Archive().archive_entry_pathname(entry);
  if (std::string why = PathRefusal(name); !why.empty()) return why;
  if (std::string link = FirstSymlinkOn(name); !link.empty()) {
    return "it would be written through the symbolic link " + link;
  }
  if (const char* target = Archive().archive_entry_hardlink(entry); target != nullptr) {
    if (std::string why = PathRefusal(target); !why.empty()) {
      return std::string("it is a hard link to ") + target + " and " + why;
    }
    if (std::string link = FirstSymlinkOn(target); !link.empty()) {
      return std::string("it is a hard link to ") + target +
             ", which goes through the symbolic link " + link;
    }
    struct stat st {};
    if (lstat(target, &st) != 0 || !S_ISREG(st.st_mode)) {
      return std::string("it is a hard link to ") + target +
             ", which is not a regular file unpacked before it";
    }
    return "";
  }
  switch (Archive().archive_entry_filetype(entry)) {
    case AE_IFREG:
    case AE_IFDIR:
    case AE_IFLNK:
      return "";
    case AE_IFCHR:
      return "it is a character device";
    case AE_IFBLK:
      return "it is a block device";
    case AE_IFIFO:
      return "it is a FIFO (named pipe)";
    case AE_IFSOCK:
      return "it is a socket";
    default:
      return "it is of an unknown file type";
  }
}

// Unpacks the tar open on `tar_fd` into the working directory. Runs in the child UnpackTar
// forks, whose working directory is the target.
Status UnpackHere(int tar_fd, const std::string& tar_path) {
  std::unique_ptr<archive, ArchiveReader> in(Archive().archive_read_new());
  Archive().archive_read_support_format_tar(in.get());
  if (Archive().archive_read_open_fd(in.get(), tar_fd, 1 << 16) != ARCHIVE_OK) {
    return Status::Error("cannot open " + tar_path + ": " + ErrorOf(in.get()));
  }
  // libarchive's own checks as well as ours: either alone would do today; both guard against
  // the other's bugs. PERM restores the (sanitised) mode bits; owners, ACLs, extended attributes
  // and file flags from the tar are never applied.
  std::unique_ptr<archive, ArchiveWriter> out(Archive().archive_write_disk_new());
  Archive().archive_write_disk_set_options(
      out.get(), ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                     ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS);
  archive_entry* entry = nullptr;
  while (true) {
    int rc = Archive().archive_read_next_header(in.get(), &entry);
    if (rc == ARCHIVE_EOF) break;
    if (rc != ARCHIVE_OK) {
      return Status::Error("cannot read " + tar_path + ": " + ErrorOf(in.get()));
    }
    const char* pathname = Archive().archive_entry_pathname(entry);
    std::string name = pathname != nullptr ? pathname : "";
    if (std::string why = EntryRefusal(entry); !why.empty()) {
      return Status::Error("refusing the entry '" + name + "' in " + tar_path + ": " + why +
                           "; a working directory holds only files, directories and links, "
                           "inside it");
    }
    // Code never needs setuid, setgid or sticky bits, and a setuid file in the cache would be
    // a way up for whoever can run it. Directories stay searchable and writable by the node,
    // so the cache can always remove them.
    mode_t perm = Archive().archive_entry_perm(entry) & 0777;
    if (Archive().archive_entry_filetype(entry) == AE_IFDIR) perm |= 0700;
    Archive().archive_entry_set_perm(entry, perm);
    if (Archive().archive_write_header(out.get(), entry) != ARCHIVE_OK) {
      return Status::Error("cannot unpack " + name + " from " + tar_path + ": " +
                           ErrorOf(out.get()));
    }
    const void* block = nullptr;
    size_t size = 0;
    la_int64_t offset = 0;
    while ((rc = Archive().archive_read_data_block(in.get(), &block, &size, &offset)) == ARCHIVE_OK) {
      if (Archive().archive_write_data_block(out.get(), block, size, offset) != ARCHIVE_OK) {
        return Status::Error("cannot unpack " + name + ": " + ErrorOf(out.get()));
      }
    }
    if (rc != ARCHIVE_EOF) {
      return Status::Error("cannot read " + name + " from " + tar_path + ": " + ErrorOf(in.get()));
    }
    if (Archive().archive_write_finish_entry(out.get()) != ARCHIVE_OK) {
      return Status::Error("cannot unpack " + name + ": " + ErrorOf(out.get()));
    }
  }
  // Directory modes are applied here, after their contents.
  if (Archive().archive_write_close(out.get()) != ARCHIVE_OK) {
    return Status::Error("cannot finish unpacking " + tar_path + ": " + ErrorOf(out.get()));
  }
  return Status::Ok();
}

// Closes a file descriptor when it goes out of scope.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

namespace internal {

Status UnpackIntoWorkingDirectory(int tar_fd, const std::string& tar_path) {
  if (!LoadedLibArchive().ok()) return LoadedLibArchive().status();
  return UnpackHere(tar_fd, tar_path);
}

}  // namespace internal

Status CheckTar(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::Error("cannot read " + path + ": " + std::strerror(errno));
  // A tar header is one 512-byte block; ustar and pax write "ustar" at offset 257.
  std::string head(512, '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  head.resize(static_cast<size_t>(in.gcount()));
  struct Compression {
    std::string_view magic;
    const char* name;
    const char* decompress;
  };
  static constexpr Compression kCompressions[] = {
      {"\x1f\x8b", "gzip", "gunzip"},
      {"BZh", "bzip2", "bunzip2"},
      {"\xfd"
       "7zXZ",
       "xz", "unxz"},
      {"\x28\xb5\x2f\xfd", "zstd", "unzstd"},
  };
  for (const Compression& c : kCompressions) {
    if (std::string_view(head).substr(0, c.magic.size()) == c.magic) {
      return Status::Error(path + " is a " + c.name +
                           "-compressed tar; Serve takes uncompressed tars only: run `" +
                           c.decompress + "` on it, or give the directory as working_dir");
    }
  }
  if (head.size() < 512 || head.compare(257, 5, "ustar") != 0) {
    return Status::Error(path +
                         " is not a tar archive (no ustar header); give a tar made by "
                         "`tar --format=pax`, or the directory as working_dir");
  }
  return Status::Ok();
}

Status UnpackTar(const std::string& tar_path, const std::string& directory) {
  std::error_code ec;
  fs::create_directories(directory, ec);
  if (ec) return Status::Error("cannot create " + directory + ": " + ec.message());
  // Loaded before the fork, so the child only calls into it.
  if (!LoadedLibArchive().ok()) return LoadedLibArchive().status();
  if (Status checked = CheckTar(tar_path); !checked.ok()) return checked;
  Fd tar{::open(tar_path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (tar.fd < 0) return Status::Error("cannot open " + tar_path + ": " + std::strerror(errno));
  Fd target{::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (target.fd < 0) return Status::Error("cannot open " + directory + ": " + std::strerror(errno));
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
    return Status::Error(std::string("cannot unpack ") + tar_path +
                         ": pipe: " + std::strerror(errno));
  }
  Fd from_child{pipe_fds[0]};
  Fd to_parent{pipe_fds[1]};

  // The entries are unpacked by a child process whose working directory is the target, under
  // names relative to it. Prefixing each name with the target instead (as a single process
  // must) would make every name absolute, so libarchive's ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS
  // could not be used, and a hard link's target, which libarchive resolves against the working
  // directory, would have to be rewritten by hand. chdir(2) changes the directory of the whole
  // process, and this one has other threads (the bus client's); a child has only this one. The
  // child reports its error text through the pipe.
  pid_t pid = ::fork();
  if (pid < 0) {
    return Status::Error(std::string("cannot unpack ") + tar_path +
                         ": fork: " + std::strerror(errno));
  }
  if (pid == 0) {
    Status status = ::fchdir(target.fd) == 0
                        ? UnpackHere(tar.fd, tar_path)
                        : Status::Error("cannot enter " + directory + ": " + std::strerror(errno));
    const std::string& text = status.message();
    size_t written = 0;
    while (written < text.size()) {
      ssize_t n = ::write(to_parent.fd, text.data() + written, text.size() - written);
      if (n <= 0 && errno != EINTR) break;
      if (n > 0) written += static_cast<size_t>(n);
    }
    // _exit: the child must not run the parent's exit handlers or flush its buffers.
    ::_exit(status.ok() ? 0 : 1);
  }
  ::close(to_parent.fd);
  to_parent.fd = -1;
  std::string error;
  char buffer[4096];
  while (true) {
    ssize_t n = ::read(from_child.fd, buffer, sizeof(buffer));
    if (n > 0) {
      error.append(buffer, static_cast<size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  int wait_status = 0;
  while (::waitpid(pid, &wait_status, 0) < 0) {
    if (errno != EINTR) {
      return Status::Error(std::string("cannot unpack ") + tar_path +
                           ": waitpid: " + std::strerror(errno));
    }
  }
  if (WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0) return Status::Ok();
  if (!error.empty()) return Status::Error(error);
  if (WIFSIGNALED(wait_status)) {
    return Status::Error("unpacking " + tar_path + " was killed by signal " +
                         std::to_string(WTERMSIG(wait_status)));
  }
  return Status::Error("unpacking " + tar_path + " failed without saying why");
}

}  // namespace serve::artifact
