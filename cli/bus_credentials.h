#pragma once

// The NATS users of a local instance. `serve start` makes one user per role with a fresh random
// password each time it starts nats-server, writes them to the run directory (mode 0600, like
// the server's configuration), and every later `serve` command of that user finds the admin's
// there: a local user notices nothing, while no other account or process without the file can
// use the bus.

#include <map>
#include <optional>
#include <string>

#include "base/status.h"
#include "bus/bus.h"
#include "bus/jwt.h"
#include "bus/roles.h"

namespace serve::cli {

struct BusUser {
  std::string user;
  std::string password;
};

struct BusCredentials {
  std::map<bus::Role, BusUser> users;

  // A user per role of namespace `ns`, each with 128 random bits of password.
  static Result<BusCredentials> Generate(const std::string& ns);
  const BusUser& Of(bus::Role role) const { return users.at(role); }
};

// <run dir>/bus-credentials.
std::string BusCredentialsPath(const std::string& run_dir);

// Writes `credentials` to `path` with mode 0600 (replacing any earlier file atomically).
Status WriteBusCredentials(const std::string& path, const BusCredentials& credentials);
// nullopt when there is no file; an error when it is unreadable or malformed.
Result<std::optional<BusCredentials>> ReadBusCredentials(const std::string& path);

// Writes `text` to `path` with mode 0600, atomically: for nats-server's configuration.
Status WritePrivateFile(const std::string& path, const std::string& text);

// Operator mode (the default): <run dir>/creds holds a .creds file per role but the worker
// (<role>.creds), the scoped signing key node agents mint worker users with
// (worker-signing.key), and the operator and account JWTs for nats-server (nats-operator.conf).
// The directory is 0700, its files 0600.
std::string CredsDir(const std::string& run_dir);
std::string RoleCredsPath(const std::string& run_dir, bus::Role role);
std::string WorkerSigningKeyPath(const std::string& run_dir);
std::string NatsOperatorConfigPath(const std::string& run_dir);
// Writes a fresh operator setup's files to CredsDir(run_dir), replacing any earlier ones.
Status WriteOperatorCredentials(const std::string& run_dir, const bus::OperatorSetup& setup);
// Removes CredsDir(run_dir): for a start in another mode.
void RemoveOperatorCredentials(const std::string& run_dir);

// True when `options` carries credentials of its own (flags or environment).
bool HasBusCredentials(const bus::Options& options);

}  // namespace serve::cli
