#pragma once

#include <string>
#include <utility>
#include <variant>

namespace serve {

// What kind of failure an error is, for callers that answer with a code (the REST API's HTTP
// status). Most errors are bad input; the other kinds are named where they arise.
enum class ErrorKind {
  kInvalid,      // the input breaks a rule (400)
  kNotFound,     // it names something that does not exist (404)
  kConflict,     // it collides with something that exists (409)
  kUnavailable,  // not now; the same request may succeed later (503)
};

// The outcome of an operation that can fail. An error carries a message meant for a person:
// it names what failed and, where it can, how to fix it. Errors are values; nothing in the
// services throws across a module boundary.
class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status Ok() { return Status(); }
  static Status Error(std::string message, ErrorKind kind = ErrorKind::kInvalid) {
    return Status(std::move(message), true, kind);
  }

  bool ok() const { return !failed_; }
  const std::string& message() const { return message_; }
  ErrorKind kind() const { return kind_; }  // meaningful only for an error

  // Returns this error with `context` put in front, e.g. "reading config.yaml: ...".
  Status WithContext(const std::string& context) const {
    return ok() ? *this : Error(context + ": " + message_, kind_);
  }

 private:
  Status(std::string message, bool failed, ErrorKind kind)
      : message_(std::move(message)), failed_(failed), kind_(kind) {}
  std::string message_;
  bool failed_ = false;
  ErrorKind kind_ = ErrorKind::kInvalid;
};

// Either a value or the error that prevented it.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::move(value)) {}  // NOLINT: implicit on purpose
  Result(Status error) : state_(std::move(error)) {}  // NOLINT: implicit on purpose

  bool ok() const { return std::holds_alternative<T>(state_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(state_);
  }
  const std::string& error() const { return status().message(); }

  T& value() & { return std::get<T>(state_); }
  const T& value() const& { return std::get<T>(state_); }
  T&& value() && { return std::get<T>(std::move(state_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> state_;
};

}  // namespace serve
