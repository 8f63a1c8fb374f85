#include "service/descriptors.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

namespace serve::service {
namespace {

bool CloseOnExec(int fd) { return (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }

TEST(Descriptors, MarkSetsCloseOnExecAboveStderrOnly) {
  int stdio_flags[3];
  for (int fd = 0; fd < 3; ++fd) stdio_flags[fd] = fcntl(fd, F_GETFD);
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);  // deliberately without O_CLOEXEC
  ASSERT_FALSE(CloseOnExec(fds[0]));
  ASSERT_TRUE(MarkDescriptorsCloseOnExec());
  EXPECT_TRUE(CloseOnExec(fds[0]));
  EXPECT_TRUE(CloseOnExec(fds[1]));
  for (int fd = 0; fd < 3; ++fd) EXPECT_EQ(fcntl(fd, F_GETFD), stdio_flags[fd]) << "fd " << fd;
  close(fds[0]);
  close(fds[1]);
}

TEST(Descriptors, CloseInheritedLeavesOnlyStdio) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int closed = CloseInheritedDescriptors();
    bool gone = fcntl(fds[0], F_GETFD) == -1 && fcntl(fds[1], F_GETFD) == -1;
    bool stdio = fcntl(2, F_GETFD) != -1;
    _exit(gone && stdio && closed >= 2 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  close(fds[0]);
  close(fds[1]);
}

}  // namespace
}  // namespace serve::service
