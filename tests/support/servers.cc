#include "support/servers.h"

#include <cstdlib>
#include <filesystem>

namespace serve::testing {
namespace {

bool OnPath(const std::string& program) {
  return std::system(("command -v " + program + " >/dev/null 2>&1").c_str()) == 0;
}

}  // namespace

bool TestServersRequired() {
  const char* required = std::getenv("SERVE_REQUIRE_TEST_SERVERS");
  return required != nullptr && std::string(required) == "1";
}

RedisServer::RedisServer(std::string password)
    : password_(std::move(password)), available_(OnPath("redis-server")), port_(FreePort()) {
  if (available_) Start();
}

std::string RedisServer::uri(const std::string& path) const {
  std::string auth = password_.empty() ? "" : ":" + password_ + "@";
  return "redis://" + auth + "127.0.0.1:" + std::to_string(port_) + path;
}

void RedisServer::Start() {
  std::vector<std::string> argv = {"redis-server", "--port", std::to_string(port_), "--bind",
                                   "127.0.0.1", "--save", "", "--appendonly", "no",
                                   "--dir", dir_.path()};
  if (!password_.empty()) {
    argv.push_back("--requirepass");
    argv.push_back(password_);
  }
  process_ = Process(argv, dir_.path() + "/redis.log");
  WaitUntil([&] { return PortOpen(port_); });
}

void RedisServer::Stop() { process_.Kill(); }

S3Server::S3Server() : port_(FreePort()) {
  if (const char* path = std::getenv("SERVE_S3RVER"); path != nullptr && *path != '\0') {
    executable_ = path;
  } else {
    executable_ = (std::filesystem::current_path() / ".tools/node_modules/.bin/s3rver").string();
  }
  available_ = std::filesystem::exists(executable_);
  if (available_) Start();
}

std::string S3Server::uri(const std::string& prefix) const {
  return "s3://serve-test/" + prefix + "?endpoint=" + endpoint();
}

std::map<std::string, std::string> S3Server::Credentials() {
  return {{"AWS_ACCESS_KEY_ID", "S3RVER"}, {"AWS_SECRET_ACCESS_KEY", "S3RVER"},
          {"AWS_REGION", "us-east-1"}};
}

void S3Server::Start() {
  process_ = Process({executable_, "--directory", dir_.path(), "--port", std::to_string(port_),
                      "--address", "127.0.0.1", "--silent", "--configure-bucket", "serve-test"},
                     dir_.path() + "/s3rver.log",
                     // s3rver makes ListObjectsV2 continuation tokens with DES, which OpenSSL 3
                     // keeps in its legacy provider: without it a listing of more than one page
                     // fails with a 500.
                     {{"NODE_OPTIONS", "--openssl-legacy-provider"}});
  WaitUntil([&] { return PortOpen(port_); });
}

void S3Server::Stop() { process_.Kill(); }

}  // namespace serve::testing
