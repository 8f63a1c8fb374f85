#include "bus/jwt.h"

#include <openssl/evp.h>

#include <ctime>
#include <nlohmann/json.hpp>

namespace serve::bus {
namespace {

using nlohmann::json;

// The `jti` of nats-io/jwt v2: base32 of the SHA-512/256 of the claims without a jti.
Result<std::string> ClaimsHash(const json& claims) {
  std::string text = claims.dump();
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  if (EVP_Digest(text.data(), text.size(), digest, &size, EVP_sha512_256(), nullptr) != 1) {
    return Status::Error("cannot hash JWT claims (OpenSSL without SHA-512/256?)");
  }
  return Base32Encode(std::string(reinterpret_cast<char*>(digest), size));
}

Result<std::string> Encode(const Nkey& issuer, json claims) {
  claims["iat"] = static_cast<int64_t>(time(nullptr));
  claims["iss"] = issuer.public_key();
  auto id = ClaimsHash(claims);
  if (!id.ok()) return id.status();
  claims["jti"] = *id;
  std::string signed_part = Base64UrlEncode(R"({"typ":"JWT","alg":"ed25519-nkey"})");
  signed_part.append(".").append(Base64UrlEncode(claims.dump()));
  auto signature = issuer.Sign(signed_part);
  if (!signature.ok()) return signature.status();
  return signed_part.append(".").append(Base64UrlEncode(*signature));
}

json PermissionsJson(const Permissions& permissions) {
  json out = json::object();
  out["pub"] =
      permissions.publish.empty() ? json{{"deny", {">"}}} : json{{"allow", permissions.publish}};
  out["sub"] = json{{"allow", permissions.subscribe}};
  if (permissions.answers_requests) {
    // One answer per request received, for as long as a request may run (24 h, in ns).
    out["resp"] = json{{"max", 1}, {"ttl", int64_t{24} * 3600 * 1000 * 1000 * 1000}};
  }
  return out;
}

constexpr std::string_view kJwtBegin = "-----BEGIN NATS USER JWT-----";
constexpr std::string_view kSeedBegin = "-----BEGIN USER NKEY SEED-----";

// The first line after `marker` in `text`, trimmed; empty when there is none.
std::string LineAfter(std::string_view text, std::string_view marker) {
  size_t at = text.find(marker);
  if (at == std::string_view::npos) return "";
  text.remove_prefix(at + marker.size());
  while (!text.empty() && (text.front() == '\n' || text.front() == '\r' || text.front() == ' ')) {
    text.remove_prefix(1);
  }
  size_t end = text.find_first_of("\r\n ");
  return std::string(text.substr(0, end));
}

}  // namespace

Result<std::string> OperatorJwt(const Nkey& operator_key, const std::string& name) {
  json claims = {{"sub", operator_key.public_key()},
                 {"name", name},
                 {"nats", {{"type", "operator"}, {"version", 2}}}};
  return Encode(operator_key, claims);
}

Result<std::string> AccountJwt(const Nkey& operator_key, const std::string& account_public_key,
                               const std::string& name, const ScopedSigningKey& scoped) {
  json templ = PermissionsJson(scoped.permissions);
  // A scoped key's template carries the users' limits too: none.
  templ["subs"] = -1;
  templ["data"] = -1;
  templ["payload"] = -1;
  json claims = {{"sub", account_public_key},
                 {"name", name},
                 {"nats",
                  {{"type", "account"},
                   {"version", 2},
                   // No limits of the account's own (-1); a zero would mean "none allowed".
                   {"limits",
                    {{"subs", -1},
                     {"data", -1},
                     {"payload", -1},
                     {"imports", -1},
                     {"exports", -1},
                     {"wildcards", true},
                     {"conn", -1},
                     {"leaf", -1}}},
                   {"default_permissions", {{"pub", json::object()}, {"sub", json::object()}}},
                   {"signing_keys", json::array({{{"kind", "user_scope"},
                                                  {"key", scoped.public_key},
                                                  {"role", scoped.role},
                                                  {"template", templ}}})}}}};
  return Encode(operator_key, claims);
}

Result<std::string> UserJwt(const Nkey& issuer, const std::string& issuer_account,
                            const std::string& user_public_key, const std::string& name,
                            const Permissions* permissions) {
  json nats = {{"type", "user"}, {"version", 2}};
  if (!issuer_account.empty()) nats["issuer_account"] = issuer_account;
  if (permissions != nullptr) {
    nats.update(PermissionsJson(*permissions));
    nats["subs"] = -1;
    nats["data"] = -1;
    nats["payload"] = -1;
  }
  json claims = {{"sub", user_public_key}, {"name", name}, {"nats", nats}};
  return Encode(issuer, claims);
}

std::string CredsText(std::string_view user_jwt, std::string_view user_seed) {
  std::string out;
  out.append(kJwtBegin).append("\n").append(user_jwt).append("\n");
  out.append("------END NATS USER JWT------\n\n");
  out.append("************************* IMPORTANT *************************\n");
  out.append("NKEY Seed printed below can be used to sign and prove identity.\n");
  out.append("NKEYs are sensitive and should be treated as secrets.\n\n");
  out.append(kSeedBegin).append("\n").append(user_seed).append("\n");
  out.append("------END USER NKEY SEED------\n\n");
  out.append("*************************************************************\n");
  return out;
}

Result<Creds> ParseCreds(std::string_view text) {
  Creds out{LineAfter(text, kJwtBegin), LineAfter(text, kSeedBegin)};
  if (out.jwt.empty() || out.jwt[0] == '-') {
    return Status::Error("no user JWT in it (a '" + std::string(kJwtBegin) + "' block)");
  }
  if (out.seed.empty() || out.seed[0] == '-') {
    return Status::Error("no user nkey seed in it (a '" + std::string(kSeedBegin) + "' block)");
  }
  return out;
}

std::string WorkerSigningKeyText(const std::string& account, const Nkey& key) {
  std::string out =
      "# The scoped signing key node agents mint worker users with (docs/security.md).\n";
  out.append("account ").append(account).append("\n");
  out.append("seed ").append(key.seed()).append("\n");
  return out;
}

Result<WorkerSigningKey> ParseWorkerSigningKey(std::string_view text) {
  std::string account, seed;
  while (!text.empty()) {
    size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
    if (line.empty() || line[0] == '#') continue;
    if (line.rfind("account ", 0) == 0) {
      account = line.substr(8);
    } else if (line.rfind("seed ", 0) == 0) {
      seed = line.substr(5);
    } else {
      return Status::Error("a line is neither 'account <A...>' nor 'seed <SA...>'");
    }
  }
  auto account_bytes = Base32Decode(account);
  if (account.size() != 56 || account[0] != 'A' || !account_bytes.ok()) {
    return Status::Error("no 'account <A...>' line with an account public key");
  }
  auto key = Nkey::FromSeed(seed, NkeyType::kAccount);
  if (!key.ok()) return key.status();
  return WorkerSigningKey{account, std::move(*key)};
}

Result<Creds> MintWorkerUser(const WorkerSigningKey& signing, const std::string& replica_id) {
  auto user = Nkey::Generate(NkeyType::kUser);
  if (!user.ok()) return user.status();
  auto jwt = UserJwt(signing.key, signing.account, user->public_key(), replica_id, nullptr);
  if (!jwt.ok()) return jwt.status();
  return Creds{*jwt, user->seed()};
}

Result<OperatorSetup> GenerateOperatorSetup(const std::string& ns) {
  auto operator_key = Nkey::Generate(NkeyType::kOperator);
  auto account_key = Nkey::Generate(NkeyType::kAccount);
  auto worker_key = Nkey::Generate(NkeyType::kAccount);
  if (!operator_key.ok()) return operator_key.status();
  if (!account_key.ok()) return account_key.status();
  if (!worker_key.ok()) return worker_key.status();
  OperatorSetup out;
  auto operator_jwt = OperatorJwt(*operator_key, "serve-" + ns);
  if (!operator_jwt.ok()) return operator_jwt.status();
  out.operator_jwt = *operator_jwt;
  out.account_public_key = account_key->public_key();
  auto account_jwt =
      AccountJwt(*operator_key, out.account_public_key, ns,
                 {worker_key->public_key(), "worker", WorkerTemplatePermissions(ns)});
  if (!account_jwt.ok()) return account_jwt.status();
  out.account_jwt = *account_jwt;
  for (Role role : kAllRoles) {
    if (role == Role::kWorker) continue;
    auto user = Nkey::Generate(NkeyType::kUser);
    if (!user.ok()) return user.status();
    Permissions permissions = PermissionsOf(ns, role);
    auto jwt = UserJwt(*account_key, "", user->public_key(), UserName(ns, role), &permissions);
    if (!jwt.ok()) return jwt.status();
    out.creds[role] = CredsText(*jwt, user->seed());
  }
  out.worker_signing_key = WorkerSigningKeyText(out.account_public_key, *worker_key);
  return out;
}

std::string OperatorSetup::NatsServerConfigText() const {
  std::string out;
  out.append("operator: \"").append(operator_jwt).append("\"\n");
  out.append("resolver: MEMORY\n");
  out.append("resolver_preload: {\n  ").append(account_public_key).append(": \"");
  out.append(account_jwt).append("\"\n}\n");
  return out;
}

Result<std::string> VerifiedJwtClaims(std::string_view jwt) {
  size_t first = jwt.find('.');
  size_t second = first == std::string_view::npos ? first : jwt.find('.', first + 1);
  if (second == std::string_view::npos) return Status::Error("not a JWT (three dotted parts)");
  auto claims_text = Base64UrlDecode(jwt.substr(first + 1, second - first - 1));
  auto signature = Base64UrlDecode(jwt.substr(second + 1));
  if (!claims_text.ok() || !signature.ok()) return Status::Error("not a JWT (bad base64url)");
  json claims = json::parse(*claims_text, nullptr, false);
  if (!claims.is_object() || !claims.contains("iss") || !claims["iss"].is_string()) {
    return Status::Error("the JWT's claims are not a JSON object with an 'iss'");
  }
  if (!VerifyNkeySignature(claims["iss"].get<std::string>(), jwt.substr(0, second), *signature)) {
    return Status::Error("the JWT's signature is not its issuer's");
  }
  return *claims_text;
}

}  // namespace serve::bus
