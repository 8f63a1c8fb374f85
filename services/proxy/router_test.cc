#include "proxy/router.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "wire/codec.h"
#include "wire/serve_generated.h"

namespace serve::proxy {
namespace {

using ::testing::HasSubstr;

// A route table as the controller would publish it.
class TableBuilder {
 public:
  TableBuilder(uint64_t generation, std::string controller = "c1") {
    table_.generation = generation;
    table_.controller_id = std::move(controller);
  }
  TableBuilder& Route(const std::string& prefix, const std::string& deployment,
                      const std::vector<std::string>& replicas = {},
                      int max_concurrent_queries = 100) {
    auto route = std::make_unique<wire::RouteT>();
    route->route_prefix = prefix;
    route->deployment = deployment;
    for (const auto& id : replicas) {
      auto replica = std::make_unique<wire::RouteReplicaT>();
      replica->id = id;
      replica->max_concurrent_queries = max_concurrent_queries;
      route->replicas.push_back(std::move(replica));
    }
    table_.routes.push_back(std::move(route));
    return *this;
  }
  // Packs, verifies and applies the table, as the proxy does with what arrives on the bus.
  bool ApplyTo(Router& router) const {
    std::string bytes = wire::Pack(table_);
    auto verified = wire::Verify<wire::RouteTable>(bytes);
    EXPECT_TRUE(verified.ok()) << verified.error();
    if (!verified.ok()) return false;
    return router.Update(**verified);
  }

 private:
  wire::RouteTableT table_;
};

// "r<i>". Built by appending: GCC 12 warns falsely (-Wrestrict) on "r" + std::to_string(i).
std::string ReplicaName(int i) {
  std::string name = "r";
  name.append(std::to_string(i));
  return name;
}

std::string LookupPrefix(const Router& router, std::string_view path) {
  const Route* route = router.Lookup(path);
  return route == nullptr ? "<none>" : route->prefix;
}

// ---------------------------------------------------------------------------------------------
// Matching

TEST(RouterLookup, EmptyRouterMatchesNothing) {
  Router router("serve");
  EXPECT_EQ(router.Lookup("/"), nullptr);
  EXPECT_EQ(router.Lookup("/a"), nullptr);
  EXPECT_EQ(router.route_count(), 0u);
  EXPECT_EQ(router.RoutesJson(), "{}");
}

TEST(RouterLookup, PrefixMatchesOnlyOnSegmentBoundaries) {
  Router router("serve");
  ASSERT_TRUE(TableBuilder(1).Route("/a", "a").ApplyTo(router));
  EXPECT_EQ(LookupPrefix(router, "/a"), "/a");
  EXPECT_EQ(LookupPrefix(router, "/a/"), "/a");
  EXPECT_EQ(LookupPrefix(router, "/a/b"), "/a");
  EXPECT_EQ(LookupPrefix(router, "/a/b/c"), "/a");
  EXPECT_EQ(LookupPrefix(router, "/ab"), "<none>");
  EXPECT_EQ(LookupPrefix(router, "/abc/d"), "<none>");
  EXPECT_EQ(LookupPrefix(router, "/b"), "<none>");
  EXPECT_EQ(LookupPrefix(router, "/"), "<none>");
  EXPECT_EQ(LookupPrefix(router, ""), "<none>");
  EXPECT_EQ(LookupPrefix(router, "a"), "<none>");
  EXPECT_EQ(LookupPrefix(router, "/A"), "<none>") << "paths are case-sensitive";
}

TEST(RouterLookup, RootIsCatchAllAndLongestPrefixWins) {
  Router router("serve");
  ASSERT_TRUE(TableBuilder(1)
                  .Route("/", "root")
                  .Route("/a", "a")
                  .Route("/a/b", "ab")
                  .Route("/api/v1", "v1")
                  .ApplyTo(router));
  EXPECT_EQ(router.route_count(), 4u);
  EXPECT_EQ(LookupPrefix(router, "/"), "/");
  EXPECT_EQ(LookupPrefix(router, ""), "/");
  EXPECT_EQ(LookupPrefix(router, "/anything/else"), "/");
  EXPECT_EQ(LookupPrefix(router, "/ab"), "/");
  EXPECT_EQ(LookupPrefix(router, "/a"), "/a");
  EXPECT_EQ(LookupPrefix(router, "/a/bc"), "/a");
  EXPECT_EQ(LookupPrefix(router, "/a/b"), "/a/b");
  EXPECT_EQ(LookupPrefix(router, "/a/b/c"), "/a/b");
  EXPECT_EQ(LookupPrefix(router, "/api/v1/predict"), "/api/v1");
  EXPECT_EQ(LookupPrefix(router, "/api/v2"), "/");
  EXPECT_EQ(LookupPrefix(router, "/api"), "/");
  ASSERT_NE(router.Lookup("/a/b/c"), nullptr);
  EXPECT_EQ(router.Lookup("/a/b/c")->deployment, "ab");
}

TEST(RouterLookup, OrderOfRoutesInTheTableDoesNotMatter) {
  Router router("serve");
  ASSERT_TRUE(TableBuilder(1)
                  .Route("/a/b/c", "abc")
                  .Route("/", "root")
                  .Route("/a/b", "ab")
                  .Route("/a", "a")
                  .ApplyTo(router));
  EXPECT_EQ(LookupPrefix(router, "/a/b/c/d"), "/a/b/c");
  EXPECT_EQ(LookupPrefix(router, "/a/b/x"), "/a/b");
  EXPECT_EQ(LookupPrefix(router, "/a/x"), "/a");
  EXPECT_EQ(LookupPrefix(router, "/x"), "/");
}

TEST(RouterLookup, ReplicasCarrySubjectAndLimit) {
  Router router("myns");
  ASSERT_TRUE(TableBuilder(1)
                  .Route("/a", "a", {"a-1", "a-2"}, 8)
                  .Route("/z", "z", {"z-1"}, 0)
                  .ApplyTo(router));
  const Route* a = router.Lookup("/a");
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->replicas.size(), 2u);
  EXPECT_EQ(a->replicas[0].id, "a-1");
  EXPECT_EQ(a->replicas[0].subject, "myns.replica.a-1");
  EXPECT_EQ(a->replicas[0].max_concurrent_queries, 8);
  EXPECT_EQ(a->replicas[1].subject, "myns.replica.a-2");
  const Route* z = router.Lookup("/z");
  ASSERT_NE(z, nullptr);
  ASSERT_EQ(z->replicas.size(), 1u);
  EXPECT_EQ(z->replicas[0].max_concurrent_queries, 1) << "a limit below 1 is raised to 1";
}

// ---------------------------------------------------------------------------------------------
// Updates

TEST(RouterUpdate, OlderGenerationFromSameControllerIsIgnored) {
  Router router("serve");
  ASSERT_TRUE(TableBuilder(5, "c1").Route("/a", "a").ApplyTo(router));
  EXPECT_EQ(router.generation(), 5u);

  EXPECT_FALSE(TableBuilder(4, "c1").Route("/old", "old").ApplyTo(router));
  EXPECT_EQ(router.generation(), 5u);
  EXPECT_NE(router.Lookup("/a"), nullptr);
  EXPECT_EQ(router.Lookup("/old"), nullptr);

  // The same generation again is harmless; a newer one replaces the whole table.
  EXPECT_TRUE(TableBuilder(5, "c1").Route("/a", "a").ApplyTo(router));
  EXPECT_TRUE(TableBuilder(6, "c1").Route("/b", "b").ApplyTo(router));
  EXPECT_EQ(router.generation(), 6u);
  EXPECT_EQ(router.Lookup("/a"), nullptr);
  EXPECT_NE(router.Lookup("/b"), nullptr);
  EXPECT_EQ(router.route_count(), 1u);
}

TEST(RouterUpdate, NewControllerIsAcceptedEvenWithLowerGeneration) {
  Router router("serve");
  ASSERT_TRUE(TableBuilder(100, "c1").Route("/a", "a").ApplyTo(router));
  EXPECT_TRUE(TableBuilder(1, "c2").Route("/b", "b").ApplyTo(router));
  EXPECT_EQ(router.generation(), 1u);
  EXPECT_EQ(router.Lookup("/a"), nullptr);
  EXPECT_NE(router.Lookup("/b"), nullptr);

  // From now on c2's generations count.
  EXPECT_FALSE(TableBuilder(0, "c2").ApplyTo(router));
  EXPECT_TRUE(TableBuilder(2, "c2").ApplyTo(router));
  EXPECT_EQ(router.route_count(), 0u);
}

TEST(RouterUpdate, FirstTableIsAlwaysApplied) {
  Router router("serve");
  EXPECT_TRUE(TableBuilder(0, "").Route("/a", "a").ApplyTo(router));
  EXPECT_EQ(router.generation(), 0u);
  EXPECT_EQ(router.route_count(), 1u);
}

TEST(RouterUpdate, InFlightCountsSurviveATableChange) {
  Router router("serve");
  ASSERT_TRUE(TableBuilder(1).Route("/a", "a", {"r1", "r2"}).ApplyTo(router));
  router.Acquire("r1");
  router.Acquire("r1");
  // r1 leaves the table while two requests are still running on it.
  ASSERT_TRUE(TableBuilder(2).Route("/a", "a", {"r2"}).ApplyTo(router));
  EXPECT_EQ(router.InFlight("r1"), 2);
  router.Release("r1");
  router.Release("r1");
  EXPECT_EQ(router.InFlight("r1"), 0);
}

// ---------------------------------------------------------------------------------------------
// Picking replicas

TEST(RouterPick, NeverReturnsExcludedReplicas) {
  Router router("serve");
  ASSERT_TRUE(TableBuilder(1).Route("/a", "a", {"r1", "r2", "r3"}).ApplyTo(router));
  const Route& route = *router.Lookup("/a");
  for (int i = 0; i < 200; ++i) {
    bool all_full = true;
    const ReplicaTarget* picked = router.Pick(route, {"r1", "r3"}, &all_full);
    ASSERT_NE(picked, nullptr);
    EXPECT_EQ(picked->id, "r2");
    EXPECT_FALSE(all_full);
  }
  for (int i = 0; i < 200; ++i) {
    const ReplicaTarget* picked = router.Pick(route, {"r2"}, nullptr);
    ASSERT_NE(picked, nullptr);
    EXPECT_NE(picked->id, "r2");
  }
  bool all_full = true;
  EXPECT_EQ(router.Pick(route, {"r1", "r2", "r3"}, &all_full), nullptr);
  EXPECT_FALSE(all_full) << "none left to try is not the same as all at their limit";
}

TEST(RouterPick, NeverReturnsFullReplicasAndReportsAllFull) {
  Router router("serve");
  ASSERT_TRUE(TableBuilder(1).Route("/a", "a", {"r1", "r2"}, 2).ApplyTo(router));
  const Route& route = *router.Lookup("/a");
  router.Acquire("r1");
  router.Acquire("r1");  // r1 at its limit
  for (int i = 0; i < 100; ++i) {
    bool all_full = true;
    const ReplicaTarget* picked = router.Pick(route, {}, &all_full);
    ASSERT_NE(picked, nullptr);
    EXPECT_EQ(picked->id, "r2");
    EXPECT_FALSE(all_full);
  }
  router.Acquire("r2");
  router.Acquire("r2");
  bool all_full = false;
  EXPECT_EQ(router.Pick(route, {}, &all_full), nullptr);
  EXPECT_TRUE(all_full);

  // One excluded, the rest full: still "all full" (queue, don't fail).
  all_full = false;
  EXPECT_EQ(router.Pick(route, {"r1"}, &all_full), nullptr);
  EXPECT_TRUE(all_full);

  router.Release("r1");
  all_full = true;
  const ReplicaTarget* picked = router.Pick(route, {}, &all_full);
  ASSERT_NE(picked, nullptr);
  EXPECT_EQ(picked->id, "r1");
  EXPECT_FALSE(all_full);
}

TEST(RouterPick, RouteWithoutReplicasIsNotFull) {
  Router router("serve");
  ASSERT_TRUE(TableBuilder(1).Route("/idle", "idle").ApplyTo(router));
  bool all_full = true;
  EXPECT_EQ(router.Pick(*router.Lookup("/idle"), {}, &all_full), nullptr);
  EXPECT_FALSE(all_full);
  EXPECT_EQ(router.Pick(*router.Lookup("/idle"), {}, nullptr), nullptr);
}

TEST(RouterPick, PowerOfTwoChoicesBalancesLoad) {
  Router router("serve");
  ASSERT_TRUE(TableBuilder(1).Route("/a", "a", {"r1", "r2"}, 10000).ApplyTo(router));
  const Route& route = *router.Lookup("/a");
  for (int i = 0; i < 1000; ++i) {
    const ReplicaTarget* picked = router.Pick(route, {}, nullptr);
    ASSERT_NE(picked, nullptr);
    router.Acquire(picked->id);
  }
  // With two replicas both are always compared, so the less loaded one always wins.
  EXPECT_EQ(router.InFlight("r1"), 500);
  EXPECT_EQ(router.InFlight("r2"), 500);
}

TEST(RouterPick, PowerOfTwoChoicesSpreadsOverManyReplicas) {
  Router router("serve");
  std::vector<std::string> ids;
  for (int i = 0; i < 8; ++i) ids.push_back(ReplicaName(i));
  ASSERT_TRUE(TableBuilder(1).Route("/a", "a", ids, 10000).ApplyTo(router));
  const Route& route = *router.Lookup("/a");
  for (int i = 0; i < 4000; ++i) {
    const ReplicaTarget* picked = router.Pick(route, {}, nullptr);
    ASSERT_NE(picked, nullptr);
    router.Acquire(picked->id);
  }
  int least = 1 << 30, most = 0;
  for (const auto& id : ids) {
    least = std::min(least, router.InFlight(id));
    most = std::max(most, router.InFlight(id));
  }
  EXPECT_GT(least, 0) << "every replica gets work";
  // Random choice alone would spread ~500 +- 60; two choices keep it within a few.
  EXPECT_LE(most - least, 10) << "least " << least << ", most " << most;
}

TEST(RouterPick, PrefersTheLessLoadedReplica) {
  Router router("serve");
  ASSERT_TRUE(TableBuilder(1).Route("/a", "a", {"busy", "idle"}, 100).ApplyTo(router));
  const Route& route = *router.Lookup("/a");
  for (int i = 0; i < 5; ++i) router.Acquire("busy");
  for (int i = 0; i < 5; ++i) {
    const ReplicaTarget* picked = router.Pick(route, {}, nullptr);
    ASSERT_NE(picked, nullptr);
    EXPECT_EQ(picked->id, "idle");
    router.Acquire(picked->id);
  }
  EXPECT_EQ(router.InFlight("idle"), 5);
}

TEST(RouterPick, WorksWithMoreThanSixtyFourReplicas) {
  Router router("serve");
  std::vector<std::string> ids;
  for (int i = 0; i < 100; ++i) ids.push_back(ReplicaName(i));
  ASSERT_TRUE(TableBuilder(1).Route("/a", "a", ids, 1).ApplyTo(router));
  const Route& route = *router.Lookup("/a");

  // Only the last one (past the fixed-size candidate array) may be used.
  std::set<std::string> exclude(ids.begin(), ids.end() - 1);
  for (int i = 0; i < 50; ++i) {
    const ReplicaTarget* picked = router.Pick(route, exclude, nullptr);
    ASSERT_NE(picked, nullptr);
    EXPECT_EQ(picked->id, "r99");
  }
  // Fill all of them, one request each: every replica is used exactly once.
  std::set<std::string> used;
  for (int i = 0; i < 100; ++i) {
    const ReplicaTarget* picked = router.Pick(route, {}, nullptr);
    ASSERT_NE(picked, nullptr) << i;
    EXPECT_TRUE(used.insert(picked->id).second) << picked->id << " picked while full";
    router.Acquire(picked->id);
  }
  bool all_full = false;
  EXPECT_EQ(router.Pick(route, {}, &all_full), nullptr);
  EXPECT_TRUE(all_full);
}

// ---------------------------------------------------------------------------------------------
// In-flight bookkeeping

TEST(RouterInFlight, AcquireAndReleaseCount) {
  Router router("serve");
  EXPECT_EQ(router.InFlight("r1"), 0);
  router.Acquire("r1");
  router.Acquire("r1");
  router.Acquire("r2");
  EXPECT_EQ(router.InFlight("r1"), 2);
  EXPECT_EQ(router.InFlight("r2"), 1);
  router.Release("r1");
  EXPECT_EQ(router.InFlight("r1"), 1);
  router.Release("r1");
  EXPECT_EQ(router.InFlight("r1"), 0);
  // A release too many (or of an unknown replica) does not go negative.
  router.Release("r1");
  router.Release("never-seen");
  EXPECT_EQ(router.InFlight("r1"), 0);
  EXPECT_EQ(router.InFlight("never-seen"), 0);
  router.Acquire("r1");
  EXPECT_EQ(router.InFlight("r1"), 1);
  EXPECT_EQ(router.InFlight("r2"), 1);
}

// ---------------------------------------------------------------------------------------------
// /-/routes

TEST(RouterRoutesJson, MapsPrefixesToDeployments) {
  Router router("serve");
  ASSERT_TRUE(TableBuilder(1)
                  .Route("/hello", "hello", {"h1"})
                  .Route("/", "root")
                  .Route("/api/v1", "api")
                  .ApplyTo(router));
  EXPECT_EQ(router.RoutesJson(), R"({"/":"root","/api/v1":"api","/hello":"hello"})");

  ASSERT_TRUE(TableBuilder(2).Route("/say \"hi\"", "quote").ApplyTo(router));
  EXPECT_THAT(router.RoutesJson(), HasSubstr(R"("/say \"hi\"":"quote")")) << "escaped";

  ASSERT_TRUE(TableBuilder(3).ApplyTo(router));
  EXPECT_EQ(router.RoutesJson(), "{}");
}

}  // namespace
}  // namespace serve::proxy
