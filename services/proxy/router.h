#pragma once

#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "wire/serve_generated.h"

namespace serve::proxy {

struct ReplicaTarget {
  std::string id;
  std::string subject;  // <ns>.replica.<id>
  int max_concurrent_queries = 100;
};

struct Route {
  std::string prefix;
  std::string deployment;
  std::vector<ReplicaTarget> replicas;
};

// The proxy's view of the route table: longest-prefix matching on whole path segments, and
// replica choice by power of two choices on this proxy's in-flight counts.
class Router {
 public:
  explicit Router(std::string ns);

  // Replaces the table unless it is older than the one held (same controller, lower generation).
  // Returns true if it was applied.
  bool Update(const wire::RouteTable& table);

  // The route whose prefix is the longest one matching `path` on a segment boundary:
  // "/a" matches "/a", "/a/" and "/a/b" but not "/ab"; "/" matches everything.
  const Route* Lookup(std::string_view path) const;

  // A replica of `route` that is below its max_concurrent_queries and not in `exclude`: the less
  // loaded of two picked at random. Null when none qualifies; `all_full` then tells whether
  // every candidate was at its limit.
  const ReplicaTarget* Pick(const Route& route, const std::set<std::string>& exclude,
                            bool* all_full);

  void Acquire(const std::string& replica_id) { ++in_flight_[replica_id]; }
  void Release(const std::string& replica_id);
  int InFlight(const std::string& replica_id) const;

  // {"/hello": "hello", ...}: the route prefixes and the deployments they lead to.
  std::string RoutesJson() const;
  uint64_t generation() const { return generation_; }
  const std::string& controller_id() const { return controller_id_; }
  size_t route_count() const { return routes_.size(); }

 private:
  std::string ns_;
  std::vector<Route> routes_;  // longest prefix first
  uint64_t generation_ = 0;
  std::string controller_id_;
  bool have_table_ = false;
  std::unordered_map<std::string, int> in_flight_;
  std::mt19937 rng_{std::random_device{}()};
};

}  // namespace serve::proxy
