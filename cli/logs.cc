#include "cli/logs.h"

#include <poll.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <map>
#include <vector>

#include "cli/client.h"
#include "cli/stop_signals.h"
#include "wire/codec.h"
#include "wire/replica_logs.h"

namespace serve::cli {
namespace {

constexpr double kAskTimeoutS = 2;
// How often --follow looks for a deployment's new replicas.
constexpr double kResolveEveryS = 2;

// One replica's log as this command reads it.
struct Followed {
  int64_t offset = -1;  // -1: not read yet (its tail comes first)
  bool reported_missing = false;
};

// What a node answered for `replica_id`, or why none did.
Result<wire::ReplicaLogsReplyT> AskNodes(Client& client, const std::string& replica_id,
                                         int64_t offset, int tail) {
  wire::ReplicaLogsRequestT request;
  request.replica_id = replica_id;
  request.offset = offset;
  request.tail_lines = tail;
  auto reply = bus::RequestAndWait(client.loop(), client.bus(), client.subjects().logs,
                                   wire::Pack(request), kAskTimeoutS);
  return wire::ReplicaLogsAnswer(
      replica_id, reply.ok() ? std::optional<std::string_view>(reply->data) : std::nullopt);
}

// The replicas `target` stands for: a deployment's current ones (with `is_deployment` set), or
// `target` itself when no deployment has that name (or no controller answers: a replica's
// log needs none).
std::vector<std::string> Resolve(Client& client, const std::string& target, bool* is_deployment,
                                 std::string* note) {
  wire::StatusRequestT request;
  request.names.push_back(target);
  auto status = client.CallFor<wire::StatusReply>(client.subjects().ctl_status, wire::Pack(request),
                                                  kAskTimeoutS,
                                                  /*patient=*/false);
  *is_deployment = false;
  if (!status.ok()) {
    *note = status.error();
    return {target};
  }
  for (const auto& deployment : status->deployments) {
    if (deployment == nullptr || deployment->name != target) continue;
    *is_deployment = true;
    std::vector<std::string> ids;
    for (const auto& replica : deployment->replicas) {
      if (replica != nullptr) ids.push_back(replica->id);
    }
    return ids;
  }
  return {target};
}

// Writes `data` with every line prefixed by `prefix` (empty: as it is).
void Print(const std::string& prefix, const std::string& data) {
  if (prefix.empty()) {
    std::cout << data;
  } else {
    size_t start = 0;
    while (start < data.size()) {
      size_t end = data.find('\n', start);
      size_t stop = end == std::string::npos ? data.size() : end;
      std::cout << prefix << std::string_view(data).substr(start, stop - start) << '\n';
      start = stop + 1;
    }
  }
  std::cout.flush();
}

// Waits up to `seconds`; false when a stop signal came first.
bool Pause(StopSignals& stop, double seconds) {
  pollfd polled{stop.fd(), POLLIN, 0};
  (void)poll(&polled, 1, static_cast<int>(seconds * 1000));
  return !stop.requested();
}

}  // namespace

int ShowLogs(const GlobalOptions& global, const LogsOptions& options) {
  auto connected = ConnectOrExplain(global);
  if (!connected.ok()) {
    std::cerr << "error: " << connected.error() << std::endl;
    return 1;
  }
  Client& client = **connected;
  bool is_deployment = false;
  std::string note;
  std::vector<std::string> ids = Resolve(client, options.target, &is_deployment, &note);
  if (is_deployment && ids.empty() && !options.follow) {
    std::cerr << "error: deployment " << options.target << " has no replica now; `serve status "
              << options.target << "` tells why" << std::endl;
    return 1;
  }
  std::map<std::string, Followed> followed;
  for (const auto& id : ids) followed[id];
  // A deployment's lines say which replica wrote them; a single replica's need not.
  auto prefix = [&](const std::string& id) { return is_deployment ? "[" + id + "] " : ""; };

  // Reads what is new in every followed log. `first`: errors end the command.
  auto read_all = [&](bool first) -> int {
    for (auto& [id, state] : followed) {
      auto answer = AskNodes(client, id, state.offset, options.tail);
      if (!answer.ok()) {
        if (first && !is_deployment) {
          std::cerr << "error: " << answer.error();
          if (!note.empty() && answer.status().kind() == ErrorKind::kNotFound) {
            std::cerr << " (and no deployment of that name could be looked up: " << note << ")";
          }
          std::cerr << std::endl;
          return 1;
        }
        if (!state.reported_missing) {
          std::cerr << "note: " << answer.error() << std::endl;
          state.reported_missing = true;
        }
        continue;
      }
      state.reported_missing = false;
      if (answer->restarted) {
        std::cerr << "note: the log of " << id << " was rotated; reading its new file" << std::endl;
      }
      Print(prefix(id), answer->data);
      state.offset = answer->next_offset;
    }
    return 0;
  };

  StopSignals stop;
  if (int failed = read_all(/*first=*/true); failed != 0) return failed;
  if (!options.follow) return 0;
  double since_resolve = 0;
  while (Pause(stop, options.poll_s)) {
    since_resolve += options.poll_s;
    if (is_deployment && since_resolve >= kResolveEveryS) {
      since_resolve = 0;
      bool still = false;
      std::string ignored;
      for (const auto& id : Resolve(client, options.target, &still, &ignored)) {
        if (still && followed.count(id) == 0) {
          followed[id].offset = 0;  // a new replica: all of its log
        }
      }
    }
    (void)read_all(/*first=*/false);
  }
  return 0;
}

}  // namespace serve::cli
