#include "controller/reconciler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "controller/clock.h"
#include "wire/serve_generated.h"

namespace serve::controller {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::StartsWith;
using ::testing::UnorderedElementsAre;

// The outside world as the reconciler sees it: records every order and event, and plays the
// node agents, which run what they are told to start until they are told to stop it.
class FakeCluster : public ReconcilerActions {
 public:
  struct StartCall {
    std::string node;
    std::string replica;
    wire::DeploymentSpecT spec;
  };
  struct StopCall {
    std::string node;
    std::string replica;
  };
  struct ReconfigureCall {
    std::string replica;
    std::string user_config;
    std::string config_hash;
  };
  struct EventCall {
    std::string kind;
    std::string name;
    std::string state;
    std::string message;
  };
  struct Worker {
    std::string deployment;
    std::string version;
    double started_at = 0;
    bool ready = true;  // its node reports it as serving; false until its first healthy report
  };

  explicit FakeCluster(const Clock& clock) : clock_(clock) {}

  void StartReplica(const std::string& node_id, const std::string& replica_id,
                    const wire::DeploymentSpecT& spec, const std::string& fingerprint,
                    const std::string& config_hash) override {
    (void)fingerprint;
    (void)config_hash;
    starts.push_back({node_id, replica_id, spec});
    order.push_back("start " + replica_id);
    workers[node_id][replica_id] = Worker{spec.name, spec.version, clock_.Now(), false};
  }
  void StopReplica(const std::string& node_id, const std::string& replica_id) override {
    stops.push_back({node_id, replica_id});
    order.push_back("stop " + replica_id);
    workers[node_id].erase(replica_id);
  }
  void ReconfigureReplica(const std::string& replica_id, const wire::DeploymentSpecT& spec,
                          const std::string& config_hash) override {
    reconfigures.push_back({replica_id, spec.user_config, config_hash});
  }
  void Event(const std::string& kind, const std::string& name, const std::string& state,
             const std::string& message) override {
    events.push_back({kind, name, state, message});
  }

  void ClearCalls() {
    starts.clear();
    stops.clear();
    reconfigures.clear();
    events.clear();
    order.clear();
  }
  std::vector<std::string> StartedIds() const {
    std::vector<std::string> ids;
    for (const auto& s : starts) ids.push_back(s.replica);
    return ids;
  }
  std::vector<std::string> StoppedIds() const {
    std::vector<std::string> ids;
    for (const auto& s : stops) ids.push_back(s.replica);
    return ids;
  }
  bool HasEvent(const std::string& kind, const std::string& name, const std::string& state) const {
    return std::any_of(events.begin(), events.end(), [&](const EventCall& e) {
      return e.kind == kind && e.name == name && e.state == state;
    });
  }

  std::vector<StartCall> starts;
  std::vector<StopCall> stops;
  std::vector<ReconfigureCall> reconfigures;
  std::vector<EventCall> events;
  std::vector<std::string> order;  // "start <id>" and "stop <id>", as they came
  std::map<std::string, std::map<std::string, Worker>> workers;  // by node, then replica id

 private:
  const Clock& clock_;
};

void PrintTo(const FakeCluster::StartCall& call, std::ostream* os) {
  *os << "StartReplica(" << call.node << ", " << call.replica << ", " << call.spec.name << "@"
      << call.spec.version << ")";
}
void PrintTo(const FakeCluster::StopCall& call, std::ostream* os) {
  *os << "StopReplica(" << call.node << ", " << call.replica << ")";
}
void PrintTo(const FakeCluster::EventCall& call, std::ostream* os) {
  *os << "Event(" << call.kind << ", " << call.name << ", " << call.state << ", " << call.message
      << ")";
}

wire::DeploymentSpecT Spec(const std::string& name, int replicas = 1, double cpus = 1) {
  wire::DeploymentSpecT spec;
  spec.name = name;
  spec.runtime = "builtin:hello";
  spec.num_replicas = replicas;
  spec.resources = std::make_unique<wire::ResourcesT>();
  spec.resources->num_cpus = cpus;
  return spec;
}

wire::DeploymentSpecT WithVersion(wire::DeploymentSpecT spec, const std::string& version) {
  spec.version = version;
  return spec;
}

wire::DeploymentSpecT WithCustom(wire::DeploymentSpecT spec, const std::string& resource,
                                 double amount) {
  auto custom = std::make_unique<wire::CustomResourceT>();
  custom->name = resource;
  custom->amount = amount;
  spec.resources->custom.push_back(std::move(custom));
  return spec;
}

class ReconcilerTest : public ::testing::Test {
 protected:
  ReconcilerTest() { Recreate(ReconcilerOptions{}); }

  // A controller restart: a new reconciler over the same cluster and clock.
  void Recreate(ReconcilerOptions options) {
    reconciler_ = std::make_unique<Reconciler>(clock_, cluster_, options);
  }
  Reconciler& r() { return *reconciler_; }

  std::vector<std::string> DeployOk(wire::DeploymentSpecT spec) {
    std::vector<wire::DeploymentSpecT> specs;
    specs.push_back(std::move(spec));
    auto result = r().Deploy(std::move(specs));
    EXPECT_TRUE(result.ok()) << result.error();
    return result.ok() ? *result : std::vector<std::string>{};
  }
  std::string DeployError(std::vector<wire::DeploymentSpecT> specs) {
    auto result = r().Deploy(std::move(specs));
    EXPECT_FALSE(result.ok());
    return result.error();
  }
  std::string DeployError(wire::DeploymentSpecT spec) {
    std::vector<wire::DeploymentSpecT> specs;
    specs.push_back(std::move(spec));
    return DeployError(std::move(specs));
  }

  // A node agent joins (or heartbeats again) with this capacity.
  void AddNode(const std::string& id, double cpus, std::map<std::string, double> custom = {}) {
    auto capacity = std::make_unique<wire::ResourcesT>();
    capacity->num_cpus = cpus;
    for (const auto& [name, amount] : custom) {
      auto c = std::make_unique<wire::CustomResourceT>();
      c->name = name;
      c->amount = amount;
      capacity->custom.push_back(std::move(c));
    }
    capacities_[id] = std::move(capacity);
    dead_nodes_.erase(id);
    NodeHeartbeat(id);
  }
  // The node's heartbeat lists the workers the fake agent runs.
  void NodeHeartbeat(const std::string& id) {
    wire::NodeHeartbeatT hb;
    hb.node_id = id;
    hb.host = "host-" + id;
    hb.period_s = 1;
    hb.incarnation = incarnations_.try_emplace(id, 1).first->second;
    hb.seq = ++heartbeat_seqs_[id];
    hb.resources = std::make_unique<wire::ResourcesT>(*capacities_.at(id));
    for (const auto& [rid, worker] : cluster_.workers[id]) {
      auto replica = std::make_unique<wire::NodeReplicaT>();
      replica->id = rid;
      replica->deployment = worker.deployment;
      replica->version = worker.version;
      replica->ready = worker.ready;
      hb.replicas.push_back(std::move(replica));
    }
    r().OnNodeHeartbeat(hb);
  }
  void ReplicaHeartbeat(const std::string& id, bool healthy = true) {
    wire::ReplicaHeartbeatT hb;
    hb.replica_id = id;
    hb.healthy = healthy;
    for (auto& [node, workers] : cluster_.workers) {
      auto it = workers.find(id);
      if (it != workers.end() && healthy) it->second.ready = true;
    }
    r().OnReplicaHeartbeat(hb);
  }
  // Every live node heartbeats, then every worker on it that has been up `startup_s` and is not
  // silenced.
  void HeartbeatAll(double startup_s = 0) {
    for (const auto& [id, capacity] : capacities_) {
      if (dead_nodes_.count(id) == 0) NodeHeartbeat(id);
    }
    for (const auto& [node, workers] : cluster_.workers) {
      if (dead_nodes_.count(node) > 0) continue;
      for (const auto& [rid, worker] : workers) {
        if (silent_.count(rid) > 0 || clock_.Now() - worker.started_at < startup_s) continue;
        ReplicaHeartbeat(rid);
      }
    }
  }
  // Lets `seconds` pass in 1 s ticks: heartbeats, then Step().
  void Run(double seconds, double startup_s = 0) {
    for (double t = 0; t < seconds - 1e-9; t += 1) {
      clock_.Advance(std::min(1.0, seconds - t));
      HeartbeatAll(startup_s);
      r().Step();
    }
  }
  // The moment a node's word that a replica is gone waits for its exit report to say more.
  void Settle() {
    clock_.Advance(Reconciler::kMissingGrace_s);
    r().Step();
  }
  // Time passes with only node heartbeats (no worker reports healthy).
  void RunNodesOnly(double seconds) {
    for (double t = 0; t < seconds - 1e-9; t += 1) {
      clock_.Advance(std::min(1.0, seconds - t));
      for (const auto& [id, capacity] : capacities_) {
        if (dead_nodes_.count(id) == 0) NodeHeartbeat(id);
      }
      r().Step();
    }
  }

  wire::DeploymentStatusT Status(const std::string& name) {
    auto reply = r().Report({name});
    EXPECT_EQ(reply.deployments.size(), 1u) << name;
    if (reply.deployments.empty()) return {};
    return *reply.deployments[0];
  }
  std::string StateOf(const std::string& deployment) {
    return wire::EnumNameDeploymentState(Status(deployment).status);
  }
  std::string MessageOf(const std::string& deployment) { return Status(deployment).message; }
  // Replica id -> state name, for one deployment.
  std::map<std::string, std::string> ReplicaStates(const std::string& deployment) {
    std::map<std::string, std::string> states;
    for (const auto& replica : Status(deployment).replicas) {
      states[replica->id] = wire::EnumNameReplicaState(replica->state);
    }
    return states;
  }
  const wire::ReplicaStatusT* FindReplica(const wire::DeploymentStatusT& status,
                                          const std::string& id) {
    for (const auto& replica : status.replicas) {
      if (replica->id == id) return replica.get();
    }
    return nullptr;
  }
  // The replica ids the route table sends `deployment`'s traffic to; empty when no route.
  std::vector<std::string> Routed(const std::string& deployment) {
    std::vector<std::string> ids;
    for (const auto& route : r().Routes().routes) {
      if (route->deployment != deployment) continue;
      for (const auto& replica : route->replicas) ids.push_back(replica->id);
    }
    std::sort(ids.begin(), ids.end());
    return ids;
  }
  bool HasRoute(const std::string& deployment) {
    auto table = r().Routes();
    return std::any_of(table.routes.begin(), table.routes.end(),
                       [&](const auto& route) { return route->deployment == deployment; });
  }

  // Deploys `spec` on the existing nodes and runs it until HEALTHY; returns the replica ids.
  std::vector<std::string> DeployHealthy(wire::DeploymentSpecT spec) {
    std::string name = spec.name;
    DeployOk(std::move(spec));
    Run(1);
    EXPECT_EQ(StateOf(name), "HEALTHY") << MessageOf(name);
    return Routed(name);
  }

  FakeClock clock_;
  FakeCluster cluster_{clock_};
  std::unique_ptr<Reconciler> reconciler_;
  std::map<std::string, std::unique_ptr<wire::ResourcesT>> capacities_;
  std::set<std::string> dead_nodes_;  // stopped heartbeating
  std::set<std::string> silent_;      // workers that stopped heartbeating
  std::map<std::string, uint64_t> incarnations_;    // each node agent's run
  std::map<std::string, uint64_t> heartbeat_seqs_;  // and its heartbeat counter
};

// ---------------------------------------------------------------------------------------------
// Placement and the happy path

TEST_F(ReconcilerTest, DeployWithoutNodeStaysPendingAndSaysWhy) {
  EXPECT_THAT(DeployOk(Spec("hello")), ElementsAre("hello: created"));

  EXPECT_THAT(cluster_.starts, IsEmpty());
  auto status = Status("hello");
  EXPECT_EQ(wire::EnumNameDeploymentState(status.status), std::string("UPDATING"));
  EXPECT_THAT(status.message, HasSubstr("no node is available"));
  ASSERT_EQ(status.replicas.size(), 1u);
  EXPECT_EQ(status.replicas[0]->state, wire::ReplicaState::PENDING);
  EXPECT_EQ(status.replicas[0]->node, "");
  EXPECT_THAT(status.replicas[0]->message, HasSubstr("no node is available"));
  EXPECT_THAT(Routed("hello"), IsEmpty());
  EXPECT_TRUE(cluster_.HasEvent("deployment", "hello", "UPDATING"));
}

TEST_F(ReconcilerTest, NodeHeartbeatLetsStepPlaceThenHeartbeatMakesItHealthy) {
  DeployOk(Spec("hello"));
  AddNode("n1", 4);
  EXPECT_THAT(cluster_.starts, IsEmpty()) << "a heartbeat registers the node; Step() places";
  EXPECT_TRUE(cluster_.HasEvent("node", "n1", "HEALTHY"));

  r().Step();
  ASSERT_EQ(cluster_.starts.size(), 1u);
  const auto& start = cluster_.starts[0];
  EXPECT_EQ(start.node, "n1");
  EXPECT_THAT(start.replica, StartsWith("hello-"));
  EXPECT_EQ(start.spec.name, "hello");
  EXPECT_EQ(start.spec.runtime, "builtin:hello");
  EXPECT_THAT(start.spec.version, StartsWith("auto-")) << "the version is filled in";
  EXPECT_EQ(start.spec.version, Status("hello").version);
  EXPECT_EQ(start.spec.route_prefix, "/hello");
  ASSERT_NE(start.spec.resources, nullptr);
  EXPECT_EQ(start.spec.resources->num_cpus, 1);

  std::string id = start.replica;
  EXPECT_EQ(ReplicaStates("hello")[id], "STARTING");
  EXPECT_EQ(FindReplica(Status("hello"), id)->node, "n1");
  EXPECT_TRUE(HasRoute("hello"));
  EXPECT_THAT(Routed("hello"), IsEmpty()) << "only RUNNING replicas are routed";

  ReplicaHeartbeat(id);
  EXPECT_EQ(ReplicaStates("hello")[id], "RUNNING");
  r().Step();
  EXPECT_EQ(StateOf("hello"), "HEALTHY");
  EXPECT_THAT(MessageOf("hello"), HasSubstr("1/1 replicas running at version auto-"));
  EXPECT_TRUE(cluster_.HasEvent("deployment", "hello", "HEALTHY"));

  auto table = r().Routes();
  ASSERT_EQ(table.routes.size(), 1u);
  EXPECT_EQ(table.routes[0]->route_prefix, "/hello");
  EXPECT_EQ(table.routes[0]->deployment, "hello");
  ASSERT_EQ(table.routes[0]->replicas.size(), 1u);
  EXPECT_EQ(table.routes[0]->replicas[0]->id, id);
  EXPECT_EQ(table.routes[0]->replicas[0]->max_concurrent_queries, 100);
  EXPECT_THAT(cluster_.stops, IsEmpty());
}

TEST_F(ReconcilerTest, UnhealthyFirstHeartbeatDoesNotMakeReplicaRunning) {
  AddNode("n1", 4);
  DeployOk(Spec("hello"));
  ASSERT_EQ(cluster_.starts.size(), 1u);
  ReplicaHeartbeat(cluster_.starts[0].replica, /*healthy=*/false);
  r().Step();
  EXPECT_EQ(ReplicaStates("hello")[cluster_.starts[0].replica], "STARTING");
  EXPECT_EQ(StateOf("hello"), "UPDATING");
}

TEST_F(ReconcilerTest, SpreadsReplicasOverNodes) {
  AddNode("n1", 4);
  AddNode("n2", 4);
  DeployOk(Spec("hello", 2));
  ASSERT_EQ(cluster_.starts.size(), 2u);
  EXPECT_NE(cluster_.starts[0].node, cluster_.starts[1].node);

  DeployOk(Spec("other", 4));
  std::map<std::string, int> per_node;
  for (const auto& s : cluster_.starts) {
    if (s.spec.name == "other") ++per_node[s.node];
  }
  EXPECT_EQ(per_node["n1"], 2);
  EXPECT_EQ(per_node["n2"], 2);
}

TEST_F(ReconcilerTest, ReplicaLargerThanEveryNodeStaysPendingAndNamesTheResource) {
  AddNode("n1", 4);
  DeployOk(Spec("big", 1, /*cpus=*/8));
  r().Step();
  EXPECT_THAT(cluster_.starts, IsEmpty());
  auto status = Status("big");
  ASSERT_EQ(status.replicas.size(), 1u);
  EXPECT_EQ(status.replicas[0]->state, wire::ReplicaState::PENDING);
  EXPECT_THAT(status.replicas[0]->message, HasSubstr("num_cpus=8"));
  EXPECT_THAT(status.replicas[0]->message, HasSubstr("no node has that much"));
  EXPECT_THAT(status.replicas[0]->message, HasSubstr("largest: 4"));
  EXPECT_THAT(status.message, HasSubstr("num_cpus"));
  EXPECT_THAT(status.message, HasSubstr("no node has that much"));

  // A node big enough arrives: the replica goes there.
  AddNode("n2", 16);
  r().Step();
  ASSERT_EQ(cluster_.starts.size(), 1u);
  EXPECT_EQ(cluster_.starts[0].node, "n2");
}

TEST_F(ReconcilerTest, FullNodesLeaveReplicaWaitingForResources) {
  AddNode("n1", 2);
  DeployOk(Spec("hello", 3));
  EXPECT_EQ(cluster_.starts.size(), 2u);
  auto states = ReplicaStates("hello");
  EXPECT_EQ(std::count_if(states.begin(), states.end(),
                          [](const auto& s) { return s.second == "PENDING"; }),
            1);
  EXPECT_THAT(MessageOf("hello"), HasSubstr("waiting for resources"));
  EXPECT_THAT(MessageOf("hello"), HasSubstr("full"));
}

TEST_F(ReconcilerTest, CustomResourcesDecidePlacement) {
  AddNode("plain", 8);
  AddNode("accelerated", 4, {{"accel", 1}});
  DeployOk(WithCustom(Spec("model"), "accel", 1));
  ASSERT_EQ(cluster_.starts.size(), 1u);
  EXPECT_EQ(cluster_.starts[0].node, "accelerated");
  ASSERT_NE(cluster_.starts[0].spec.resources, nullptr);
  ASSERT_EQ(cluster_.starts[0].spec.resources->custom.size(), 1u);
  EXPECT_EQ(cluster_.starts[0].spec.resources->custom[0]->name, "accel");

  // The only accelerator is taken: a second one waits, and is not put on the plain node.
  DeployOk(WithCustom(Spec("model2"), "accel", 1));
  ASSERT_EQ(cluster_.starts.size(), 1u);
  EXPECT_EQ(ReplicaStates("model2").begin()->second, "PENDING");

  // Replicas that do not ask for it may still use the accelerated node's CPUs.
  DeployOk(Spec("plain-app", 2));
  EXPECT_EQ(cluster_.starts.size(), 3u);
}

TEST_F(ReconcilerTest, PendingMessageNamesTheCustomResourceThatIsShort) {
  AddNode("plain", 8);
  AddNode("accelerated", 4, {{"accel", 1}});
  DeployOk(WithCustom(Spec("model"), "accel", 1));
  DeployOk(WithCustom(Spec("model2"), "accel", 1));
  EXPECT_THAT(MessageOf("model2"), HasSubstr("accel=1"));
  EXPECT_THAT(MessageOf("model2"), Not(HasSubstr("num_cpus")));

  // A resource no node has at all.
  DeployOk(WithCustom(Spec("tpu-model"), "tpu", 1));
  EXPECT_THAT(MessageOf("tpu-model"), HasSubstr("tpu=1"));
  EXPECT_THAT(MessageOf("tpu-model"), HasSubstr("no node has that much"));
}

// ---------------------------------------------------------------------------------------------
// Redeploys and scaling

TEST_F(ReconcilerTest, RedeployingIdenticalSpecIsUnchangedAndDoesNothing) {
  AddNode("n1", 4);
  auto ids = DeployHealthy(Spec("hello", 2));
  cluster_.ClearCalls();

  EXPECT_THAT(DeployOk(Spec("hello", 2)), ElementsAre("hello: unchanged"));
  EXPECT_THAT(cluster_.starts, IsEmpty());
  EXPECT_THAT(cluster_.stops, IsEmpty());
  EXPECT_THAT(cluster_.events, IsEmpty());
  EXPECT_EQ(StateOf("hello"), "HEALTHY");
  EXPECT_EQ(Routed("hello"), ids);
}

TEST_F(ReconcilerTest, ChangingOnlyNumReplicasScalesAndKeepsExistingReplicas) {
  AddNode("n1", 8);
  auto before = DeployHealthy(Spec("hello", 1));
  ASSERT_EQ(before.size(), 1u);
  std::string version = Status("hello").version;
  cluster_.ClearCalls();

  EXPECT_THAT(DeployOk(Spec("hello", 3)), ElementsAre("hello: scaled from 1 to 3 replicas"));
  EXPECT_EQ(cluster_.starts.size(), 2u);
  EXPECT_THAT(cluster_.stops, IsEmpty());
  EXPECT_EQ(ReplicaStates("hello")[before[0]], "RUNNING");
  EXPECT_EQ(Status("hello").version, version);
  EXPECT_EQ(StateOf("hello"), "UPDATING");

  Run(1);
  EXPECT_EQ(StateOf("hello"), "HEALTHY");
  auto three = Routed("hello");
  EXPECT_EQ(three.size(), 3u);
  EXPECT_TRUE(std::count(three.begin(), three.end(), before[0]) == 1);
  cluster_.ClearCalls();

  // Down again: the newest go, the original stays.
  EXPECT_THAT(DeployOk(Spec("hello", 1)), ElementsAre("hello: scaled from 3 to 1 replicas"));
  EXPECT_THAT(cluster_.starts, IsEmpty());
  EXPECT_EQ(cluster_.stops.size(), 2u);
  EXPECT_THAT(Routed("hello"), ElementsAre(before[0]));
  EXPECT_EQ(StateOf("hello"), "HEALTHY");
}

TEST_F(ReconcilerTest, ScaleDownStopsPendingAndStartingBeforeRunning) {
  AddNode("n1", 3);
  DeployOk(Spec("hello", 2));
  ASSERT_EQ(cluster_.starts.size(), 2u);
  std::string running = cluster_.starts[0].replica;
  std::string starting = cluster_.starts[1].replica;
  clock_.Advance(1);
  NodeHeartbeat("n1");
  ReplicaHeartbeat(running);
  r().Step();

  clock_.Advance(1);
  DeployOk(Spec("hello", 4));  // room for one more; the fourth stays PENDING
  ASSERT_EQ(cluster_.starts.size(), 3u);
  std::string starting2 = cluster_.starts[2].replica;
  std::string pending;
  for (const auto& [id, state] : ReplicaStates("hello")) {
    if (state == "PENDING") pending = id;
  }
  ASSERT_FALSE(pending.empty());

  DeployOk(Spec("hello", 1));
  EXPECT_THAT(cluster_.StoppedIds(), UnorderedElementsAre(starting, starting2));
  auto states = ReplicaStates("hello");
  EXPECT_EQ(states[running], "RUNNING");
  EXPECT_EQ(states.count(pending), 0u) << "a never-placed replica just goes";
  EXPECT_EQ(states[starting], "STOPPING");
  EXPECT_EQ(states[starting2], "STOPPING");
  EXPECT_THAT(Routed("hello"), ElementsAre(running));

  // Once the node confirms, the stopped ones are gone.
  Run(1);
  EXPECT_EQ(ReplicaStates("hello").size(), 1u);
  EXPECT_EQ(StateOf("hello"), "HEALTHY");
}

TEST_F(ReconcilerTest, ScaleToZeroIsHealthyAndSaysRequestsGet503) {
  AddNode("n1", 4);
  DeployOk(Spec("idle", 0));
  EXPECT_THAT(cluster_.starts, IsEmpty());
  EXPECT_EQ(StateOf("idle"), "HEALTHY");
  EXPECT_THAT(MessageOf("idle"), HasSubstr("503"));
  EXPECT_TRUE(HasRoute("idle")) << "the route stays so the proxy can answer 503";
  EXPECT_THAT(Routed("idle"), IsEmpty());

  auto ids = DeployHealthy(Spec("hello", 1));
  cluster_.ClearCalls();
  DeployOk(Spec("hello", 0));
  EXPECT_THAT(cluster_.StoppedIds(), ElementsAre(ids[0]));
  EXPECT_EQ(StateOf("hello"), "HEALTHY");
  EXPECT_THAT(MessageOf("hello"), HasSubstr("scaled to zero replicas: requests get 503"));
}

// ---------------------------------------------------------------------------------------------
// Rolling updates

TEST_F(ReconcilerTest, NewVersionRollsOutWhileOldReplicasKeepServing) {
  AddNode("n1", 4);
  AddNode("n2", 4);
  auto old_ids = DeployHealthy(WithVersion(Spec("hello", 2), "v1"));
  ASSERT_EQ(old_ids.size(), 2u);
  cluster_.ClearCalls();

  EXPECT_THAT(DeployOk(WithVersion(Spec("hello", 2), "v2")),
              ElementsAre("hello: updating from version v1 to v2"));
  ASSERT_EQ(cluster_.starts.size(), 2u);
  EXPECT_EQ(cluster_.starts[0].spec.version, "v2");
  EXPECT_EQ(cluster_.starts[1].spec.version, "v2");
  EXPECT_THAT(cluster_.stops, IsEmpty()) << "there is room: old replicas keep running";
  EXPECT_EQ(Routed("hello"), old_ids);
  EXPECT_EQ(StateOf("hello"), "UPDATING");

  // Starting (not yet healthy) new replicas change nothing.
  RunNodesOnly(1);
  EXPECT_THAT(cluster_.stops, IsEmpty());
  EXPECT_EQ(Routed("hello"), old_ids);

  // One new replica runs: one old one goes.
  std::string new1 = cluster_.starts[0].replica;
  std::string new2 = cluster_.starts[1].replica;
  ReplicaHeartbeat(new1);
  r().Step();
  EXPECT_EQ(cluster_.stops.size(), 1u);
  EXPECT_EQ(Routed("hello").size(), 2u);

  ReplicaHeartbeat(new2);
  r().Step();
  EXPECT_THAT(cluster_.StoppedIds(), UnorderedElementsAre(old_ids[0], old_ids[1]));
  EXPECT_EQ(Routed("hello"),
            (std::vector<std::string>{std::min(new1, new2), std::max(new1, new2)}));
  EXPECT_EQ(StateOf("hello"), "HEALTHY");
  EXPECT_THAT(MessageOf("hello"), HasSubstr("2/2 replicas running at version v2"));
}

TEST_F(ReconcilerTest, RollingUpdateEndsWithOnlyTheNewVersionRouted) {
  AddNode("n1", 4);
  AddNode("n2", 4);
  auto old_ids = DeployHealthy(WithVersion(Spec("hello", 2), "v1"));
  cluster_.ClearCalls();

  DeployOk(WithVersion(Spec("hello", 2), "v2"));
  EXPECT_EQ(StateOf("hello"), "UPDATING");
  EXPECT_FALSE(Routed("hello").empty()) << "something serves during the update";
  Run(3, /*startup_s=*/2);
  EXPECT_EQ(StateOf("hello"), "HEALTHY");
  EXPECT_THAT(cluster_.StoppedIds(), UnorderedElementsAre(old_ids[0], old_ids[1]));
  auto routed = Routed("hello");
  EXPECT_EQ(routed.size(), 2u);
  for (const auto& id : routed) {
    EXPECT_EQ(std::count(old_ids.begin(), old_ids.end(), id), 0) << id;
  }
  for (const auto& replica : Status("hello").replicas) EXPECT_EQ(replica->version, "v2");
}

TEST_F(ReconcilerTest, RollingUpdateOnNodeWithRoomForOneMakesRoomAndFinishes) {
  AddNode("n1", 1);
  auto old_ids = DeployHealthy(WithVersion(Spec("hello", 1), "v1"));
  ASSERT_EQ(old_ids.size(), 1u);
  cluster_.ClearCalls();

  DeployOk(WithVersion(Spec("hello", 1), "v2"));
  Run(8, /*startup_s=*/1);
  ASSERT_EQ(cluster_.starts.size(), 1u);
  EXPECT_EQ(cluster_.starts[0].spec.version, "v2");
  // The old replica had to go first: the node has room for one.
  EXPECT_THAT(cluster_.order,
              ElementsAre("stop " + old_ids[0], "start " + cluster_.starts[0].replica));
  EXPECT_EQ(StateOf("hello"), "HEALTHY") << MessageOf("hello");
  EXPECT_THAT(Routed("hello"), ElementsAre(cluster_.starts[0].replica));
  EXPECT_EQ(Status("hello").replicas.size(), 1u);
}

TEST_F(ReconcilerTest, RollingUpdateWithRoomForTargetNeverLeavesNothingRunning) {
  AddNode("n1", 2);
  auto old_ids = DeployHealthy(WithVersion(Spec("hello", 2), "v1"));
  ASSERT_EQ(old_ids.size(), 2u);

  DeployOk(WithVersion(Spec("hello", 2), "v2"));
  for (int tick = 0; tick < 30; ++tick) {
    EXPECT_FALSE(Routed("hello").empty()) << "nothing serves at tick " << tick;
    Run(1, /*startup_s=*/3);
  }
  EXPECT_EQ(StateOf("hello"), "HEALTHY") << MessageOf("hello");
  EXPECT_EQ(Status("hello").version, "v2");
}

// ---------------------------------------------------------------------------------------------
// Delete

TEST_F(ReconcilerTest, DeleteStopsEveryReplicaAndDropsTheRoute) {
  AddNode("n1", 2);
  auto ids = DeployHealthy(Spec("hello", 2));
  DeployOk(Spec("other", 1));  // no room left: PENDING
  ASSERT_EQ(ReplicaStates("other").begin()->second, "PENDING");
  cluster_.ClearCalls();

  auto deleted = r().Delete({"hello", "other"});
  ASSERT_TRUE(deleted.ok()) << deleted.error();
  EXPECT_THAT(*deleted, ElementsAre("hello", "other"));
  EXPECT_THAT(cluster_.StoppedIds(), UnorderedElementsAre(ids[0], ids[1]));
  for (const auto& stop : cluster_.stops) EXPECT_EQ(stop.node, "n1");
  EXPECT_TRUE(cluster_.HasEvent("deployment", "hello", "DELETED"));
  EXPECT_FALSE(HasRoute("hello"));
  EXPECT_FALSE(HasRoute("other"));
  EXPECT_TRUE(r().Routes().routes.empty());
  EXPECT_THAT(r().Report({}).deployments, IsEmpty());
  EXPECT_THAT(r().Desired(), IsEmpty());

  // Nothing is restarted, and the node's count drops once it confirms.
  Run(2);
  EXPECT_THAT(cluster_.starts, IsEmpty());
  auto report = r().Report({});
  ASSERT_EQ(report.nodes.size(), 1u);
  EXPECT_EQ(report.nodes[0]->replicas, 0);
}

TEST_F(ReconcilerTest, DeleteOfUnknownNameNamesWhatIsDeployed) {
  auto nothing = r().Delete({"ghost"});
  ASSERT_FALSE(nothing.ok());
  EXPECT_THAT(nothing.error(), HasSubstr("no deployment named 'ghost'"));
  EXPECT_THAT(nothing.error(), HasSubstr("nothing is deployed"));

  DeployOk(Spec("a"));
  DeployOk(Spec("b"));
  auto result = r().Delete({"a", "ghost"});
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.error(), HasSubstr("no deployment named 'ghost'"));
  EXPECT_THAT(result.error(), HasSubstr("deployed: a, b"));
  EXPECT_EQ(r().Desired().size(), 2u) << "nothing is deleted when one name is wrong";

  EXPECT_FALSE(r().Delete({}).ok());
}

// ---------------------------------------------------------------------------------------------
// Admission

TEST_F(ReconcilerTest, RoutePrefixUsedByAnotherDeploymentIsRefused) {
  auto a = Spec("a");
  a.route_prefix = "/shared";
  DeployOk(std::move(a));
  auto b = Spec("b");
  b.route_prefix = "/shared";
  std::string error = DeployError(std::move(b));
  EXPECT_THAT(error, HasSubstr("route_prefix /shared"));
  EXPECT_THAT(error, HasSubstr("'a'"));
  ASSERT_EQ(r().Desired().size(), 1u);

  // The default route_prefix is "/" + name, and it conflicts too.
  auto c = Spec("c");
  c.route_prefix = "/a";
  DeployOk(std::move(c));
  EXPECT_THAT(DeployError(Spec("a")), HasSubstr("route_prefix /a"));

  // The same deployment may keep its own route.
  auto a2 = Spec("a", 2);
  a2.route_prefix = "/shared";
  EXPECT_THAT(DeployOk(std::move(a2)), ElementsAre("a: scaled from 1 to 2 replicas"));
}

// Bounded inputs: the replicas of a namespace are capped as a whole, and a request past the cap
// changes nothing.
TEST_F(ReconcilerTest, NamespaceReplicaCapRefusesWhatWouldExceedItAndChangesNothing) {
  ReconcilerOptions options;
  options.max_replicas_per_namespace = 10;
  Recreate(options);
  DeployOk(Spec("a", 6));
  DeployOk(Spec("b", 4));
  cluster_.ClearCalls();
  std::string error = DeployError(Spec("c", 1));
  EXPECT_THAT(error, HasSubstr("num_replicas"));
  EXPECT_THAT(error, HasSubstr("would make 11 replicas in the namespace, more than 10 "
                               "(serve-controller --max-replicas-per-namespace)"));
  EXPECT_EQ(r().Desired().size(), 2u);
  EXPECT_THAT(DeployError(Spec("a", 7)), HasSubstr("would make 11 replicas"));
  EXPECT_EQ(r().Desired()[0].num_replicas, 6);
  EXPECT_TRUE(cluster_.events.empty());

  // What fits once another deployment shrinks (or leaves) is let through.
  std::vector<wire::DeploymentSpecT> both;
  both.push_back(Spec("a", 2));
  both.push_back(Spec("c", 4));
  EXPECT_TRUE(r().Deploy(std::move(both)).ok());
  std::vector<wire::DeploymentSpecT> only_c;
  only_c.push_back(Spec("c", 10));
  EXPECT_TRUE(r().Apply(std::move(only_c)).ok()) << "a and b leave";
}

TEST_F(ReconcilerTest, NamespaceOverALoweredCapMayStillShrink) {
  DeployOk(Spec("a", 8));
  ReconcilerOptions options;
  options.max_replicas_per_namespace = 5;
  auto desired = r().Desired();
  Recreate(options);
  r().Restore(desired);
  EXPECT_THAT(DeployError(Spec("a", 9)), HasSubstr("more than 5"));
  DeployOk(Spec("a", 7));
}

TEST_F(ReconcilerTest, DeploymentLimitsComeFromTheOptions) {
  ReconcilerOptions options;
  options.max_replicas_per_namespace = 30'000;
  options.limits.max_replicas = 20'000;
  options.limits.max_concurrent_queries = 200;
  Recreate(options);
  DeployOk(Spec("big", 20'000));
  EXPECT_THAT(DeployError(Spec("bigger", 20'001)),
              HasSubstr("num_replicas must be at most 20000 (serve-controller "
                        "--max-replicas-per-deployment)"));
  auto spec = Spec("busy");
  spec.max_concurrent_queries = 201;
  EXPECT_THAT(DeployError(std::move(spec)),
              HasSubstr("max_concurrent_queries must be at most 200"));
}

// Status stays small however many replicas wait: a hundred PENDING ones are listed, the rest
// counted.
TEST_F(ReconcilerTest, StatusListsAHundredPendingReplicasAndCountsTheRest) {
  ReconcilerOptions options;
  options.max_replicas_per_namespace = 20'000;
  options.limits.max_replicas = 20'000;
  Recreate(options);
  AddNode("n1", 1);
  DeployOk(Spec("big", 20'000));
  for (int i = 0; i < 20; ++i) r().Step();  // a step creates at most kMaxNewReplicasPerStep
  auto report = r().Report({"big"});
  ASSERT_EQ(report.deployments.size(), 1u);
  const auto& d = *report.deployments[0];
  ASSERT_EQ(d.replicas.size(), 101u);
  int pending = 0;
  for (const auto& replica : d.replicas) pending += replica->state == wire::ReplicaState::PENDING;
  EXPECT_EQ(pending, 100);
  EXPECT_THAT(d.message, HasSubstr("19899 more PENDING replicas not listed"));
}

// A large deploy is taken in over several steps, so no one step grows with the request.
TEST_F(ReconcilerTest, LargeDeployCreatesReplicasOverSeveralSteps) {
  ReconcilerOptions options;
  options.max_replicas_per_namespace = 2'500;
  Recreate(options);
  auto created = [&] {
    std::set<std::string> ids;
    for (const auto& e : cluster_.events) {
      if (e.kind == "replica" && e.state == "PENDING") ids.insert(e.name);
    }
    return ids.size();
  };
  DeployOk(Spec("big", 2'500));
  EXPECT_EQ(created(), static_cast<size_t>(Reconciler::kMaxNewReplicasPerStep));
  r().Step();
  EXPECT_EQ(created(), 2u * Reconciler::kMaxNewReplicasPerStep);
  r().Step();
  EXPECT_EQ(created(), 2'500u);
  r().Step();
  EXPECT_EQ(created(), 2'500u);
  EXPECT_THAT(r().Report({"big"}).deployments[0]->message,
              HasSubstr("2400 more PENDING replicas not listed"));
}

TEST_F(ReconcilerTest, ConflictsWithinOneRequestAreRefused) {
  std::vector<wire::DeploymentSpecT> same_route;
  same_route.push_back(Spec("x"));
  same_route.push_back(Spec("y"));
  same_route[0].route_prefix = "/z";
  same_route[1].route_prefix = "/z";
  EXPECT_THAT(DeployError(std::move(same_route)), HasSubstr("both use route_prefix /z"));

  std::vector<wire::DeploymentSpecT> twice;
  twice.push_back(Spec("x"));
  twice.push_back(Spec("x"));
  EXPECT_THAT(DeployError(std::move(twice)), HasSubstr("'x' is listed twice"));

  EXPECT_THAT(DeployError(std::vector<wire::DeploymentSpecT>{}), HasSubstr("no deployments"));
  EXPECT_THAT(r().Desired(), IsEmpty());
}

TEST_F(ReconcilerTest, SameExplicitVersionWithDifferentCodeIsRefused) {
  DeployOk(WithVersion(Spec("hello"), "v1"));
  auto echo = WithVersion(Spec("hello"), "v1");
  echo.runtime = "builtin:echo";
  std::string error = DeployError(std::move(echo));
  EXPECT_THAT(error, HasSubstr("version 'v1'"));
  EXPECT_THAT(error, HasSubstr("builtin:hello"));
  EXPECT_THAT(error, HasSubstr("new version"));
  EXPECT_EQ(r().Desired().at(0).runtime, "builtin:hello");

  auto echo2 = WithVersion(Spec("hello"), "v2");
  echo2.runtime = "builtin:echo";
  EXPECT_THAT(DeployOk(std::move(echo2)), ElementsAre("hello: updating from version v1 to v2"));
}

TEST_F(ReconcilerTest, InvalidSpecIsRefusedNamingTheField) {
  EXPECT_THAT(DeployError(Spec("neg", -1)), HasSubstr("num_replicas must be >= 0, got -1"));

  auto unknown = Spec("odd");
  unknown.runtime = "python:app";
  std::string error = DeployError(std::move(unknown));
  EXPECT_THAT(error, HasSubstr("runtime"));
  EXPECT_THAT(error, HasSubstr("python:app"));
  EXPECT_THAT(error, HasSubstr("builtin:hello"));

  auto route = Spec("bad-route");
  route.route_prefix = "no-slash";
  EXPECT_THAT(DeployError(std::move(route)), HasSubstr("route_prefix"));

  EXPECT_THAT(DeployError(Spec("cpu", 1, -2)), HasSubstr("num_cpus"));

  // One bad spec refuses the whole request.
  std::vector<wire::DeploymentSpecT> mixed;
  mixed.push_back(Spec("good"));
  mixed.push_back(Spec("bad", -3));
  EXPECT_THAT(DeployError(std::move(mixed)), HasSubstr("num_replicas"));
  EXPECT_THAT(r().Desired(), IsEmpty());
  EXPECT_THAT(cluster_.events, IsEmpty());
}

// ---------------------------------------------------------------------------------------------
// Failures

TEST_F(ReconcilerTest, StartFailuresBackOffThenEndInDeployFailed) {
  AddNode("n1", 4);
  DeployOk(Spec("hello"));
  const int kMax = ReconcilerOptions{}.max_start_failures;
  for (int failure = 1; failure <= kMax; ++failure) {
    ASSERT_EQ(cluster_.starts.size(), static_cast<size_t>(failure));
    const auto& start = cluster_.starts.back();
    cluster_.workers[start.node].erase(start.replica);
    r().OnStartResult(start.replica, {Status::Error("boom " + std::to_string(failure))});
    EXPECT_TRUE(cluster_.HasEvent("replica", start.replica, "UNHEALTHY"));
    r().Step();
    EXPECT_EQ(cluster_.starts.size(), static_cast<size_t>(failure)) << "no immediate restart";
    if (failure == kMax) break;
    EXPECT_THAT(MessageOf("hello"), HasSubstr("boom " + std::to_string(failure)));
    double backoff = 0.5 * (1 << (failure - 1));
    RunNodesOnly(backoff - 0.1);
    EXPECT_EQ(cluster_.starts.size(), static_cast<size_t>(failure))
        << "restarted before its " << backoff << " s backoff";
    RunNodesOnly(0.2);
  }
  EXPECT_EQ(StateOf("hello"), "DEPLOY_FAILED");
  EXPECT_THAT(MessageOf("hello"), HasSubstr(std::to_string(kMax) + " replica starts failed"));
  EXPECT_THAT(MessageOf("hello"), HasSubstr("boom " + std::to_string(kMax)));
  EXPECT_TRUE(cluster_.HasEvent("deployment", "hello", "DEPLOY_FAILED"));

  RunNodesOnly(120);
  EXPECT_EQ(cluster_.starts.size(), static_cast<size_t>(kMax)) << "gave up";

  // A new deploy starts over.
  auto fixed = Spec("hello");
  fixed.runtime = "builtin:echo";
  EXPECT_THAT(DeployOk(std::move(fixed)), ElementsAre(StartsWith("hello: updating from")));
  EXPECT_EQ(cluster_.starts.size(), static_cast<size_t>(kMax) + 1);
  EXPECT_EQ(StateOf("hello"), "UPDATING");
  Run(1);
  EXPECT_EQ(StateOf("hello"), "HEALTHY");
}

TEST_F(ReconcilerTest, RedeployingTheSameSpecAfterDeployFailedRetries) {
  ReconcilerOptions options;
  options.max_start_failures = 1;
  Recreate(options);
  AddNode("n1", 4);
  DeployOk(Spec("hello"));
  ASSERT_EQ(cluster_.starts.size(), 1u);
  r().OnStartResult(cluster_.starts[0].replica, {Status::Error("artifact not found")});
  cluster_.workers["n1"].clear();
  r().Step();
  ASSERT_EQ(StateOf("hello"), "DEPLOY_FAILED");

  DeployOk(Spec("hello"));
  EXPECT_EQ(cluster_.starts.size(), 2u);
  EXPECT_NE(StateOf("hello"), "DEPLOY_FAILED");
}

wire::DeploymentSpecT NativeSpec(const std::string& name, char digest_digit) {
  wire::DeploymentSpecT spec = Spec(name);
  spec.runtime = "native";
  spec.artifact = "sha256:" + std::string(64, digest_digit);
  spec.artifact_name = "lib" + name + ".so";
  return spec;
}

TEST_F(ReconcilerTest, NewArtifactRollsReplicasAndAReusedVersionIsRefused) {
  AddNode("n1", 4);
  auto first = DeployHealthy(NativeSpec("counter", 'a'));
  ASSERT_EQ(first.size(), 1u);
  EXPECT_THAT(DeployOk(NativeSpec("counter", 'b')), ElementsAre(HasSubstr("updating from")));

  DeployOk(WithVersion(NativeSpec("pinned", 'a'), "v1"));
  EXPECT_THAT(DeployError(WithVersion(NativeSpec("pinned", 'c'), "v1")),
              AllOf(HasSubstr("version 'v1' is already deployed with other code"),
                    HasSubstr("libpinned.so"), HasSubstr("give the new code a new version")));
}

TEST_F(ReconcilerTest, ArtifactMustBeADigest) {
  wire::DeploymentSpecT spec = NativeSpec("counter", 'a');
  spec.artifact = "./build/libcounter.so";
  EXPECT_THAT(DeployError(std::move(spec)), HasSubstr("serve deploy FILE"));
}

TEST_F(ReconcilerTest, StartThatNeverReportsHealthyTimesOut) {
  ReconcilerOptions options;
  options.start_margin_s = 4;
  Recreate(options);
  AddNode("n1", 4);
  wire::DeploymentSpecT spec = Spec("hello");
  spec.startup_timeout_s = 6;
  DeployOk(std::move(spec));
  ASSERT_EQ(cluster_.starts.size(), 1u);
  std::string id = cluster_.starts[0].replica;
  r().OnStartResult(id, {Status::Ok(), true, 1, 1});  // the node took it at once
  RunNodesOnly(10);
  EXPECT_THAT(cluster_.stops, IsEmpty());
  RunNodesOnly(1);
  EXPECT_THAT(cluster_.StoppedIds(), ElementsAre(id));
  EXPECT_THAT(MessageOf("hello"), HasSubstr("did not report healthy within 10 s"));
  RunNodesOnly(1);
  EXPECT_EQ(cluster_.starts.size(), 2u) << "retried after the first backoff";
}

TEST_F(ReconcilerTest, ExitedWorkerIsReplacedAtOnce) {
  AddNode("n1", 4);
  auto ids = DeployHealthy(Spec("hello"));
  ASSERT_EQ(ids.size(), 1u);
  cluster_.ClearCalls();

  cluster_.workers["n1"].erase(ids[0]);
  wire::ReplicaExitedT exited;
  exited.node_id = "n1";
  exited.replica_id = ids[0];
  exited.exit_code = 1;
  exited.message = "worker exited with code 1";
  r().OnReplicaExited(exited);
  EXPECT_TRUE(cluster_.HasEvent("replica", ids[0], "UNHEALTHY"));
  EXPECT_THAT(Routed("hello"), IsEmpty());

  r().Step();
  ASSERT_EQ(cluster_.starts.size(), 1u) << "no backoff for a replica that had been running";
  EXPECT_NE(cluster_.starts[0].replica, ids[0]);
  EXPECT_EQ(StateOf("hello"), "UNHEALTHY");
  EXPECT_THAT(MessageOf("hello"), HasSubstr("0/1 replicas running"));

  ReplicaHeartbeat(cluster_.starts[0].replica);
  r().Step();
  EXPECT_EQ(StateOf("hello"), "HEALTHY");
  EXPECT_THAT(Routed("hello"), ElementsAre(cluster_.starts[0].replica));
}

TEST_F(ReconcilerTest, WorkerMissingFromNodeHeartbeatIsReplaced) {
  AddNode("n1", 4);
  auto ids = DeployHealthy(Spec("hello", 2));
  Run(10);
  cluster_.ClearCalls();
  cluster_.workers["n1"].erase(ids[0]);  // died, and its exit report was lost
  Run(1);
  Settle();
  ASSERT_EQ(cluster_.starts.size(), 1u) << "a long-running worker is missed at once";
  EXPECT_EQ(ReplicaStates("hello").count(ids[0]), 0u);
  Run(1);
  EXPECT_EQ(StateOf("hello"), "HEALTHY");

  // A fresh replica, listed once and then no more, is missed at once too: the node said so.
  std::string fresh = cluster_.starts[0].replica;
  cluster_.ClearCalls();
  cluster_.workers["n1"].erase(fresh);
  Run(1);
  Settle();
  EXPECT_EQ(cluster_.starts.size(), 1u);
  EXPECT_EQ(ReplicaStates("hello").count(fresh), 0u);
}

// A node with a queue of start orders does not list a replica it has not reached yet: that is
// no evidence it is gone. Only heartbeats sent after the node accepted the order count.
TEST_F(ReconcilerTest, StartOrderNotYetReachedByItsNodeIsNotMissing) {
  AddNode("n1", 4);
  DeployOk(Spec("hello"));
  ASSERT_EQ(cluster_.starts.size(), 1u);
  std::string id = cluster_.starts[0].replica;
  auto queued = cluster_.workers["n1"][id];
  cluster_.workers["n1"].erase(id);  // still in the agent's queue
  RunNodesOnly(20);
  EXPECT_EQ(cluster_.starts.size(), 1u) << "not started twice";
  EXPECT_EQ(ReplicaStates("hello")[id], "STARTING");

  // The node reaches it: its answer names the first heartbeat that lists it.
  cluster_.workers["n1"][id] = queued;
  r().OnStartResult(id, {Status::Ok(), true, 1, heartbeat_seqs_["n1"] + 1});
  RunNodesOnly(1);
  EXPECT_EQ(ReplicaStates("hello")[id], "STARTING");
  // And once it has been listed, a heartbeat without it means it is gone.
  cluster_.workers["n1"].erase(id);
  RunNodesOnly(1);
  Settle();
  EXPECT_EQ(ReplicaStates("hello").count(id), 0u);
  RunNodesOnly(1);  // a start that failed backs off first
  EXPECT_EQ(cluster_.starts.size(), 2u);
}

// While the controller's own bus connection is down, and for a grace after it returns, silence
// convicts nobody: the same replicas stay routed and nothing is started.
TEST_F(ReconcilerTest, NoVerdictsWhileCutOffOrBeforeEveryoneWasHeardAgain) {
  AddNode("n1", 4);
  auto ids = DeployHealthy(Spec("hello", 2));
  wire::ProxyHeartbeatT proxy;
  proxy.proxy_id = "p1";
  proxy.period_s = 1;
  r().OnProxyHeartbeat(proxy);
  cluster_.ClearCalls();

  r().SetBusConnected(false);
  for (int i = 0; i < 60; ++i) {  // a minute without hearing anyone
    clock_.Advance(1);
    r().Step();
  }
  r().SetBusConnected(true);
  clock_.Advance(1);
  r().Step();
  EXPECT_TRUE(r().HoldingVerdicts());
  EXPECT_THAT(cluster_.starts, IsEmpty());
  EXPECT_THAT(cluster_.stops, IsEmpty());
  EXPECT_EQ(Routed("hello"), ids);
  EXPECT_EQ(StateOf("hello"), "HEALTHY");
  // Everyone speaks again within the grace: nothing happened.
  r().OnProxyHeartbeat(proxy);
  Run(3);
  EXPECT_FALSE(r().HoldingVerdicts());
  EXPECT_THAT(cluster_.starts, IsEmpty());
  EXPECT_EQ(Routed("hello"), ids);
  EXPECT_EQ(r().Report({}).nodes[0]->state, wire::MemberState::HEALTHY);

  // A node that stays silent after the grace is lost, with its replicas: now it is evidence.
  r().SetBusConnected(false);
  r().SetBusConnected(true);
  dead_nodes_.insert("n1");
  AddNode("n2", 4);
  for (int i = 0; i < 6; ++i) {
    clock_.Advance(1);
    NodeHeartbeat("n2");
    r().Step();
  }
  EXPECT_EQ(cluster_.starts.size(), 2u);
  for (const auto& start : cluster_.starts) EXPECT_EQ(start.node, "n2");
}

// A lost node stays in status, UNHEALTHY, for forget_lost_nodes_after_s; then it is dropped.
TEST_F(ReconcilerTest, LostNodeIsDroppedFromStatusAfterAWhile) {
  ReconcilerOptions options;
  options.forget_lost_nodes_after_s = 600;
  Recreate(options);
  AddNode("n1", 4);
  AddNode("n2", 4);
  dead_nodes_.insert("n2");
  RunNodesOnly(10);
  auto nodes = r().Report({}).nodes;
  ASSERT_EQ(nodes.size(), 2u);
  EXPECT_EQ(nodes[1]->state, wire::MemberState::UNHEALTHY);
  EXPECT_THAT(nodes[1]->message, HasSubstr("dropped from status after 600 s"));
  RunNodesOnly(600);
  nodes = r().Report({}).nodes;
  ASSERT_EQ(nodes.size(), 1u);
  EXPECT_EQ(nodes[0]->id, "n1");
  // Should it come back, it registers again.
  dead_nodes_.erase("n2");
  RunNodesOnly(1);
  EXPECT_EQ(r().Report({}).nodes.size(), 2u);
}

// A proxy that stopped (a restarted proxy comes back under a new id) goes the same way.
TEST_F(ReconcilerTest, LostProxyIsDroppedFromStatusAfterAWhile) {
  ReconcilerOptions options;
  options.forget_lost_nodes_after_s = 600;
  Recreate(options);
  AddNode("n1", 4);
  wire::ProxyHeartbeatT proxy;
  proxy.proxy_id = "p1";
  proxy.period_s = 1;
  r().OnProxyHeartbeat(proxy);
  RunNodesOnly(10);
  auto proxies = r().Report({}).proxies;
  ASSERT_EQ(proxies.size(), 1u);
  EXPECT_EQ(proxies[0]->state, wire::MemberState::UNHEALTHY);
  RunNodesOnly(600);
  EXPECT_THAT(r().Report({}).proxies, IsEmpty());
}

// Any bus client may publish a heartbeat. The period it claims measures silences and the grace
// after a reconnect, so a garbage period neither holds verdicts for good nor convicts at once.
TEST_F(ReconcilerTest, AbsurdHeartbeatPeriodsAreKeptWithinBounds) {
  EXPECT_EQ(Reconciler::SanePeriod(1e300), Reconciler::kMaxReportedPeriod_s);
  EXPECT_EQ(Reconciler::SanePeriod(std::numeric_limits<double>::infinity()), 1);
  EXPECT_EQ(Reconciler::SanePeriod(std::nan("")), 1);
  EXPECT_EQ(Reconciler::SanePeriod(-5), 1);
  EXPECT_EQ(Reconciler::SanePeriod(1e-9), Reconciler::kMinReportedPeriod_s);
  EXPECT_EQ(Reconciler::SanePeriod(2.5), 2.5);

  AddNode("n1", 4);
  auto ids = DeployHealthy(Spec("hello", 2));
  wire::ProxyHeartbeatT hostile;
  hostile.proxy_id = "p-hostile";
  hostile.period_s = 1e300;
  r().OnProxyHeartbeat(hostile);
  r().SetBusConnected(false);
  r().SetBusConnected(true);
  EXPECT_TRUE(r().HoldingVerdicts());
  Run(2 * Reconciler::kMaxReportedPeriod_s + 1);
  EXPECT_FALSE(r().HoldingVerdicts()) << "a claimed period must not hold verdicts for good";
  EXPECT_EQ(Routed("hello"), ids);
}

// A node agent that restarts comes back with a new incarnation: the workers of its earlier run
// ended with it, so they are replaced at once, without waiting for heartbeat timeouts.
TEST_F(ReconcilerTest, RestartedNodeAgentsWorkersAreReplacedAtOnce) {
  AddNode("n1", 4);
  auto ids = DeployHealthy(Spec("hello", 2));
  cluster_.ClearCalls();
  cluster_.workers["n1"].clear();
  incarnations_["n1"] = 2;
  NodeHeartbeat("n1");
  EXPECT_THAT(Routed("hello"), IsEmpty());
  EXPECT_TRUE(cluster_.HasEvent("node", "n1", "RESTARTED"));
  r().Step();
  EXPECT_EQ(cluster_.starts.size(), 2u);
  // A late heartbeat of the earlier run changes nothing.
  incarnations_["n1"] = 1;
  NodeHeartbeat("n1");
  incarnations_["n1"] = 2;
  Run(1);
  EXPECT_EQ(cluster_.starts.size(), 2u);
  EXPECT_EQ(StateOf("hello"), "HEALTHY");
}

// A config read back (REST API, `serve config`) names code by digest only, without the file
// name it was uploaded from: the same digest is the same deployment, not a rolling restart.
TEST_F(ReconcilerTest, TheSameCodeWithoutItsFileNameIsUnchanged) {
  AddNode("n1", 4);
  wire::DeploymentSpecT spec = Spec("native");
  spec.runtime = "native";
  spec.artifact = "sha256:" + std::string(64, 'a');
  spec.artifact_name = "libnative.so";
  DeployHealthy(spec);
  spec.artifact_name.clear();
  EXPECT_THAT(DeployOk(spec), ElementsAre("native: unchanged"));
  EXPECT_EQ(r().Desired()[0].artifact_name, "libnative.so");
}

// A checkpoint is not trusted more than the bus: a deployment in it that breaks the rules
// (two billion replicas would stall the controller) is left out, with the reason, and the rest
// is restored.
TEST_F(ReconcilerTest, RestoreLeavesOutDeploymentsThatBreakTheRules) {
  AddNode("n1", 8);
  DeployHealthy(Spec("good"));
  auto desired = r().Desired();
  ASSERT_EQ(desired.size(), 1u);
  wire::DeploymentSpecT bad = desired[0];
  bad.name = "bad";
  bad.route_prefix = "/bad";
  bad.num_replicas = 2000000000;
  desired.push_back(std::move(bad));
  Recreate(ReconcilerOptions{});
  auto skipped = r().Restore(desired);
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_THAT(skipped[0], HasSubstr("deployment 'bad': num_replicas must be at most 10000"));
  ASSERT_EQ(r().Desired().size(), 1u);
  EXPECT_EQ(r().Desired()[0].name, "good");
}

// A rolling update cut short by a controller restart goes on by the same rule: the restarted
// controller adopts the old version's replicas as RUNNING and the new version's as STARTING
// (as the node reports them), and stops the old ones only as new ones run.
TEST_F(ReconcilerTest, RollingUpdateResumedAfterRestartKeepsOldReplicasUntilNewOnesRun) {
  AddNode("n1", 8);
  auto old_ids = DeployHealthy(WithVersion(Spec("hello", 2), "v1"));
  DeployOk(WithVersion(Spec("hello", 2), "v2"));
  ASSERT_EQ(cluster_.starts.size(), 4u);
  std::vector<std::string> new_ids = {cluster_.starts[2].replica, cluster_.starts[3].replica};
  auto desired = r().Desired();
  ReconcilerOptions options;
  options.adoption_grace_s = 2.5;
  Recreate(options);  // the controller dies; its node still runs all four
  r().Restore(desired);
  cluster_.ClearCalls();
  RunNodesOnly(5);  // the new replicas take long to start
  EXPECT_THAT(cluster_.starts, IsEmpty()) << "the starting replicas were adopted";
  EXPECT_THAT(cluster_.stops, IsEmpty()) << "old replicas serve until new ones run";
  EXPECT_EQ(Routed("hello"), old_ids);
  for (const auto& id : new_ids) EXPECT_EQ(ReplicaStates("hello")[id], "STARTING");
  EXPECT_NE(StateOf("hello"), "HEALTHY");

  ReplicaHeartbeat(new_ids[0]);
  r().Step();
  EXPECT_EQ(cluster_.stops.size(), 1u) << "one old replica goes as one new one runs";
  EXPECT_NE(StateOf("hello"), "HEALTHY");
  ReplicaHeartbeat(new_ids[1]);
  r().Step();
  EXPECT_EQ(cluster_.stops.size(), 2u);
  std::vector<std::string> sorted_new = new_ids;
  std::sort(sorted_new.begin(), sorted_new.end());
  EXPECT_EQ(Routed("hello"), sorted_new);
  EXPECT_EQ(StateOf("hello"), "HEALTHY");
}

// Many deployments at once on a node that starts a few replicas at a time: the controller paces
// its start orders and sends none twice.
TEST_F(ReconcilerTest, StartsArePacedPerNodeAndNeverRepeated) {
  ReconcilerOptions options;
  options.max_starting_per_node = 4;
  Recreate(options);
  AddNode("n1", 64);
  auto name = [](int i) { return std::string("d").append(std::to_string(i)); };
  std::vector<wire::DeploymentSpecT> specs;
  for (int i = 0; i < 40; ++i) {
    wire::DeploymentSpecT spec = Spec(name(i));
    spec.resources->num_cpus = 0.1;
    specs.push_back(std::move(spec));
  }
  ASSERT_TRUE(r().Deploy(std::move(specs)).ok());
  EXPECT_EQ(cluster_.starts.size(), 4u);
  Run(20);
  std::vector<std::string> ids = cluster_.StartedIds();
  std::set<std::string> started(ids.begin(), ids.end());
  EXPECT_EQ(cluster_.starts.size(), 40u);
  EXPECT_EQ(started.size(), 40u);
  EXPECT_THAT(cluster_.stops, IsEmpty());
  for (int i = 0; i < 40; ++i) EXPECT_EQ(StateOf(name(i)), "HEALTHY");
}

TEST_F(ReconcilerTest, LostNodeIsUnhealthyAndItsReplicasMoveElsewhere) {
  AddNode("n1", 4);
  auto ids = DeployHealthy(Spec("hello"));
  AddNode("n2", 4);
  cluster_.ClearCalls();

  dead_nodes_.insert("n1");
  Run(3);
  EXPECT_THAT(cluster_.starts, IsEmpty()) << "3 missed heartbeats are not yet a lost node";
  Run(1);
  auto report = r().Report({});
  ASSERT_EQ(report.nodes.size(), 2u);
  EXPECT_EQ(report.nodes[0]->id, "n1");
  EXPECT_EQ(report.nodes[0]->state, wire::MemberState::UNHEALTHY);
  EXPECT_THAT(report.nodes[0]->message, HasSubstr("no heartbeat"));
  EXPECT_EQ(report.nodes[1]->state, wire::MemberState::HEALTHY);
  EXPECT_TRUE(cluster_.HasEvent("node", "n1", "UNHEALTHY"));
  ASSERT_EQ(cluster_.starts.size(), 1u);
  EXPECT_EQ(cluster_.starts[0].node, "n2");
  EXPECT_EQ(ReplicaStates("hello").count(ids[0]), 0u);
  EXPECT_EQ(StateOf("hello"), "UNHEALTHY");

  Run(1);
  EXPECT_EQ(StateOf("hello"), "HEALTHY");
  EXPECT_THAT(Routed("hello"), ElementsAre(cluster_.starts[0].replica));

  // n1 comes back still running the old copy: it is told to stop it.
  dead_nodes_.erase("n1");
  cluster_.ClearCalls();
  NodeHeartbeat("n1");
  EXPECT_TRUE(cluster_.HasEvent("node", "n1", "HEALTHY"));
  EXPECT_THAT(cluster_.StoppedIds(), ElementsAre(ids[0]));
  EXPECT_EQ(cluster_.stops[0].node, "n1");
}

TEST_F(ReconcilerTest, RunningReplicaWithoutHeartbeatIsStoppedAndReplaced) {
  AddNode("n1", 4);
  auto spec = Spec("hello");
  spec.health_check_period_s = 1;
  spec.health_check_timeout_s = 5;
  auto ids = DeployHealthy(std::move(spec));
  cluster_.ClearCalls();

  silent_.insert(ids[0]);
  Run(4);
  EXPECT_THAT(cluster_.stops, IsEmpty());
  EXPECT_EQ(ReplicaStates("hello")[ids[0]], "RUNNING");
  Run(2);
  EXPECT_THAT(cluster_.StoppedIds(), ElementsAre(ids[0]));
  EXPECT_TRUE(cluster_.HasEvent("replica", ids[0], "UNHEALTHY"));
  EXPECT_EQ(cluster_.starts.size(), 1u) << "a replacement";
  EXPECT_THAT(Routed("hello"), Not(::testing::Contains(ids[0])));

  Run(1);
  EXPECT_EQ(StateOf("hello"), "HEALTHY");
  EXPECT_EQ(Routed("hello").size(), 1u);
}

TEST_F(ReconcilerTest, ReplicaFailingHealthChecksIsStoppedAndReplaced) {
  AddNode("n1", 4);
  auto ids = DeployHealthy(Spec("hello"));
  cluster_.ClearCalls();
  for (int i = 0; i < 3; ++i) {
    clock_.Advance(1);
    NodeHeartbeat("n1");
    ReplicaHeartbeat(ids[0], /*healthy=*/false);
    r().Step();
  }
  EXPECT_THAT(cluster_.StoppedIds(), ElementsAre(ids[0]));
  EXPECT_THAT(Routed("hello"), Not(::testing::Contains(ids[0])));
  EXPECT_EQ(cluster_.starts.size(), 1u);
}

TEST_F(ReconcilerTest, StalledReplicaIsStoppedAndReplaced) {
  AddNode("n1", 4);
  auto spec = Spec("hello");
  spec.health_check_period_s = 1;
  spec.health_check_timeout_s = 5;
  auto ids = DeployHealthy(std::move(spec));
  cluster_.ClearCalls();
  for (int i = 0; i < 7; ++i) {
    clock_.Advance(1);
    NodeHeartbeat("n1");
    wire::ReplicaHeartbeatT hb;
    hb.replica_id = ids[0];
    hb.healthy = true;
    hb.in_flight = 3;
    hb.completed = 42;  // never moves
    r().OnReplicaHeartbeat(hb);
    r().Step();
  }
  EXPECT_THAT(cluster_.StoppedIds(), ElementsAre(ids[0]));
  EXPECT_EQ(cluster_.starts.size(), 1u);
}

// ---------------------------------------------------------------------------------------------
// Adoption after a controller restart

TEST_F(ReconcilerTest, RestartedControllerAdoptsRunningReplicasDuringGrace) {
  DeployOk(WithVersion(Spec("hello", 2), "v1"));
  auto desired = r().Desired();
  ReconcilerOptions options;
  options.adoption_grace_s = 5;
  Recreate(options);
  r().Restore(desired);
  cluster_.ClearCalls();

  // Node n1 still runs one replica from before the restart.
  cluster_.workers["n1"]["hello-old1"] = {"hello", "v1", clock_.Now()};
  AddNode("n1", 4);
  EXPECT_THAT(cluster_.stops, IsEmpty());
  auto status = Status("hello");
  const auto* adopted = FindReplica(status, "hello-old1");
  ASSERT_NE(adopted, nullptr);
  EXPECT_EQ(adopted->state, wire::ReplicaState::RUNNING);
  EXPECT_EQ(adopted->node, "n1");
  EXPECT_EQ(adopted->version, "v1");
  EXPECT_THAT(adopted->message, HasSubstr("adopted"));
  EXPECT_THAT(Routed("hello"), ElementsAre("hello-old1"));
  EXPECT_TRUE(r().Recovering());
  r().Step();
  EXPECT_EQ(StateOf("hello"), "RECOVERING");
  EXPECT_THAT(MessageOf("hello"), HasSubstr("adopting replicas that still run"));

  // Nothing is started during the grace period, although one replica is missing.
  r().Step();
  Run(4);
  EXPECT_THAT(cluster_.starts, IsEmpty());
  Run(2);
  ASSERT_EQ(cluster_.starts.size(), 1u);
  EXPECT_EQ(cluster_.starts[0].spec.version, "v1");
  EXPECT_FALSE(r().Recovering());
  Run(1);
  EXPECT_EQ(StateOf("hello"), "HEALTHY");
  EXPECT_EQ(Routed("hello").size(), 2u);
}

TEST_F(ReconcilerTest, RestoreStartsNothingDuringGrace) {
  DeployOk(Spec("hello", 1));
  auto desired = r().Desired();
  ReconcilerOptions options;
  options.adoption_grace_s = 3;
  Recreate(options);
  r().Restore(desired);
  AddNode("n1", 4);
  r().Step();
  RunNodesOnly(2);
  EXPECT_THAT(cluster_.starts, IsEmpty());
  EXPECT_THAT(Status("hello").replicas, IsEmpty());
  EXPECT_EQ(Status("hello").version, desired[0].version);
  RunNodesOnly(2);
  EXPECT_EQ(cluster_.starts.size(), 1u);
}

TEST_F(ReconcilerTest, UnknownReplicasBeyondWhatIsNeededAreStopped) {
  DeployOk(WithVersion(Spec("hello", 1), "v1"));
  auto desired = r().Desired();
  ReconcilerOptions options;
  options.adoption_grace_s = 5;
  Recreate(options);
  r().Restore(desired);

  cluster_.workers["n1"]["hello-a"] = {"hello", "v1", clock_.Now()};
  cluster_.workers["n1"]["hello-b"] = {"hello", "v1", clock_.Now()};    // one too many
  cluster_.workers["n1"]["hello-old"] = {"hello", "v0", clock_.Now()};  // another version
  cluster_.workers["n1"]["ghost-1"] = {"ghost", "v1", clock_.Now()};    // deleted meanwhile
  AddNode("n1", 8);
  // Another version's replica is adopted too: it would serve if the new one did not run.
  EXPECT_EQ(ReplicaStates("hello"), (std::map<std::string, std::string>{
                                        {"hello-a", "RUNNING"}, {"hello-old", "RUNNING"}}));
  EXPECT_THAT(cluster_.StoppedIds(), UnorderedElementsAre("hello-b", "ghost-1"));
  RunNodesOnly(6);
  EXPECT_THAT(cluster_.StoppedIds(), UnorderedElementsAre("hello-b", "hello-old", "ghost-1"));
  for (const auto& stop : cluster_.stops) EXPECT_EQ(stop.node, "n1");
}

TEST_F(ReconcilerTest, UnknownReplicaOfHealthyDeploymentIsStopped) {
  AddNode("n1", 4);
  auto ids = DeployHealthy(Spec("hello"));
  cluster_.ClearCalls();
  cluster_.workers["n1"]["hello-stray"] = {"hello", Status("hello").version, clock_.Now()};
  NodeHeartbeat("n1");
  EXPECT_THAT(cluster_.StoppedIds(), ElementsAre("hello-stray"));
  EXPECT_EQ(Routed("hello"), ids);
}

TEST_F(ReconcilerTest, RunningReplicaIsAdoptedInsteadOfAReplicaStillWaitingForANode) {
  DeployOk(WithVersion(Spec("hello", 1), "v1"));
  auto desired = r().Desired();
  Recreate(ReconcilerOptions{});  // no grace
  r().Restore(desired);
  r().Step();  // no node yet: a PENDING replica
  ASSERT_EQ(Status("hello").replicas.size(), 1u);
  cluster_.ClearCalls();

  cluster_.workers["n1"]["hello-live"] = {"hello", "v1", clock_.Now()};
  AddNode("n1", 4);
  EXPECT_THAT(cluster_.stops, IsEmpty());
  EXPECT_EQ(ReplicaStates("hello")["hello-live"], "RUNNING");
  r().Step();
  EXPECT_THAT(cluster_.starts, IsEmpty());
  EXPECT_THAT(Routed("hello"), ElementsAre("hello-live"));
  EXPECT_EQ(StateOf("hello"), "HEALTHY");
}

// ---------------------------------------------------------------------------------------------
// Reports and desired state

TEST_F(ReconcilerTest, ReportFiltersDeploymentsByNameAndListsNodesAndProxies) {
  AddNode("n1", 4);
  DeployHealthy(Spec("a"));
  DeployHealthy(Spec("b", 2));
  wire::ProxyHeartbeatT proxy;
  proxy.proxy_id = "p1";
  proxy.address = "10.0.0.1:8000";
  proxy.period_s = 1;
  r().OnProxyHeartbeat(proxy);

  auto all = r().Report({});
  ASSERT_EQ(all.deployments.size(), 2u);
  EXPECT_EQ(all.deployments[0]->name, "a");
  EXPECT_EQ(all.deployments[1]->name, "b");

  auto only_b = r().Report({"b"});
  ASSERT_EQ(only_b.deployments.size(), 1u);
  const auto& b = *only_b.deployments[0];
  EXPECT_EQ(b.name, "b");
  EXPECT_EQ(b.status, wire::DeploymentState::HEALTHY);
  EXPECT_EQ(b.route_prefix, "/b");
  EXPECT_EQ(b.runtime, "builtin:hello");
  EXPECT_EQ(b.num_replicas, 2);
  EXPECT_THAT(b.version, StartsWith("auto-"));
  ASSERT_EQ(b.replicas.size(), 2u);
  for (const auto& replica : b.replicas) {
    EXPECT_EQ(replica->state, wire::ReplicaState::RUNNING);
    EXPECT_EQ(replica->node, "n1");
    EXPECT_EQ(replica->version, b.version);
  }

  // Nodes and proxies are listed whatever the filter.
  ASSERT_EQ(only_b.nodes.size(), 1u);
  EXPECT_EQ(only_b.nodes[0]->id, "n1");
  EXPECT_EQ(only_b.nodes[0]->host, "host-n1");
  EXPECT_EQ(only_b.nodes[0]->state, wire::MemberState::HEALTHY);
  EXPECT_EQ(only_b.nodes[0]->num_cpus, 4);
  EXPECT_EQ(only_b.nodes[0]->replicas, 3);
  ASSERT_EQ(only_b.proxies.size(), 1u);
  EXPECT_EQ(only_b.proxies[0]->id, "p1");
  EXPECT_EQ(only_b.proxies[0]->address, "10.0.0.1:8000");
  EXPECT_EQ(only_b.proxies[0]->state, wire::MemberState::HEALTHY);

  EXPECT_THAT(r().Report({"nope"}).deployments, IsEmpty());
  EXPECT_EQ(r().Report({"a", "b", "nope"}).deployments.size(), 2u);

  // A proxy that stops heartbeating is UNHEALTHY.
  Run(4);
  auto later = r().Report({});
  EXPECT_EQ(later.proxies[0]->state, wire::MemberState::UNHEALTHY);
  EXPECT_GE(later.proxies[0]->last_seen_s, 3.5);
  EXPECT_TRUE(cluster_.HasEvent("proxy", "p1", "UNHEALTHY"));
}

TEST_F(ReconcilerTest, DesiredListsAdmittedSpecsInNameOrder) {
  auto b = WithVersion(Spec("b", 3), "v7");
  b.user_config = R"({"greeting":"hi"})";
  b.max_concurrent_queries = 7;
  DeployOk(std::move(b));
  DeployOk(WithCustom(Spec("a", 1, 0.5), "accel", 2));

  auto desired = r().Desired();
  ASSERT_EQ(desired.size(), 2u);
  EXPECT_EQ(desired[0].name, "a");
  EXPECT_EQ(desired[0].route_prefix, "/a") << "defaults are filled in";
  EXPECT_THAT(desired[0].version, StartsWith("auto-"));
  ASSERT_NE(desired[0].resources, nullptr);
  EXPECT_EQ(desired[0].resources->num_cpus, 0.5);
  ASSERT_EQ(desired[0].resources->custom.size(), 1u);
  EXPECT_EQ(desired[0].resources->custom[0]->amount, 2);
  EXPECT_EQ(desired[1].name, "b");
  EXPECT_EQ(desired[1].version, "v7");
  EXPECT_EQ(desired[1].num_replicas, 3);
  EXPECT_EQ(desired[1].max_concurrent_queries, 7);
  EXPECT_EQ(desired[1].user_config, R"({"greeting":"hi"})");

  // Scaling shows in the desired state.
  DeployOk(WithCustom(Spec("a", 4, 0.5), "accel", 2));
  EXPECT_EQ(r().Desired()[0].num_replicas, 4);

  // What is restored is what was desired, and deploying the same again changes nothing.
  desired = r().Desired();
  Recreate(ReconcilerOptions{});
  r().Restore(desired);
  auto restored = r().Desired();
  ASSERT_EQ(restored.size(), desired.size());
  for (size_t i = 0; i < desired.size(); ++i) EXPECT_TRUE(restored[i] == desired[i]) << i;
  EXPECT_THAT(DeployOk(WithCustom(Spec("a", 4, 0.5), "accel", 2)), ElementsAre("a: unchanged"));

  ASSERT_TRUE(r().Delete({"a"}).ok());
  ASSERT_EQ(r().Desired().size(), 1u);
  EXPECT_EQ(r().Desired()[0].name, "b");
}

TEST_F(ReconcilerTest, ShortHashIsStableAndSixteenHexDigits) {
  EXPECT_EQ(ShortHash("abc"), ShortHash("abc"));
  EXPECT_NE(ShortHash("abc"), ShortHash("abd"));
  EXPECT_EQ(ShortHash("").size(), 16u);
  EXPECT_EQ(ShortHash(""), "cbf29ce484222325");  // the FNV-1a offset basis
}


TEST_F(ReconcilerTest, UserConfigChangeOfACommandRollsItsReplicas) {
  AddNode("n1", 4);
  auto spec = Spec("model", 1);
  spec.runtime = "command";
  spec.command = {"python3", "server.py"};
  spec.user_config = R"({"threshold":1})";
  auto first = Spec("model", 1);
  first.runtime = "command";
  first.command = {"python3", "server.py"};
  first.user_config = R"({"threshold":2})";
  auto ids = DeployHealthy(std::move(spec));
  ASSERT_EQ(ids.size(), 1u);
  cluster_.ClearCalls();
  EXPECT_THAT(DeployOk(std::move(first)), ElementsAre(HasSubstr("rolling restart")));
  EXPECT_TRUE(cluster_.reconfigures.empty()) << "a command reads user_config only at start";
  EXPECT_EQ(cluster_.starts.size(), 1u);
}

TEST_F(ReconcilerTest, UserConfigChangeReconfiguresInPlace) {
  AddNode("n1", 4);
  auto spec = Spec("hello", 2);
  spec.user_config = R"({"message":"one"})";
  auto ids = DeployHealthy(std::move(spec));
  ASSERT_EQ(ids.size(), 2u);
  cluster_.ClearCalls();

  auto changed = Spec("hello", 2);
  changed.user_config = R"({"message":"two"})";
  auto results = DeployOk(std::move(changed));
  EXPECT_THAT(results, ElementsAre("hello: reconfigured in place"));
  ASSERT_EQ(cluster_.reconfigures.size(), 2u);
  EXPECT_EQ(cluster_.reconfigures[0].user_config, R"({"message":"two"})");
  EXPECT_TRUE(cluster_.starts.empty());
  EXPECT_TRUE(cluster_.stops.empty());
  // Still serving from the same replicas while the change lands.
  EXPECT_EQ(Routed("hello"), ids);
  EXPECT_EQ(StateOf("hello"), "UPDATING");
  EXPECT_THAT(MessageOf("hello"), HasSubstr("reconfiguring 2"));

  for (const auto& call : cluster_.reconfigures) {
    r().OnReconfigureResult(call.replica, call.config_hash, Status::Ok());
  }
  r().Step();
  EXPECT_EQ(StateOf("hello"), "HEALTHY");
  EXPECT_EQ(Routed("hello"), ids);
  // Steps after that send nothing more.
  cluster_.ClearCalls();
  Run(3);
  EXPECT_TRUE(cluster_.reconfigures.empty());
}

TEST_F(ReconcilerTest, ReplicaThatRefusesANewConfigIsReplaced) {
  AddNode("n1", 4);
  auto ids = DeployHealthy(Spec("hello", 1));
  cluster_.ClearCalls();
  auto changed = Spec("hello", 1);
  changed.user_config = R"({"message":"bad"})";
  DeployOk(std::move(changed));
  ASSERT_EQ(cluster_.reconfigures.size(), 1u);
  r().OnReconfigureResult(ids[0], cluster_.reconfigures[0].config_hash,
                          Status::Error("reconfigure failed: no"));
  r().Step();
  EXPECT_THAT(cluster_.StoppedIds(), ElementsAre(ids[0]));
  ASSERT_EQ(cluster_.starts.size(), 1u);
  EXPECT_EQ(cluster_.starts[0].spec.user_config, R"({"message":"bad"})");
}

TEST_F(ReconcilerTest, MaxConcurrentQueriesChangesWithoutARestart) {
  AddNode("n1", 4);
  auto ids = DeployHealthy(Spec("hello", 2));
  cluster_.ClearCalls();
  auto changed = Spec("hello", 2);
  changed.max_concurrent_queries = 7;
  EXPECT_THAT(DeployOk(std::move(changed)), ElementsAre("hello: reconfigured in place"));
  EXPECT_TRUE(cluster_.starts.empty());
  EXPECT_TRUE(cluster_.stops.empty());
  // The replicas enforce the limit too, so they are told.
  ASSERT_EQ(cluster_.reconfigures.size(), 2u);
  for (const auto& call : cluster_.reconfigures) {
    r().OnReconfigureResult(call.replica, call.config_hash, Status::Ok());
  }
  r().Step();
  auto table = r().Routes();
  ASSERT_EQ(table.routes.size(), 1u);
  ASSERT_EQ(table.routes[0]->replicas.size(), 2u);
  EXPECT_EQ(table.routes[0]->replicas[0]->max_concurrent_queries, 7);
  EXPECT_EQ(StateOf("hello"), "HEALTHY");
}

TEST_F(ReconcilerTest, ReplicaStartedBeforeAConfigChangeCatchesUpOnceRunning) {
  AddNode("n1", 4);
  DeployOk(Spec("hello", 1));
  ASSERT_EQ(cluster_.starts.size(), 1u);
  std::string id = cluster_.starts[0].replica;
  auto changed = Spec("hello", 1);
  changed.user_config = R"({"message":"later"})";
  DeployOk(std::move(changed));
  EXPECT_TRUE(cluster_.reconfigures.empty());  // not running yet: nothing to reconfigure
  Run(1);
  ASSERT_EQ(cluster_.reconfigures.size(), 1u);
  EXPECT_EQ(cluster_.reconfigures[0].replica, id);
}

}  // namespace
}  // namespace serve::controller
