#include "replica/worker_user.h"

#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <vector>

namespace serve::replica {
namespace {

std::string OctalMode(mode_t mode) {
  char text[8];
  snprintf(text, sizeof(text), "%04o", static_cast<unsigned>(mode & 07777));
  return text;
}

// getpwnam_r/getpwuid_r with a buffer that grows until the entry fits.
template <typename Lookup>
Result<std::optional<WorkerUser>> LookUp(Lookup lookup) {
  std::vector<char> buffer(1024);
  while (true) {
    passwd entry{};
    passwd* found = nullptr;
    int rc = lookup(&entry, buffer.data(), buffer.size(), &found);
    if (rc == ERANGE && buffer.size() < (1u << 20)) {
      buffer.resize(buffer.size() * 2);
      continue;
    }
    if (rc != 0)
      return Status::Error(std::string("cannot read the user database: ") + strerror(rc));
    if (found == nullptr) return std::optional<WorkerUser>();
    return std::optional<WorkerUser>(WorkerUser{entry.pw_name, entry.pw_uid, entry.pw_gid});
  }
}

}  // namespace

Result<std::optional<WorkerUser>> ResolveWorkerUser(const std::string& value, uid_t agent_uid) {
  std::string wanted = value;
  if (wanted.empty()) {
    if (agent_uid != 0) return std::optional<WorkerUser>();
    wanted = "nobody";
  }
  Result<std::optional<WorkerUser>> found = std::optional<WorkerUser>();
  bool numeric = wanted.find_first_not_of("0123456789") == std::string::npos && wanted.size() <= 9;
  if (numeric) {
    uid_t uid = static_cast<uid_t>(std::strtoul(wanted.c_str(), nullptr, 10));
    found = LookUp([uid](passwd* entry, char* buffer, size_t size, passwd** result) {
      return getpwuid_r(uid, entry, buffer, size, result);
    });
    // A uid without a name is still a user to run as (a container's, say), in its own group.
    if (found.ok() && !found->has_value()) {
      found = std::optional<WorkerUser>(WorkerUser{wanted, uid, static_cast<gid_t>(uid)});
    }
  } else {
    found = LookUp([&wanted](passwd* entry, char* buffer, size_t size, passwd** result) {
      return getpwnam_r(wanted.c_str(), entry, buffer, size, result);
    });
  }
  if (!found.ok()) return found.status();
  if (!found->has_value()) {
    return Status::Error("--worker-user: there is no user '" + wanted +
                         "' on this machine; create it (useradd --system --no-create-home " +
                         wanted + ") or name another user, or a numeric uid");
  }
  WorkerUser user = **found;
  if (user.uid == agent_uid) return std::optional<WorkerUser>();
  if (agent_uid != 0) {
    return Status::Error("--worker-user " + wanted +
                         ": only a node agent running as root can run "
                         "its workers as another user (this one runs as uid " +
                         std::to_string(agent_uid) +
                         "); leave --worker-user out to run them as the agent's user");
  }
  if (user.uid == 0) return std::optional<WorkerUser>();
  return std::optional<WorkerUser>(user);
}

Status CheckWorkerCanReach(const WorkerUser& user, const std::string& dir) {
  std::error_code ec;
  std::filesystem::path absolute = std::filesystem::absolute(dir, ec).lexically_normal();
  if (ec) return Status::Error("cannot resolve " + dir + ": " + ec.message());
  std::filesystem::path at = "/";
  std::vector<std::filesystem::path> chain = {at};
  for (const auto& part : absolute.relative_path()) {
    if (part.empty()) continue;
    at /= part;
    chain.push_back(at);
  }
  for (const auto& step : chain) {
    struct stat st {};
    if (stat(step.c_str(), &st) != 0) {
      if (errno == ENOENT) break;  // made later by the agent, with a searchable mode
      return Status::Error("cannot inspect " + step.string() + ": " + strerror(errno));
    }
    mode_t needed = st.st_uid == user.uid ? S_IXUSR : st.st_gid == user.gid ? S_IXGRP : S_IXOTH;
    if ((st.st_mode & needed) == 0) {
      return Status::Error(
          "workers run as user " + user.name + " (uid " + std::to_string(user.uid) +
          ") but cannot reach the node's work directory " + absolute.string() + ": " +
          step.string() + " is mode " + OctalMode(st.st_mode) + ", owned by uid " +
          std::to_string(st.st_uid) +
          ". Choose a --work-dir they can reach (for example under /var/lib/serve), make " +
          step.string() +
          " searchable (chmod o+x), or, knowing that user code then runs as "
          "root, --worker-user root");
    }
  }
  return Status::Ok();
}

Status BecomeWorkerUser(const WorkerUser& user, pid_t agent_pid) {
  if (setgroups(0, nullptr) != 0) {
    return Status::Error(std::string("cannot drop the supplementary groups: ") + strerror(errno));
  }
  if (setresgid(user.gid, user.gid, user.gid) != 0) {
    return Status::Error("cannot become group " + std::to_string(user.gid) + ": " +
                         strerror(errno));
  }
  if (setresuid(user.uid, user.uid, user.uid) != 0) {
    return Status::Error("cannot become user " + user.name + " (uid " + std::to_string(user.uid) +
                         "): " + strerror(errno));
  }
  // Never back: if root could be regained, the switch protected nothing.
  if (user.uid != 0 && (setuid(0) == 0 || seteuid(0) == 0)) {
    return Status::Error("the worker could become root again after switching to " + user.name);
  }
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SERVE_LEAK_CHECKED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(SERVE_LEAK_CHECKED)
  // The switch made the process non-dumpable, which keeps LeakSanitizer's tracer (a process of
  // its own) from reading the threads at exit. Sanitizer builds are for tests only; a release
  // worker stays non-dumpable, so another worker of the same user cannot ptrace it.
  prctl(PR_SET_DUMPABLE, 1);
#endif
  // The switch cleared the parent-death signal; the agent may even have gone meanwhile.
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (agent_pid > 0 && getppid() != agent_pid) {
    return Status::Error("the node agent exited while this worker started");
  }
  // User code looks for its home for caches and settings: its own scratch directory is the one
  // place it may write; the caller points HOME there.
  setenv("USER", user.name.c_str(), 1);
  setenv("LOGNAME", user.name.c_str(), 1);
  return Status::Ok();
}

}  // namespace serve::replica
