#include "replica/worker.h"

#include <gtest/gtest.h>

namespace serve::replica {
namespace {

TEST(HandlerThreads, FollowsConcurrencyUpToTheCap) {
  EXPECT_EQ(HandlerThreads(1), 1u);
  EXPECT_EQ(HandlerThreads(100), 100u);
  EXPECT_EQ(HandlerThreads(kMaxHandlerThreads), static_cast<size_t>(kMaxHandlerThreads));
}

// max_concurrent_queries may be 10,000 (or more, with the controller's flag): the worker runs
// at most kMaxHandlerThreads of them at once and queues the rest.
TEST(HandlerThreads, NeverGrowsPastTheCap) {
  EXPECT_EQ(HandlerThreads(10'000), static_cast<size_t>(kMaxHandlerThreads));
  EXPECT_EQ(HandlerThreads(1'000'000), static_cast<size_t>(kMaxHandlerThreads));
  EXPECT_EQ(HandlerThreads(500, 8), 8u);
}

TEST(HandlerThreads, IsAtLeastOne) {
  EXPECT_EQ(HandlerThreads(0), 1u);
  EXPECT_EQ(HandlerThreads(-5), 1u);
  EXPECT_EQ(HandlerThreads(10, 0), 1u);
}

}  // namespace
}  // namespace serve::replica
