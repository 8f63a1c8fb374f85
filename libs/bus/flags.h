#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "bus/bus.h"

namespace serve::bus {

// Adds --address and the NATS auth/TLS flags (AddBusFlags: and --namespace) to `app`. Each flag can also come
// from the environment (SERVE_ADDRESS, SERVE_NAMESPACE, SERVE_NATS_USER, ...), which is how
// `serve start` hands them to the services it launches.
inline void AddBusFlagsNoNamespace(CLI::App& app, Options& options) {
  app.add_option("--address", options.url, "NATS server URL(s), comma-separated")
      ->envname("SERVE_ADDRESS")
      ->capture_default_str();
  app.add_option("--nats-user", options.user, "NATS user")->envname("SERVE_NATS_USER");
  app.add_option("--nats-password", options.password, "NATS password")
      ->envname("SERVE_NATS_PASSWORD");
  app.add_option("--nats-token", options.token, "NATS token")->envname("SERVE_NATS_TOKEN");
  app.add_option("--nats-creds", options.creds_file, "NATS credentials file (JWT + NKey)")
      ->envname("SERVE_NATS_CREDS");
  app.add_option("--nats-tls-ca", options.tls_ca, "CA certificates to verify the NATS server")
      ->envname("SERVE_NATS_TLS_CA");
  app.add_option("--nats-tls-cert", options.tls_cert, "client certificate for NATS")
      ->envname("SERVE_NATS_TLS_CERT");
  app.add_option("--nats-tls-key", options.tls_key, "client key for NATS")
      ->envname("SERVE_NATS_TLS_KEY");
}

inline void AddBusFlags(CLI::App& app, Options& options, std::string& ns) {
  AddBusFlagsNoNamespace(app, options);
  app.add_option("--namespace", ns, "Namespace: prefix of every subject")
      ->envname("SERVE_NAMESPACE")
      ->capture_default_str();
}

}  // namespace serve::bus
