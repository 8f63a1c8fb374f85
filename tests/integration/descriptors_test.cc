// What child processes inherit: a replica worker holds nothing of its node agent's, and a
// service started by `serve start` nothing of the shell that ran it (cli_test.cc).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "integration/cluster.h"

namespace serve::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

TEST(Descriptors, WorkerInheritsNothingFromItsAgent) {
  InheritablePipe pipe;  // the node agent inherits it; it must stop there
  Cluster cluster;
  cluster.Deploy(kHelloConfig);
  ASSERT_EQ(cluster.Get("/hello").status, 200);
  auto hello = cluster.Deployment("hello");
  ASSERT_TRUE(hello.is_object());
  ASSERT_EQ(hello["replicas"].size(), 1u);
  pid_t worker = Cluster::WorkerPid(hello["replicas"][0]["id"]);
  ASSERT_GT(worker, 0);
  pid_t agent = cluster.node(0).pid();
  ASSERT_THAT(SharedDescriptors(agent, getpid()), Not(IsEmpty()))
      << "the agent should hold the test's pipe, or this test proves nothing";

  // Nothing open in the worker is the agent's (its NATS socket, say) or the test's pipe.
  EXPECT_THAT(SharedDescriptors(worker, agent), IsEmpty());
  EXPECT_THAT(SharedDescriptors(worker, getpid()), IsEmpty());
  // And the agent passed nothing at exec: the worker, which closes and reports whatever it
  // finds open on entry, found nothing.
  std::string worker_log = cluster.ReplicaLog("node-1", hello["replicas"][0]["id"]);
  ASSERT_THAT(worker_log, HasSubstr("ready on")) << "the worker's own lines are in its log";
  EXPECT_THAT(worker_log, Not(HasSubstr("descriptors inherited from the node agent")));
}

}  // namespace
}  // namespace serve::testing
