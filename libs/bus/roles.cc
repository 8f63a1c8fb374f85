#include "bus/roles.h"

#include <cctype>

namespace serve::bus {

std::string_view RoleName(Role role) {
  switch (role) {
    case Role::kController:
      return "controller";
    case Role::kProxy:
      return "proxy";
    case Role::kNode:
      return "node";
    case Role::kWorker:
      return "worker";
    case Role::kCheckpointer:
      return "checkpointer";
    case Role::kAdmin:
      return "admin";
  }
  return "unknown";
}

std::string UserName(const std::string& ns, Role role) {
  return ns + "-" + std::string(RoleName(role));
}

std::string InboxPrefix(const std::string& ns, Role role) {
  std::string prefix = "_INBOX.";
  return prefix.append(ns).append(".").append(RoleName(role));
}

Permissions PermissionsOf(const std::string& ns, Role role) {
  const std::string n = ns + ".";
  const std::string inbox = InboxPrefix(ns, role) + ".>";
  switch (role) {
    case Role::kController:
      // Decides everything: the only one to publish routes, orders, shutdown notices and
      // checkpoint writes. `ctl.ping` is how a starting controller looks for a live one.
      return {{n + "routes", n + "events", n + "shutdown", n + "node.*.start", n + "node.*.stop",
               n + "replica.*.ctl", n + "logs", n + "ckpt.get", n + "ckpt.put", n + "ctl.ping"},
              {n + "ctl.>", n + "hb.>", n + "node.exited", inbox},
              /*answers_requests=*/true};
    case Role::kProxy:
      // Sends requests to replicas (not to their control subjects: `replica.*` is one token).
      return {{n + "replica.*", n + "hb.proxy", n + "ctl.routes"},
              {n + "routes", n + "node.exited", n + "shutdown", inbox},
              /*answers_requests=*/false};
    case Role::kNode:
      return {
          {n + "node.exited", n + "hb.node"},
          {n + "node.*.start", n + "node.*.stop", n + "node.*.metrics", n + "logs", n + "shutdown"},
          /*answers_requests=*/true};
    case Role::kWorker:
      // Runs user code: answers requests, reports on itself, fetches its code; nothing else.
      return {{n + "hb.replica", n + "node.*.metrics", n + "ckpt.blob.get"},
              {n + "replica.*", n + "replica.*.ctl", inbox},
              /*answers_requests=*/true};
    case Role::kCheckpointer:
      return {{}, {n + "ckpt.>", n + "shutdown"}, /*answers_requests=*/true};
    case Role::kAdmin:
      // The CLI, and the supervisor of a local instance (its heartbeats and events).
      return {{n + "ctl.>", n + "logs", n + "ckpt.blob.stat", n + "ckpt.blob.put",
               n + "hb.supervisor", n + "events"},
              {n + "events", n + "shutdown", inbox},
              /*answers_requests=*/false};
  }
  return {};
}

Permissions WorkerTemplatePermissions(const std::string& ns) {
  Permissions p = PermissionsOf(ns, Role::kWorker);
  const std::string own = ns + ".replica.{{name()}}";
  p.subscribe = {own, own + ".ctl", WorkerInboxPrefix(ns, "{{name()}}") + ".>"};
  return p;
}

std::string WorkerInboxPrefix(const std::string& ns, const std::string& replica_id) {
  return InboxPrefix(ns, Role::kWorker).append(".").append(replica_id);
}

std::string PasswordVariable(Role role) {
  std::string name = "SERVE_NATS_PASSWORD_";
  for (char c : RoleName(role))
    name += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return name;
}

namespace {

std::string List(const std::vector<std::string>& subjects) {
  std::string out = "[";
  for (size_t i = 0; i < subjects.size(); ++i) {
    out.append(i == 0 ? "\"" : ", \"").append(subjects[i]).append("\"");
  }
  return out + "]";
}

}  // namespace

std::string NatsServerConfigText(const std::string& ns,
                                 const std::vector<std::string>& passwords_by_role) {
  std::string out;
  out += "# Serve's NATS server: one user per role, each allowed only the subjects of namespace\n";
  out += "# '" + ns + "' it needs (docs/security.md). Anonymous clients are refused.\n";
  out += "# Requests and answers travel as single messages: 8 MiB rather than NATS's 1 MiB.\n";
  out += "max_payload: 8388608\n\n";
  out += "authorization {\n  users = [\n";
  size_t i = 0;
  for (Role role : kAllRoles) {
    Permissions p = PermissionsOf(ns, role);
    out += "    {\n";
    out += "      user: \"" + UserName(ns, role) + "\"\n";
    out += "      password: " + passwords_by_role.at(i++) + "\n";
    out += "      permissions: {\n";
    if (p.publish.empty()) {
      out += "        publish: {deny: [\">\"]}\n";
    } else {
      out += "        publish: {allow: " + List(p.publish) + "}\n";
    }
    out += "        subscribe: {allow: " + List(p.subscribe) + "}\n";
    if (p.answers_requests) {
      // One answer per request received, for as long as a request may run.
      out += "        allow_responses: {max: 1, expires: \"24h\"}\n";
    }
    out += "      }\n    }\n";
  }
  out += "  ]\n}\n";
  return out;
}

std::string QuotedPassword(std::string_view password) {
  std::string quoted = "\"";
  for (char c : password) {
    if (c == '"' || c == '\\') quoted.push_back('\\');
    quoted.push_back(c);
  }
  return quoted.append("\"");
}

}  // namespace serve::bus
