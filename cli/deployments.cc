#include "cli/deployments.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <thread>

#include "artifact/artifact.h"
#include "artifact/transfer.h"
#include "config/spec.h"

namespace serve::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct Progress {
  int running = 0;
  std::string state;
  std::string message;
};

}  // namespace

std::vector<std::string> DeploymentNames(const config::ConfigFile& config) {
  std::vector<std::string> names;
  for (const auto& deployment : config.deployments) names.push_back(deployment.name);
  return names;
}

namespace {

namespace fs = std::filesystem;

std::string HumanSize(uint64_t bytes) {
  char text[32];
  if (bytes >= (1u << 20)) {
    snprintf(text, sizeof(text), "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  } else if (bytes >= 1024) {
    snprintf(text, sizeof(text), "%.1f KiB", static_cast<double>(bytes) / 1024);
  } else {
    snprintf(text, sizeof(text), "%llu bytes", static_cast<unsigned long long>(bytes));
  }
  return text;
}

// A temporary file removed when it goes out of scope.
struct TempFile {
  std::string path;
  ~TempFile() {
    if (!path.empty()) unlink(path.c_str());
  }
};

}  // namespace

namespace {

// The local path of `d`'s code, checked as CheckLocalCode says; an empty path when `d` names no
// local code (a builtin, or a digest).
Result<fs::path> LocalCode(const config::Deployment& d, const fs::path& base) {
  const bool is_directory = !d.working_dir.empty();
  const std::string& given = is_directory ? d.working_dir : d.artifact;
  if (given.empty() || config::IsArtifactDigest(given)) return fs::path();
  fs::path local = (base / given).lexically_normal();
  if (local.filename().empty()) local = local.parent_path();  // "dir/" or "."
  std::string label = "deployment '" + d.name + "': ";
  std::error_code ec;
  if (is_directory ? !fs::is_directory(local, ec) : !fs::is_regular_file(local, ec)) {
    return Status::Error(label + (is_directory ? "working_dir " : "artifact ") + given + " (" +
                         local.string() + ") " +
                         (fs::exists(local, ec)
                              ? (is_directory ? "is not a directory" : "is not a regular file")
                              : "does not exist") +
                         (is_directory ? ""
                                       : "; build it first, or fix the path (it is "
                                         "relative to the config file)"));
  }
  // A command or python deployment's artifact is unpacked on the nodes: a file they cannot
  // unpack is refused now rather than when every replica fails to start.
  if (!is_directory && (d.runtime == "command" || d.runtime == "python")) {
    if (Status tar = artifact::CheckTar(local.string()); !tar.ok()) {
      return Status::Error(label + "artifact " + given + ": " + tar.message());
    }
  }
  return local;
}

}  // namespace

namespace {

// Prints, as JSON, the literal keyword arguments of the @deployment(...) (or
// @serve.deployment(...)) call decorating the top-level class or function argv[2] of the module
// file argv[1]; {} when there is none. Reads the file with ast: nothing of it runs.
constexpr const char* kReadDecoratorScript = R"PY(
import ast, json, sys
path, name = sys.argv[1], sys.argv[2]
found = {}
try:
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read(), path)
except (OSError, SyntaxError, ValueError):
    tree = ast.Module(body=[], type_ignores=[])
for node in tree.body:
    if getattr(node, "name", None) != name:
        continue
    for decorator in getattr(node, "decorator_list", []):
        if not isinstance(decorator, ast.Call):
            continue
        callee = decorator.func
        called = getattr(callee, "id", None) or getattr(callee, "attr", None)
        if called != "deployment":
            continue
        for keyword in decorator.keywords:
            if keyword.arg is None:
                continue
            try:
                found[keyword.arg] = ast.literal_eval(keyword.value)
            except ValueError:
                found[keyword.arg] = None
print(json.dumps(found))
)PY";

// Runs argv (no shell) and returns what it printed on stdout; an error when it cannot start or
// does not exit with 0.
Result<std::string> OutputOf(const std::vector<std::string>& argv) {
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0)
    return Status::Error(std::string("pipe: ") + strerror(errno));
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 1);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int spawned = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(pipe_fds[1]);
  if (spawned != 0) {
    close(pipe_fds[0]);
    return Status::Error(argv[0] + ": " + strerror(spawned));
  }
  std::string output;
  char buffer[4096];
  for (;;) {
    ssize_t n = read(pipe_fds[0], buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (output.size() < (1 << 20)) output.append(buffer, static_cast<size_t>(n));
  }
  close(pipe_fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return Status::Error(argv[0] + " did not exit cleanly");
  }
  return output;
}

// What @deployment(...) may set, and whether it is a whole number.
struct DecoratorOption {
  const char* name;
  int config::Deployment::*whole = nullptr;
  double config::Deployment::*number = nullptr;
};
constexpr DecoratorOption kDecoratorOptions[] = {
    {"num_replicas", &config::Deployment::num_replicas},
    {"max_concurrent_queries", &config::Deployment::max_concurrent_queries},
    {"health_check_period_s", nullptr, &config::Deployment::health_check_period_s},
    {"health_check_timeout_s", nullptr, &config::Deployment::health_check_timeout_s},
    {"graceful_shutdown_wait_loop_s", nullptr, &config::Deployment::graceful_shutdown_wait_loop_s},
    {"graceful_shutdown_timeout_s", nullptr, &config::Deployment::graceful_shutdown_timeout_s},
};

}  // namespace

Status ApplyDecoratorOptions(config::ConfigFile& config, const std::string& config_path) {
  const fs::path base = fs::absolute(config_path).parent_path();
  const std::string python = "/usr/bin/python3";
  for (config::Deployment& d : config.deployments) {
    if (d.runtime != "python" || d.working_dir.empty() || d.import_path.empty()) continue;
    const size_t colon = d.import_path.find(':');
    std::string module = d.import_path.substr(0, colon);
    const std::string attribute = d.import_path.substr(colon + 1);
    std::replace(module.begin(), module.end(), '.', '/');
    const fs::path dir = (base / d.working_dir).lexically_normal();
    std::error_code ec;
    fs::path file = dir / (module + ".py");
    if (!fs::is_regular_file(file, ec)) file = dir / module / "__init__.py";
    if (!fs::is_regular_file(file, ec) || access(python.c_str(), X_OK) != 0) continue;
    auto printed = OutputOf({python, "-I", "-c", kReadDecoratorScript, file.string(), attribute});
    if (!printed.ok()) continue;  // the node reports what is wrong with the module
    auto options = nlohmann::json::parse(*printed, nullptr, /*allow_exceptions=*/false);
    if (!options.is_object()) continue;
    const std::string shown = file.lexically_relative(dir).string();
    const std::string where =
        "deployment '" + d.name + "': @deployment(...) of " + d.import_path + " in " + shown;
    std::string applied;
    for (const DecoratorOption& option : kDecoratorOptions) {
      if (!options.contains(option.name)) continue;
      if (std::find(d.given.begin(), d.given.end(), option.name) != d.given.end()) continue;
      const nlohmann::json& value = options[option.name];
      const bool whole = option.whole != nullptr;
      if (whole ? !value.is_number_integer() : (!value.is_number() || value.is_boolean())) {
        return Status::Error(
            where + ": " + option.name + " must be " + (whole ? "a whole number" : "a number") +
            " written as a literal, got " + (value.is_null() ? "an expression" : value.dump()));
      }
      if (whole) {
        d.*option.whole = value.get<int>();
      } else {
        d.*option.number = value.get<double>();
      }
      applied += std::string(applied.empty() ? "" : ", ") + option.name + " " + value.dump();
    }
    if (applied.empty()) continue;
    if (Status valid = config::ValidateDeployment(d, config::Limits::Widest()); !valid.ok()) {
      return Status::Error(where + " gives a value the rules refuse: " + valid.message());
    }
    std::cout << d.name << ": " << applied << " from @deployment in " << shown
              << " (the config file does not set them)\n";
  }
  std::cout.flush();
  return Status::Ok();
}

Status CheckLocalCode(const config::ConfigFile& config, const std::string& config_path) {
  fs::path base = fs::absolute(config_path).parent_path();
  for (const auto& d : config.deployments) {
    if (auto local = LocalCode(d, base); !local.ok()) return local.status();
  }
  return Status::Ok();
}

Status UploadCode(Client& client, config::ConfigFile& config, const std::string& config_path) {
  fs::path base = fs::absolute(config_path).parent_path();
  for (auto& d : config.deployments) {
    auto checked = LocalCode(d, base);
    if (!checked.ok()) return checked.status();
    if (checked->empty()) continue;
    const fs::path& local = *checked;
    const bool is_directory = !d.working_dir.empty();
    const std::string given = is_directory ? d.working_dir : d.artifact;
    std::string label = "deployment '" + d.name + "': ";
    TempFile tar;
    std::string upload_path = local.string();
    Result<std::string> digest = std::string();
    if (is_directory) {
      tar.path = (fs::temp_directory_path() / ("serve-" + d.name + "-" +
                                                std::to_string(getpid()) + ".tar"))
                     .string();
      digest = artifact::PackDirectory(local.string(), tar.path);
      upload_path = tar.path;
    } else {
      digest = artifact::DigestFile(local.string());
    }
    if (!digest.ok()) return Status::Error(label + digest.error());
    auto outcome = artifact::Upload(client.loop(), client.bus(), client.subjects(), upload_path,
                                    *digest, 30);
    if (!outcome.ok()) return Status::Error(label + "cannot upload " + given + ": " + outcome.error());
    std::string name = local.filename().string() + (is_directory ? "/" : "");
    std::cout << d.name << ": " << (outcome->sent ? "uploaded " : "") << name << " ("
              << HumanSize(outcome->size) << ", " << digest->substr(0, 19) << "...)"
              << (outcome->sent ? "" : " already stored") << "\n";
    d.artifact = *digest;
    d.artifact_name = name;
    d.working_dir.clear();
  }
  std::cout.flush();
  return Status::Ok();
}

Result<Submitted> SubmitDeployments(Client& client, const config::ConfigFile& config) {
  wire::DeployRequestT request;
  for (const auto& deployment : config.deployments) {
    request.deployments.push_back(
        std::make_unique<wire::DeploymentSpecT>(config::ToSpec(deployment)));
  }
  auto reply = client.CallFor<wire::DeployReply>(client.subjects().ctl_deploy, wire::Pack(request));
  if (!reply.ok()) return reply.status();
  if (!reply->error.empty()) {
    return Status::Error("deploy refused: " + reply->error);
  }
  for (const auto& line : reply->results) std::cout << line << "\n";
  std::cout.flush();
  Submitted submitted;
  submitted.controller_run = reply->controller_run;
  for (size_t i = 0; i < reply->versions.size() && i < config.deployments.size(); ++i) {
    submitted.versions[config.deployments[i].name] = reply->versions[i];
  }
  return submitted;
}

Status WaitUntilHealthy(Client& client, const config::ConfigFile& config, Submitted submitted,
                        double timeout_s, StopSignals* stop) {
  wire::StatusRequestT status_request;
  status_request.names = DeploymentNames(config);
  std::string status_bytes = wire::Pack(status_request);
  std::map<std::string, Progress> shown;
  auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  // A controller that restarts (or fails over) mid-deploy picks the deploy up from its
  // checkpoint: wait for it, within limits, rather than report a failure that is not one.
  constexpr auto kControllerAbsence = std::chrono::seconds(60);
  std::optional<Clock::time_point> unanswered_since;
  while (true) {
    if (stop != nullptr && stop->requested()) {
      return Status::Error("interrupted before every deployment was HEALTHY");
    }
    auto status = client.CallFor<wire::StatusReply>(client.subjects().ctl_status, status_bytes, 5);
    if (!status.ok()) {
      auto now = Clock::now();
      if (!unanswered_since.has_value()) {
        unanswered_since = now;
        std::cout << "  the controller does not answer (" << status.error()
                  << "); waiting for it to come back" << std::endl;
      }
      if (now - *unanswered_since > kControllerAbsence || now > deadline) {
        return Status::Error("the controller has not answered for " +
                             std::to_string(std::chrono::duration_cast<std::chrono::seconds>(
                                                now - *unanswered_since)
                                                .count()) +
                             " s: " + status.error() +
                             "; the deployment goes on once it is back (see `serve status`)");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    if (unanswered_since.has_value()) {
      std::cout << "  the controller answers again" << std::endl;
      unanswered_since.reset();
    }
    if (!submitted.controller_run.empty() && !status->controller_run.empty() &&
        status->controller_run != submitted.controller_run) {
      // The controller that accepted the deploy is gone, and it may have gone before the deploy
      // was stored; its successor then restored the state before it. Deploys are idempotent:
      // send it again ("unchanged" if it was stored) instead of waiting for a state the
      // successor does not know, or taking the old one for it.
      std::cout << "  the controller restarted; sending the deploy again in case it was not "
                   "stored"
                << std::endl;
      // (A run answers status only once its checkpoint is loaded, so this one takes deploys.)
      auto again = SubmitDeployments(client, config);
      if (!again.ok()) return again.status();
      submitted = std::move(*again);
      continue;
    }
    bool all_healthy = !status->deployments.empty();
    for (const auto& d : status->deployments) {
      auto target = submitted.versions.find(d->name);
      if (target != submitted.versions.end() && !target->second.empty() &&
          d->version != target->second) {
        return Status::Error("deployment " + d->name + " is now headed for version " +
                             d->version + ", not " + target->second +
                             " as deployed: another deploy changed it meanwhile (`serve status` "
                             "shows it; deploy again to go back)");
      }
      Progress now;
      for (const auto& r : d->replicas) {
        if (r->state == wire::ReplicaState::RUNNING && r->version == d->version) ++now.running;
      }
      now.state = wire::EnumNameDeploymentState(d->status);
      now.message = d->message;
      Progress& before = shown[d->name];
      if (now.running != before.running || now.state != before.state ||
          now.message != before.message) {
        std::cout << "  " << d->name << ": " << now.state << (now.message.empty() ? "" : " - ")
                  << now.message << std::endl;
        before = now;
      }
      if (d->status == wire::DeploymentState::DEPLOY_FAILED) {
        return Status::Error("deployment " + d->name + " failed: " + d->message);
      }
      if (d->status != wire::DeploymentState::HEALTHY) all_healthy = false;
    }
    // HEALTHY in the controller's books is not yet traffic on the new replicas: wait until every
    // live proxy applied the route table that goes with it.
    int lagging_proxies = 0;
    for (const auto& p : status->proxies) {
      if (p->state == wire::MemberState::HEALTHY && p->route_generation < status->route_generation) {
        ++lagging_proxies;
      }
    }
    bool deployments_healthy = all_healthy;
    // Nor is it while the table that goes with it has not even gone out.
    if (lagging_proxies > 0 || status->routes_pending) all_healthy = false;
    if (all_healthy) {
      std::cout << "All " << status->deployments.size() << " deployment(s) are HEALTHY."
                << std::endl;
      return Status::Ok();
    }
    if (Clock::now() > deadline && deployments_healthy && status->routes_pending) {
      return Status::Error("the controller has not published the route table of this state "
                           "within " +
                           std::to_string(static_cast<int>(timeout_s)) +
                           " s (it publishes none while it recovers); try `serve status` again");
    }
    if (Clock::now() > deadline && deployments_healthy) {
      return Status::Error(std::to_string(lagging_proxies) +
                           " proxies have not applied the new route table within " +
                           std::to_string(static_cast<int>(timeout_s)) +
                           " s; `serve status` lists the proxies and when each was last seen");
    }
    if (Clock::now() > deadline) {
      return Status::Error("not HEALTHY within " + std::to_string(static_cast<int>(timeout_s)) +
                           " s; `serve status` shows why (the deployment goes on trying)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

Status RequestDelete(Client& client, const std::vector<std::string>& names) {
  wire::DeleteRequestT request;
  request.names = names;
  auto reply = client.CallFor<wire::DeleteReply>(client.subjects().ctl_delete, wire::Pack(request));
  if (!reply.ok()) return reply.status();
  if (!reply->error.empty()) return Status::Error(reply->error);
  for (const auto& name : reply->deleted) std::cout << "deleted " << name << "\n";
  std::cout.flush();
  return Status::Ok();
}

Status WaitUntilUnrouted(Client& client, const std::vector<std::string>& names, double timeout_s) {
  std::set<std::string> gone(names.begin(), names.end());
  std::string request = wire::Pack(wire::RouteTableRequestT{});
  auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  std::string still;
  std::string unanswered;
  while (true) {
    auto table = client.CallFor<wire::RouteTable>(client.subjects().ctl_routes, request, 2);
    unanswered = table.ok() ? table->error : table.error();
    if (unanswered.empty()) {
      still.clear();
      for (const auto& route : table->routes) {
        if (gone.count(route->deployment) != 0) {
          still += (still.empty() ? "" : ", ") + route->route_prefix + " -> " + route->deployment;
        }
      }
      if (still.empty()) return Status::Ok();
    }
    if (Clock::now() > deadline) {
      return Status::Error(
          "the controller still routes " +
          (still.empty() ? "to them (it did not answer: " + unanswered + ")" : still) + " after " +
          std::to_string(static_cast<int>(timeout_s)) + " s; `serve status` shows what is left");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace serve::cli
