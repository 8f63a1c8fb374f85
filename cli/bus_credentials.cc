#include "cli/bus_credentials.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace serve::cli {
namespace {

Result<std::string> RandomPassword() {
  unsigned char bytes[16];
  size_t got = 0;
  while (got < sizeof bytes) {
    ssize_t n = getrandom(bytes + got, sizeof bytes - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::Error(std::string("cannot make a password: ") + strerror(errno));
    got += static_cast<size_t>(n);
  }
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 15]);
  }
  return out;
}

std::optional<bus::Role> RoleNamed(const std::string& name) {
  for (bus::Role role : bus::kAllRoles) {
    if (bus::RoleName(role) == name) return role;
  }
  return std::nullopt;
}

}  // namespace

Result<BusCredentials> BusCredentials::Generate(const std::string& ns) {
  BusCredentials out;
  for (bus::Role role : bus::kAllRoles) {
    auto password = RandomPassword();
    if (!password.ok()) return password.status();
    out.users[role] = {bus::UserName(ns, role), *password};
  }
  return out;
}

std::string BusCredentialsPath(const std::string& run_dir) { return run_dir + "/bus-credentials"; }

Status WritePrivateFile(const std::string& path, const std::string& text) {
  std::string temporary = path + ".tmp";
  int fd = open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Status::Error("cannot write " + temporary + ": " + strerror(errno));
  // An earlier file of another mode keeps its mode under O_CREAT: set it.
  fchmod(fd, 0600);
  size_t written = 0;
  while (written < text.size()) {
    ssize_t n = write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      std::string why = strerror(errno);
      close(fd);
      return Status::Error("cannot write " + temporary + ": " + why);
    }
    written += static_cast<size_t>(n);
  }
  close(fd);
  if (rename(temporary.c_str(), path.c_str()) != 0) {
    return Status::Error("cannot write " + path + ": " + strerror(errno));
  }
  return Status::Ok();
}

Status WriteBusCredentials(const std::string& path, const BusCredentials& credentials) {
  std::string text =
      "# NATS users of this instance, written by serve start: <role> <user> <password>\n";
  for (const auto& [role, user] : credentials.users) {
    text += std::string(bus::RoleName(role)) + " " + user.user + " " + user.password + "\n";
  }
  return WritePrivateFile(path, text);
}

Result<std::optional<BusCredentials>> ReadBusCredentials(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    if (errno == ENOENT) return std::optional<BusCredentials>();
    return Status::Error("cannot read " + path + ": " + strerror(errno));
  }
  BusCredentials out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string role_name;
    BusUser user;
    fields >> role_name >> user.user >> user.password;
    auto role = RoleNamed(role_name);
    if (!role.has_value() || user.password.empty()) {
      return Status::Error(path +
                           " is malformed (a line is not '<role> <user> <password>'); "
                           "`serve start` writes it anew when it starts nats-server");
    }
    out.users[*role] = user;
  }
  if (out.users.count(bus::Role::kAdmin) == 0) {
    return Status::Error(path +
                         " names no admin user; `serve start` writes it anew when it "
                         "starts nats-server");
  }
  return std::optional<BusCredentials>(std::move(out));
}

std::string CredsDir(const std::string& run_dir) { return run_dir + "/creds"; }

std::string RoleCredsPath(const std::string& run_dir, bus::Role role) {
  return CredsDir(run_dir) + "/" + std::string(bus::RoleName(role)) + ".creds";
}

std::string WorkerSigningKeyPath(const std::string& run_dir) {
  return CredsDir(run_dir) + "/worker-signing.key";
}

std::string NatsOperatorConfigPath(const std::string& run_dir) {
  return CredsDir(run_dir) + "/nats-operator.conf";
}

Status WriteOperatorCredentials(const std::string& run_dir, const bus::OperatorSetup& setup) {
  std::string dir = CredsDir(run_dir);
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Status::Error("cannot create " + dir + ": " + strerror(errno));
  }
  // An earlier directory of another mode keeps it under mkdir: set it.
  if (chmod(dir.c_str(), 0700) != 0) {
    return Status::Error("cannot make " + dir + " private: " + strerror(errno));
  }
  for (const auto& [role, text] : setup.creds) {
    Status written = WritePrivateFile(RoleCredsPath(run_dir, role), text);
    if (!written.ok()) return written;
  }
  Status written = WritePrivateFile(WorkerSigningKeyPath(run_dir), setup.worker_signing_key);
  if (!written.ok()) return written;
  written = WritePrivateFile(NatsOperatorConfigPath(run_dir), setup.NatsServerConfigText());
  if (!written.ok()) return written;
  // Password mode's file from an earlier start would name users that exist no more.
  std::error_code ec;
  std::filesystem::remove(BusCredentialsPath(run_dir), ec);
  return Status::Ok();
}

void RemoveOperatorCredentials(const std::string& run_dir) {
  std::error_code ec;
  std::filesystem::remove_all(CredsDir(run_dir), ec);
}

bool HasBusCredentials(const bus::Options& options) {
  return !options.user.empty() || !options.password.empty() || !options.token.empty() ||
         !options.creds_file.empty() || !options.user_jwt.empty();
}

}  // namespace serve::cli
