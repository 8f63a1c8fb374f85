#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace serve::testing {

// A bounded HTTP load generator for integration tests: `clients` threads, each with its own
// keep-alive HTTP/1.1 connection to 127.0.0.1:port, send the same request in a loop until told
// to stop, the time bound passes or the request count bound is reached, whichever comes first.
// It keeps a summary of what came back: counts per status, the first failures in full, and
// counts per key that a caller-supplied extractor takes from each response (the "version" or
// "replica" of builtin:echo, say), with when each key was first and last seen.
//
// A request fails when it gets no HTTP answer (connect error, the connection closed, a
// malformed answer, no answer within `request_timeout`) or when `success` refuses its status.
// Every request has a timeout, so Stop() returns within about `request_timeout`.
//
// All methods are safe to call from any thread.
class LoadGenerator {
 public:
  using Clock = std::chrono::steady_clock;

  // One answer, as the extractor and the success check see it. status is 0 when there was no
  // HTTP answer at all; then `error` says why.
  struct Response {
    int status = 0;
    std::string body;
    std::string error;
  };

  struct Options {
    int port = 0;
    int clients = 8;
    std::string method = "GET";
    std::string target = "/";
    std::string body;
    // Bounds: the clients stop by themselves after `duration` or `max_requests` requests.
    std::chrono::milliseconds duration = std::chrono::seconds(45);
    uint64_t max_requests = 5'000'000;
    std::chrono::milliseconds request_timeout = std::chrono::seconds(10);
    // A pause between one answer and the next request of the same client; zero sends at once.
    std::chrono::microseconds pause{0};
    // Takes a key from each answer; an empty key is not counted. Called on client threads.
    std::function<std::string(const Response&)> key;
    // Decides whether an HTTP answer counts as a success; by default any 2xx.
    std::function<bool(int status)> success;
    // How many failures are kept in full (all are counted), and how much of each body.
    size_t max_recorded_failures = 50;
    size_t max_recorded_body = 512;
  };

  struct Failure {
    int client = 0;
    std::chrono::milliseconds sent_at{0};  // since the load started
    std::chrono::milliseconds took{0};
    int status = 0;  // 0: no HTTP answer
    std::string body;
    std::string error;
  };

  struct KeyStats {
    uint64_t count = 0;
    Clock::time_point first_sent;  // the send time of the first request that got this key
    Clock::time_point last_sent;   // ... and of the last one
  };

  struct Report {
    Clock::time_point started;
    std::chrono::milliseconds elapsed{0};
    uint64_t requests = 0;  // answered or failed
    uint64_t succeeded = 0;
    uint64_t failed = 0;
    uint64_t connections = 0;          // connections opened, reconnects included (when clients end)
    std::map<int, uint64_t> statuses;  // 0: no HTTP answer
    std::vector<Failure> failures;     // the first max_recorded_failures
    std::map<std::string, KeyStats> keys;

    // Keys of the requests sent at or after `since`.
    std::vector<std::string> KeysSentSince(Clock::time_point since) const;
    // "failed requests: N of M" and the rest of the summary, one line each.
    std::string Summary() const;
  };

  // Starts the clients at once.
  explicit LoadGenerator(Options options);
  // Stops the clients and waits for them.
  ~LoadGenerator();
  LoadGenerator(const LoadGenerator&) = delete;
  LoadGenerator& operator=(const LoadGenerator&) = delete;

  // What has come back so far.
  Report Snapshot() const;
  // Waits until `count` requests in all are done (or the clients stopped); true when they are.
  bool WaitForRequests(uint64_t count,
                       std::chrono::milliseconds timeout = std::chrono::seconds(20)) const;
  // Waits until `count` requests sent after this call are done (or the clients stopped).
  bool WaitForMoreRequests(uint64_t count,
                           std::chrono::milliseconds timeout = std::chrono::seconds(20)) const;
  // Tells the clients to stop, waits for their last requests and returns the final report.
  Report Stop();
  // True once every client has stopped (told to, or a bound was hit).
  bool Done() const { return running_clients_.load() == 0; }

 private:
  class Connection;
  void RunClient(int index);
  bool ShouldContinue();
  void Record(int client, Clock::time_point sent, const Response& response);

  Options options_;
  Clock::time_point started_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> issued_{0};
  std::atomic<int> running_clients_{0};
  mutable std::mutex mutex_;
  Report report_;  // GUARDED_BY(mutex_)
  std::vector<std::thread> threads_;
};

// Extractors for LoadGenerator::Options::key.
// The string value of a top-level field of a JSON body ("version", "replica"); "" otherwise.
std::function<std::string(const LoadGenerator::Response&)> JsonField(std::string name);
// The whole body.
std::function<std::string(const LoadGenerator::Response&)> WholeBody();

}  // namespace serve::testing
