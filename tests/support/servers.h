#pragma once

// Real servers the checkpoint stores talk to, started by tests on free ports: Debian's
// redis-server and the npm package s3rver (which `./dev` installs under .tools/).

#include <string>

#include "support/process.h"

namespace serve::testing {

// True when a test needing `what` should fail rather than skip: `./dev test` sets
// SERVE_REQUIRE_TEST_SERVERS=1, so a missing server there is a broken setup, not a choice.
bool TestServersRequired();

class RedisServer {
 public:
  // `password`: started with --requirepass when not empty.
  explicit RedisServer(std::string password = "");
  bool available() const { return available_; }  // false: redis-server is not installed
  int port() const { return port_; }
  std::string uri(const std::string& path = "/0") const;
  void Stop();
  void Start();  // again, on the same port and data

 private:
  std::string password_;
  bool available_ = false;
  int port_;
  TempDir dir_;
  Process process_;
};

// s3rver with a bucket "serve-test"; it accepts the credentials S3RVER / S3RVER.
class S3Server {
 public:
  S3Server();
  bool available() const { return available_; }  // false: s3rver is not installed
  int port() const { return port_; }
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
  // s3://serve-test/<prefix>?endpoint=...
  std::string uri(const std::string& prefix) const;
  // The environment a store needs to reach it.
  static std::map<std::string, std::string> Credentials();
  void Stop();
  void Start();

 private:
  std::string executable_;
  bool available_ = false;
  int port_;
  TempDir dir_;
  Process process_;
};

}  // namespace serve::testing
