#pragma once

namespace serve::service {

// What a child process inherits: stdin, stdout and stderr, and what its parent hands it on
// purpose by dup2() onto those three. Nothing else. Libraries open descriptors without
// O_CLOEXEC (nats.c's sockets, created on its own threads at any moment) and a parent's sockets
// in a child keep connections open after the parent closed them, so every spawn site marks
// descriptors close-on-exec just before it starts a child.

// Marks every descriptor above stderr close-on-exec, in one system call (close_range), so it is
// safe between fork() and exec(). Returns false with errno set when the kernel refuses.
bool MarkDescriptorsCloseOnExec() noexcept;

// Closes every descriptor above stderr but `keep` (one handed over on purpose; -1: none). For
// the first line of a child's main(), when nothing it opened itself exists yet. Returns how many
// were open (`keep` not counted), or -1 when /proc/self/fd is unreadable.
int CloseInheritedDescriptors(int keep = -1) noexcept;

}  // namespace serve::service
