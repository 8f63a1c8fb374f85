#include "service/descriptors.h"

#include <dirent.h>
#include <linux/close_range.h>
#include <unistd.h>

#include <cstdlib>

namespace serve::service {

bool MarkDescriptorsCloseOnExec() noexcept { return close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) == 0; }

int CloseInheritedDescriptors(int keep) noexcept {
  // Counted first, for a caller that wants to report it; closed in one call either way.
  int open = 0;
  if (DIR* dir = opendir("/proc/self/fd"); dir != nullptr) {
    int own = dirfd(dir);
    while (const dirent* entry = readdir(dir)) {
      int fd = std::atoi(entry->d_name);
      if (fd > 2 && fd != own && fd != keep) ++open;
    }
    closedir(dir);
  } else {
    open = -1;
  }
  if (keep > 2) {
    if (keep > 3) close_range(3, static_cast<unsigned>(keep) - 1, 0);
    close_range(static_cast<unsigned>(keep) + 1, ~0U, 0);
  } else {
    close_range(3, ~0U, 0);
  }
  return open;
}

}  // namespace serve::service
