#include "proxy/router.h"

#include <algorithm>
#include <nlohmann/json.hpp>

namespace serve::proxy {
namespace {

std::string Str(const flatbuffers::String* s) { return s == nullptr ? "" : s->str(); }

bool PrefixMatches(std::string_view prefix, std::string_view path) {
  if (prefix == "/") return true;
  if (path.size() < prefix.size() || path.compare(0, prefix.size(), prefix) != 0) return false;
  return path.size() == prefix.size() || path[prefix.size()] == '/';
}

}  // namespace

Router::Router(std::string ns) : ns_(std::move(ns)) {}

bool Router::Update(const wire::RouteTable& table) {
  std::string controller = Str(table.controller_id());
  if (have_table_ && controller == controller_id_ && table.generation() < generation_) {
    return false;
  }
  std::vector<Route> routes;
  if (table.routes() != nullptr) {
    for (const auto* r : *table.routes()) {
      if (r == nullptr || r->route_prefix() == nullptr) continue;
      Route route;
      route.prefix = r->route_prefix()->str();
      route.deployment = Str(r->deployment());
      if (r->replicas() != nullptr) {
        for (const auto* replica : *r->replicas()) {
          if (replica == nullptr || replica->id() == nullptr) continue;
          route.replicas.push_back(ReplicaTarget{replica->id()->str(),
                                                 ns_ + ".replica." + replica->id()->str(),
                                                 std::max(1, replica->max_concurrent_queries())});
        }
      }
      routes.push_back(std::move(route));
    }
  }
  std::sort(routes.begin(), routes.end(),
            [](const Route& a, const Route& b) { return a.prefix.size() > b.prefix.size(); });
  routes_ = std::move(routes);
  generation_ = table.generation();
  controller_id_ = controller;
  have_table_ = true;
  // Forget counts of replicas that left and have nothing in flight.
  std::erase_if(in_flight_, [](const auto& entry) { return entry.second <= 0; });
  return true;
}

const Route* Router::Lookup(std::string_view path) const {
  for (const Route& route : routes_) {
    if (PrefixMatches(route.prefix, path)) return &route;
  }
  return nullptr;
}

int Router::InFlight(const std::string& replica_id) const {
  auto it = in_flight_.find(replica_id);
  return it == in_flight_.end() ? 0 : it->second;
}

void Router::Release(const std::string& replica_id) {
  auto it = in_flight_.find(replica_id);
  if (it != in_flight_.end() && --it->second <= 0) in_flight_.erase(it);
}

const ReplicaTarget* Router::Pick(const Route& route, const std::set<std::string>& exclude,
                                  bool* all_full) {
  // Candidates are few (replicas of one deployment); gather them without allocating much.
  const ReplicaTarget* candidates[64];
  std::vector<const ReplicaTarget*> many;
  size_t count = 0;
  bool any_excluded_only = true;
  for (const ReplicaTarget& replica : route.replicas) {
    if (exclude.count(replica.id) > 0) continue;
    any_excluded_only = false;
    if (InFlight(replica.id) >= replica.max_concurrent_queries) continue;
    if (count < 64) {
      candidates[count] = &replica;
    } else {
      if (many.empty()) many.assign(candidates, candidates + 64);
      many.push_back(&replica);
    }
    ++count;
  }
  if (all_full != nullptr) *all_full = count == 0 && !any_excluded_only;
  if (count == 0) return nullptr;
  auto at = [&](size_t i) { return many.empty() ? candidates[i] : many[i]; };
  if (count == 1) return at(0);
  std::uniform_int_distribution<size_t> pick(0, count - 1);
  size_t a = pick(rng_);
  size_t b = pick(rng_);
  if (a == b) b = (a + 1) % count;
  return InFlight(at(a)->id) <= InFlight(at(b)->id) ? at(a) : at(b);
}

std::string Router::RoutesJson() const {
  nlohmann::json routes = nlohmann::json::object();
  for (const Route& route : routes_) routes[route.prefix] = route.deployment;
  return routes.dump();
}

}  // namespace serve::proxy
