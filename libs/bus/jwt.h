#pragma once

// NATS JWTs for the bus's operator mode (docs/security.md): an operator, one account whose
// users are Serve's roles, and a scoped signing key of that account from which a node agent
// mints one user per worker. The claims are those nats-server 2.9 reads (nats-io/jwt v2):
// header {"typ":"JWT","alg":"ed25519-nkey"}, a jti hashing the claims, iss, sub, iat, name
// and a `nats` object with the type, version 2 and what that type carries.

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "bus/nkeys.h"
#include "bus/roles.h"

namespace serve::bus {

// The operator's JWT, signed by the operator itself.
Result<std::string> OperatorJwt(const Nkey& operator_key, const std::string& name);

// A scoped signing key of an account: users it signs get `permissions` (which may use
// nats-server's templates, `{{name()}}` for the user's name), and may state none of their own.
struct ScopedSigningKey {
  std::string public_key;  // an account nkey ("A...")
  std::string role;        // a label, e.g. "worker"
  Permissions permissions;
};

// The account's JWT, signed by the operator: no limits, and `scoped` as its signing key.
Result<std::string> AccountJwt(const Nkey& operator_key, const std::string& account_public_key,
                               const std::string& name, const ScopedSigningKey& scoped);

// A user's JWT. `issuer` is the account's own key (then `issuer_account` is empty and the user
// has `permissions`), or a scoped signing key of account `issuer_account` (then `permissions`
// must be null: nats-server refuses scoped users that state permissions or limits).
Result<std::string> UserJwt(const Nkey& issuer, const std::string& issuer_account,
                            const std::string& user_public_key, const std::string& name,
                            const Permissions* permissions);

// A .creds file: the user's JWT and nkey seed, in the layout nats tools and clients read.
std::string CredsText(std::string_view user_jwt, std::string_view user_seed);

struct Creds {
  std::string jwt;
  std::string seed;
};
// Reads CredsText()'s layout back; refused, naming what is missing, when a part is not there.
Result<Creds> ParseCreds(std::string_view text);

// What a node agent mints its workers' users with (`<run dir>/creds/worker-signing.key`): the
// account's scoped signing key for workers, and the account it signs for.
struct WorkerSigningKey {
  std::string account;  // the account's public key ("A...")
  Nkey key;             // the scoped signing key (an account nkey)
};
std::string WorkerSigningKeyText(const std::string& account, const Nkey& key);
// Refused, naming the line at fault and the fix, when the text is not WorkerSigningKeyText's.
Result<WorkerSigningKey> ParseWorkerSigningKey(std::string_view text);

// A fresh user for the worker of replica `replica_id`: a new user nkey, and a JWT of that
// name signed by the scoped key, so the server grants it exactly its replica's subjects.
Result<Creds> MintWorkerUser(const WorkerSigningKey& signing, const std::string& replica_id);

// A bus in operator mode, made fresh: an operator, an account for namespace `ns` whose users
// are Serve's roles, and the account's scoped signing key for workers.
struct OperatorSetup {
  std::string operator_jwt;
  std::string account_public_key;
  std::string account_jwt;
  // The .creds text of each role's user but the worker's: workers get users of their own.
  std::map<Role, std::string> creds;
  std::string worker_signing_key;  // WorkerSigningKeyText()

  // nats-server configuration: the operator, and a memory resolver preloaded with the account.
  std::string NatsServerConfigText() const;
};
Result<OperatorSetup> GenerateOperatorSetup(const std::string& ns);

// The claims of `jwt` as JSON text, once its signature by its `iss` checks out. For tests and
// for checking a signing key file before use.
Result<std::string> VerifiedJwtClaims(std::string_view jwt);

}  // namespace serve::bus
