#include "cli/deployments.h"

#include <chrono>
#include <iostream>
#include <map>
#include <set>
#include <thread>

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

Status SubmitDeployments(Client& client, const config::ConfigFile& config) {
  wire::DeployRequestT request;
  for (const auto& deployment : config.deployments) {
    request.deployments.push_back(
        std::make_unique<wire::DeploymentSpecT>(config::ToSpec(deployment)));
  }
  auto reply = client.CallFor<wire::DeployReply>(client.subjects().ctl_deploy, wire::Pack(request));
  if (!reply.ok()) return reply.status();
  if (!reply->error.empty()) return Status::Error("deploy refused: " + reply->error);
  for (const auto& line : reply->results) std::cout << line << "\n";
  std::cout.flush();
  return Status::Ok();
}

Status WaitUntilHealthy(Client& client, const std::vector<std::string>& names, double timeout_s,
                        StopSignals* stop) {
  wire::StatusRequestT status_request;
  status_request.names = names;
  std::string status_bytes = wire::Pack(status_request);
  std::map<std::string, Progress> shown;
  auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  while (true) {
    if (stop != nullptr && stop->requested()) {
      return Status::Error("interrupted before every deployment was HEALTHY");
    }
    auto status = client.CallFor<wire::StatusReply>(client.subjects().ctl_status, status_bytes, 5);
    if (!status.ok()) return status.status();
    bool all_healthy = !status->deployments.empty();
    for (const auto& d : status->deployments) {
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
    if (lagging_proxies > 0) all_healthy = false;
    if (all_healthy) {
      std::cout << "All " << status->deployments.size() << " deployment(s) are HEALTHY."
                << std::endl;
      return Status::Ok();
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
