#pragma once

// Who may say what on the bus. Each Serve process connects to NATS as the user of its role,
// and the NATS server's permissions let that user publish and subscribe only where the role
// needs to (docs/security.md gives the reasons). The same table writes the nats-server
// configuration `serve start` uses and the one deploy/nats ships, so they cannot drift apart.

#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace serve::bus {

enum class Role { kController, kProxy, kNode, kWorker, kCheckpointer, kAdmin };

inline constexpr Role kAllRoles[] = {Role::kController, Role::kProxy,        Role::kNode,
                                     Role::kWorker,     Role::kCheckpointer, Role::kAdmin};

// "controller", "proxy", "node", "worker", "checkpointer", "admin".
std::string_view RoleName(Role role);

// The NATS user of `role` in namespace `ns`: "<ns>-<role>", so the users of several namespaces
// can share one server.
std::string UserName(const std::string& ns, Role role);

// Where replies to `role`'s requests arrive: "_INBOX.<ns>.<role>". Only that role may
// subscribe below it, so nobody else reads the answers it asked for.
std::string InboxPrefix(const std::string& ns, Role role);

struct Permissions {
  std::vector<std::string> publish;    // subjects the role may publish to
  std::vector<std::string> subscribe;  // subjects the role may subscribe to
  // May answer requests: publish once to the reply subject of a message it received.
  bool answers_requests = false;
};

Permissions PermissionsOf(const std::string& ns, Role role);

// The permissions of one worker's own user (operator mode): the worker role's, narrowed to its
// replica. A template of nats-server's: `{{name()}}` is the user's name, the replica id.
Permissions WorkerTemplatePermissions(const std::string& ns);

// Where a worker's replies arrive: "_INBOX.<ns>.worker.<replica id>", below the worker role's
// inbox, so it suits both a per-worker user and the worker role's shared one.
std::string WorkerInboxPrefix(const std::string& ns, const std::string& replica_id);

// The environment variable a shipped configuration reads `role`'s password from:
// SERVE_NATS_PASSWORD_<ROLE>.
std::string PasswordVariable(Role role);

// nats-server configuration text: `max_payload` and an `authorization` block with one user per
// role. `password_of(role)` gives each password as it is to appear in the file: a quoted
// literal, or a `$VARIABLE` the server takes from its environment.
template <typename PasswordOf>
std::string NatsServerConfig(const std::string& ns, PasswordOf password_of);
std::string NatsServerConfigText(const std::string& ns,
                                 const std::vector<std::string>& passwords_by_role);

template <typename PasswordOf>
std::string NatsServerConfig(const std::string& ns, PasswordOf password_of) {
  std::vector<std::string> passwords;
  for (Role role : kAllRoles) passwords.push_back(password_of(role));
  return NatsServerConfigText(ns, passwords);
}

// `password` (or a user or token) as a double-quoted string of nats-server's configuration,
// with '\\' and '"' escaped.
std::string QuotedPassword(std::string_view password);

}  // namespace serve::bus
