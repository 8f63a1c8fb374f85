#include "config/deployment_config.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <system_error>
#include <utility>

namespace serve::config {
namespace {

constexpr size_t kMaxNameLength = 63;
constexpr size_t kMaxVersionLength = 128;
// YAML anchors and aliases let a few lines describe a cycle or an exponentially large tree;
// converting that to JSON must stop with an error instead of exhausting the stack or memory.
constexpr int kMaxUserConfigDepth = 64;
constexpr size_t kMaxUserConfigValues = 100'000;
// YAML reads a key in flow style ({"key": ...}, as JSON writes it) only up to 1024 bytes with
// its quotes: a longer user_config key would make ConfigToJson's text (the REST API's answers,
// what `serve config --json` prints) unreadable to ParseConfig.
constexpr size_t kMaxUserConfigKeyJsonBytes = 1024;
// Custom resource names are keys in the same text; this bound keeps them well under that.
constexpr size_t kMaxResourceNameLength = 253;
// A config file is a few kilobytes; the cap keeps a mistaken path (/dev/zero, a model file)
// from being read into memory whole.
constexpr size_t kMaxConfigFileBytes = 16 << 20;
// Values quoted in messages are cut to this many bytes so binary junk stays readable.
constexpr size_t kMaxQuotedLength = 60;

constexpr std::string_view kStrTag = "tag:yaml.org,2002:str";

// ---------------------------------------------------------------------------------------------
// Formatting values for messages.

bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t extra = 0;
    uint32_t code = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      extra = 1;
      code = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2;
      code = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3;
      code = c & 0x07;
    } else {
      return false;
    }
    if (extra >= s.size() - i) return false;  // Truncated sequence.
    for (size_t k = 1; k <= extra; ++k) {
      const auto cont = static_cast<unsigned char>(s[i + k]);
      if ((cont & 0xC0) != 0x80) return false;
      code = (code << 6) | (cont & 0x3F);
    }
    // Reject overlong forms, UTF-16 surrogates and code points past U+10FFFF.
    static constexpr uint32_t kMinForLength[] = {0, 0x80, 0x800, 0x10000};
    if (code < kMinForLength[extra] || (code >= 0xD800 && code <= 0xDFFF) || code > 0x10FFFF) {
      return false;
    }
    i += extra + 1;
  }
  return true;
}

// 'value' in single quotes, with control bytes (and any bytes of invalid UTF-8) escaped as
// \xNN and long values cut short, so a message stays one readable line whatever the input.
std::string Quote(std::string_view value) {
  const bool utf8 = IsValidUtf8(value);
  std::string out = "'";
  size_t i = 0;
  for (; i < value.size() && i < kMaxQuotedLength; ++i) {
    const auto c = static_cast<unsigned char>(value[i]);
    if (c < 0x20 || c == 0x7F || (c >= 0x80 && !utf8)) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xF];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (i < value.size()) {
    // Finish a multi-byte character rather than cut it in half.
    while (utf8 && i < value.size() && (static_cast<unsigned char>(value[i]) & 0xC0) == 0x80) {
      out += value[i++];
    }
    if (i < value.size()) out += "...";
  }
  out += "'";
  return out;
}

std::string FormatNumber(double value) {
  char buffer[64];
  const auto [end, ec] = std::to_chars(buffer, buffer + sizeof(buffer), value);
  if (ec != std::errc()) return std::to_string(value);
  return std::string(buffer, end);
}

// 1-based line of a node, or 0 when yaml-cpp has no position for it.
int LineOf(const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  return mark.is_null() ? 0 : mark.line + 1;
}

// What a node is, for "got ..." in messages.
std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Scalar:
      return Quote(node.Scalar());
    default:
      return "null";
  }
}

// ---------------------------------------------------------------------------------------------
// "Did you mean" suggestions.

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> previous(b.size() + 1);
  std::vector<size_t> current(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) previous[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    current[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const bool same = std::tolower(static_cast<unsigned char>(a[i - 1])) ==
                        std::tolower(static_cast<unsigned char>(b[j - 1]));
      current[j] =
          std::min({previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (same ? 0 : 1)});
    }
    std::swap(previous, current);
  }
  return previous[b.size()];
}

// The known name `given` was most likely meant to be: a small edit away ("num_replica"), or
// the one known name that contains it ("replicas"). Empty when nothing is close.
std::string_view ClosestName(std::string_view given, const std::vector<std::string_view>& known) {
  constexpr size_t kMaxDistance = 2;
  constexpr size_t kMinContainedLength = 4;
  if (given.size() > 100) return {};  // Junk, not a typo; keep the quadratic step cheap.
  std::string_view best;
  size_t best_distance = kMaxDistance + 1;
  for (std::string_view name : known) {
    const size_t distance = EditDistance(given, name);
    if (distance < best_distance && distance < std::max(given.size(), name.size())) {
      best = name;
      best_distance = distance;
    }
  }
  if (!best.empty()) return best;
  if (given.size() < kMinContainedLength) return {};
  std::string_view containing;
  for (std::string_view name : known) {
    if (name.find(given) == std::string_view::npos) continue;
    if (!containing.empty()) return {};  // Ambiguous: say nothing rather than guess.
    containing = name;
  }
  return containing;
}

// ---------------------------------------------------------------------------------------------
// Scalars, typed the way YAML 1.2's core schema types plain (unquoted) scalars.

enum class ScalarType { kString, kNull, kBool, kInteger, kFloat };

struct TypedScalar {
  ScalarType type = ScalarType::kString;
  bool boolean = false;
  std::optional<int64_t> int64;    // kInteger whose value fits.
  std::optional<uint64_t> uint64;  // kInteger whose value fits.
  double number = 0;               // kInteger and kFloat; +-inf when out of range.
};

bool AllOf(std::string_view s, int (*predicate)(int)) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [predicate](char c) {
    return predicate(static_cast<unsigned char>(c)) != 0;
  });
}

int IsOctalDigit(int c) { return c >= '0' && c <= '7'; }

// [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?
bool LooksLikeFloat(std::string_view s) {
  size_t i = 0;
  auto digits = [&] {
    const size_t start = i;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
    return i - start;
  };
  if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
  const size_t whole = digits();
  if (i < s.size() && s[i] == '.') {
    ++i;
    if (digits() == 0 && whole == 0) return false;
  } else if (whole == 0) {
    return false;
  }
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
    if (digits() == 0) return false;
  }
  return i == s.size();
}

double ParseDouble(std::string_view s) {
  if (!s.empty() && s[0] == '+') s.remove_prefix(1);
  double value = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec == std::errc() && end == s.data() + s.size()) return value;
  // Out of range: strtod tells overflow (+-HUGE_VAL) from underflow (0) where from_chars does
  // not. The text was checked by LooksLikeFloat, so it is a plain number in the C locale.
  const std::string text(s);
  return std::strtod(text.c_str(), nullptr);
}

TypedScalar ResolvePlain(std::string_view s) {
  TypedScalar r;
  if (s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL") {
    r.type = ScalarType::kNull;
    return r;
  }
  if (s == "true" || s == "True" || s == "TRUE" || s == "false" || s == "False" || s == "FALSE") {
    r.type = ScalarType::kBool;
    r.boolean = s[0] == 't' || s[0] == 'T';
    return r;
  }
  const bool negative = s[0] == '-';
  const std::string_view unsigned_digits = s.substr(s[0] == '-' || s[0] == '+' ? 1 : 0);
  int base = 0;
  std::string_view digits;
  if (AllOf(unsigned_digits, std::isdigit)) {
    base = 10;
    digits = unsigned_digits;
  } else if (s.size() > 2 && s.substr(0, 2) == "0x" && AllOf(s.substr(2), std::isxdigit)) {
    base = 16;
    digits = s.substr(2);
  } else if (s.size() > 2 && s.substr(0, 2) == "0o" && AllOf(s.substr(2), IsOctalDigit)) {
    base = 8;
    digits = s.substr(2);
  }
  if (base != 0) {
    r.type = ScalarType::kInteger;
    uint64_t magnitude = 0;
    const auto [end, ec] =
        std::from_chars(digits.data(), digits.data() + digits.size(), magnitude, base);
    if (ec != std::errc()) {
      // Too large for 64 bits: keep decimal as an approximate number, like JSON parsers do.
      r.number = base == 10 ? ParseDouble(s) : std::numeric_limits<double>::infinity();
      return r;
    }
    constexpr uint64_t kInt64Max = std::numeric_limits<int64_t>::max();
    if (!negative) {
      r.uint64 = magnitude;
      if (magnitude <= kInt64Max) r.int64 = static_cast<int64_t>(magnitude);
      r.number = static_cast<double>(magnitude);
    } else if (magnitude <= kInt64Max + 1) {
      r.int64 = magnitude == kInt64Max + 1 ? std::numeric_limits<int64_t>::min()
                                           : -static_cast<int64_t>(magnitude);
      r.number = -static_cast<double>(magnitude);
    } else {
      r.number = ParseDouble(s);
    }
    return r;
  }
  if (LooksLikeFloat(s)) {
    r.type = ScalarType::kFloat;
    r.number = ParseDouble(s);
    return r;
  }
  std::string_view inf = s.substr(s[0] == '-' || s[0] == '+' ? 1 : 0);
  if (inf == ".inf" || inf == ".Inf" || inf == ".INF") {
    r.type = ScalarType::kFloat;
    r.number = negative ? -std::numeric_limits<double>::infinity()
                        : std::numeric_limits<double>::infinity();
    return r;
  }
  if (s == ".nan" || s == ".NaN" || s == ".NAN") {
    r.type = ScalarType::kFloat;
    r.number = std::numeric_limits<double>::quiet_NaN();
    return r;
  }
  return r;
}

// Quoted scalars ('x', "x"), block scalars (|, >) and !!str scalars are text whatever they
// look like; yaml-cpp tags the first two "!" and leaves plain scalars "?".
bool IsExplicitText(const YAML::Node& node) {
  return node.IsScalar() && (node.Tag() == "!" || node.Tag() == kStrTag);
}

TypedScalar Resolve(const YAML::Node& node) {
  if (node.IsNull()) {
    TypedScalar r;
    r.type = ScalarType::kNull;
    return r;
  }
  if (IsExplicitText(node)) return TypedScalar{};
  return ResolvePlain(node.Scalar());
}

// ---------------------------------------------------------------------------------------------
// The options a deployment may set, as one table: adding an option is adding a row here, a
// field in Deployment and, if it has rules, a check in FindProblem.

enum class OptionKind {
  kText,
  kWholeNumber,
  kNumber,
  kUserConfig,
  kResources,
  kCommand,
  kPythonPath,
};

struct OptionSpec {
  std::string_view name;
  OptionKind kind;
  std::string Deployment::*text_field = nullptr;
  int Deployment::*whole_number_field = nullptr;
  double Deployment::*number_field = nullptr;
};

constexpr OptionSpec kOptions[] = {
    {.name = "name", .kind = OptionKind::kText, .text_field = &Deployment::name},
    {.name = "version", .kind = OptionKind::kText, .text_field = &Deployment::version},
    {.name = "route_prefix", .kind = OptionKind::kText, .text_field = &Deployment::route_prefix},
    {.name = "runtime", .kind = OptionKind::kText, .text_field = &Deployment::runtime},
    {.name = "num_replicas",
     .kind = OptionKind::kWholeNumber,
     .whole_number_field = &Deployment::num_replicas},
    {.name = "max_concurrent_queries",
     .kind = OptionKind::kWholeNumber,
     .whole_number_field = &Deployment::max_concurrent_queries},
    {.name = "user_config", .kind = OptionKind::kUserConfig},
    {.name = "health_check_period_s",
     .kind = OptionKind::kNumber,
     .number_field = &Deployment::health_check_period_s},
    {.name = "health_check_timeout_s",
     .kind = OptionKind::kNumber,
     .number_field = &Deployment::health_check_timeout_s},
    {.name = "graceful_shutdown_wait_loop_s",
     .kind = OptionKind::kNumber,
     .number_field = &Deployment::graceful_shutdown_wait_loop_s},
    {.name = "graceful_shutdown_timeout_s",
     .kind = OptionKind::kNumber,
     .number_field = &Deployment::graceful_shutdown_timeout_s},
    {.name = "resources", .kind = OptionKind::kResources},
    {.name = "artifact", .kind = OptionKind::kText, .text_field = &Deployment::artifact},
    {.name = "working_dir", .kind = OptionKind::kText, .text_field = &Deployment::working_dir},
    {.name = "command", .kind = OptionKind::kCommand},
    {.name = "health_path", .kind = OptionKind::kText, .text_field = &Deployment::health_path},
    {.name = "startup_timeout_s",
     .kind = OptionKind::kNumber,
     .number_field = &Deployment::startup_timeout_s},
    {.name = "import_path", .kind = OptionKind::kText, .text_field = &Deployment::import_path},
    {.name = "python_path", .kind = OptionKind::kPythonPath},
};

// Ray Serve spells the health-check options with a leading underscore; accepting both lets a
// Ray user's config load unchanged.
struct Alias {
  std::string_view spelling;
  std::string_view option;
};
constexpr Alias kAliases[] = {
    {"_health_check_period_s", "health_check_period_s"},
    {"_health_check_timeout_s", "health_check_timeout_s"},
};

// Names that are not options here but that a Ray Serve user may well write, with the advice.
struct Hint {
  std::string_view spelling;
  std::string_view advice;
};
constexpr Hint kHints[] = {
    {"max_ongoing_requests",
     "did you mean 'max_concurrent_queries'? (Ray Serve's newer name for it)"},
    {"autoscaling_config", "autoscaling is not supported yet; set num_replicas instead"},
};

constexpr std::string_view kTopLevelKey = "deployments";

const OptionSpec* FindOption(std::string_view spelling) {
  for (const Alias& alias : kAliases) {
    if (alias.spelling == spelling) spelling = alias.option;
  }
  for (const OptionSpec& option : kOptions) {
    if (option.name == spelling) return &option;
  }
  return nullptr;
}

std::vector<std::string_view> OptionNames() {
  std::vector<std::string_view> names;
  for (const OptionSpec& option : kOptions) names.push_back(option.name);
  return names;
}

std::string UnknownOptionAdvice(std::string_view given) {
  for (const Hint& hint : kHints) {
    if (hint.spelling == given) return std::string(hint.advice);
  }
  std::vector<std::string_view> names = OptionNames();
  for (const Alias& alias : kAliases) names.push_back(alias.spelling);
  if (std::string_view closest = ClosestName(given, names); !closest.empty()) {
    return "did you mean '" + std::string(closest) + "'?";
  }
  std::string known;
  for (const OptionSpec& option : kOptions) {
    if (!known.empty()) known += ", ";
    known += option.name;
  }
  return "known options: " + known;
}

// ---------------------------------------------------------------------------------------------
// Value rules, shared by the file parser and ValidateDeployment.

// One broken rule: the option it concerns (for finding its line in a file) and what to say.
// The detail does not say which deployment; callers put that in front.
struct Problem {
  std::string option;  // "num_replicas", or "resources.<name>" for one resource.
  std::string detail;
};

bool IsNameChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_' || c == '-';
}

bool HasSpaceOrControl(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u <= 0x20 || u == 0x7F;
  });
}

std::string KnownRuntimesText() {
  std::string out;
  for (const std::string& runtime : KnownRuntimes()) {
    if (!out.empty()) out += ", ";
    out += runtime;
  }
  return out;
}

// Fixed bounds (the configurable ones are in Limits). A day is the longest duration: services
// turn durations into milliseconds and nanoseconds (8.64e13 ns fits in 63 bits, 8.64e7 ms in 31),
// so no timeout can overflow into an instant kill.
constexpr double kMaxDurationS = 86400;
constexpr double kMaxResourceAmount = 1e6;
// Replicas heartbeat every health_check_period_s: more often would have every replica flood the
// controller, and a check deadline shorter than a scheduler tick fails healthy replicas.
constexpr double kMinHealthCheckPeriodS = 0.05;
constexpr double kMinHealthCheckTimeoutS = 0.05;
// The proxy answers paths under /-/ itself (/-/healthz, /-/metrics, /-/routes).
constexpr std::string_view kReservedRoutePrefix = "/-";

// Reads user_config's JSON text without building it, and stops at the first key too long for
// YAML to read back (kMaxUserConfigKeyJsonBytes). Iterative: any depth is safe.
struct UserConfigKeyCheck : nlohmann::json_sax<nlohmann::json> {
  std::string overlong_key;

  bool key(string_t& key) override {
    size_t json_bytes =
        nlohmann::json(key).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).size();
    if (json_bytes <= kMaxUserConfigKeyJsonBytes) return true;
    overlong_key = key;
    return false;
  }
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return true; }
  bool end_object() override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return false;
  }
};

// `value` must be a finite number, at least `minimum` (above it, when `strict`) and at most
// `maximum`.
std::optional<Problem> CheckNumber(const std::string& option, double value, double minimum,
                                   bool strict, double maximum, const std::string& why = "") {
  if (std::isnan(value) || std::isinf(value)) {
    return Problem{option, option + " must be a finite number, got " + FormatNumber(value)};
  }
  if (!(strict ? value > minimum : value >= minimum)) {
    return Problem{option, option + " must be " + (strict ? "> " : ">= ") + FormatNumber(minimum) +
                               ", got " + FormatNumber(value) + why};
  }
  if (value > maximum) {
    return Problem{option, option + " must be at most " + FormatNumber(maximum) + ", got " +
                               FormatNumber(value)};
  }
  return std::nullopt;
}

// A dotted Python name: "model", "pkg.model", "Iris", "Outer.Inner".
bool IsDottedIdentifier(std::string_view text) {
  if (text.empty()) return false;
  bool at_start = true;
  for (char c : text) {
    if (c == '.') {
      if (at_start) return false;
      at_start = true;
      continue;
    }
    const auto u = static_cast<unsigned char>(c);
    if (!(std::isalpha(u) != 0 || c == '_' || (!at_start && std::isdigit(u) != 0))) return false;
    at_start = false;
  }
  return !at_start;
}

// runtime python: import_path names what to import, python_path where else to look.
std::optional<Problem> CheckPython(const Deployment& d) {
  if (d.import_path.empty()) {
    return Problem{"runtime",
                   "runtime python needs 'import_path:', the module and class to serve as "
                   "module:Class, e.g. import_path: \"model:Iris\" for class Iris in model.py "
                   "of working_dir"};
  }
  const size_t colon = d.import_path.find(':');
  if (colon == std::string::npos || !IsDottedIdentifier(d.import_path.substr(0, colon)) ||
      !IsDottedIdentifier(d.import_path.substr(colon + 1))) {
    return Problem{"import_path",
                   "import_path must be module:attribute with Python names, e.g. "
                   "\"model:Iris\" or \"app.models:Iris\", got " +
                       Quote(d.import_path)};
  }
  if (!d.command.empty() || !d.health_path.empty()) {
    return Problem{!d.command.empty() ? "command" : "health_path",
                   std::string(!d.command.empty() ? "command" : "health_path") +
                       " is for runtime command; runtime python runs import_path in the "
                       "replica itself"};
  }
  if (!d.artifact.empty() && !d.working_dir.empty()) {
    return Problem{"working_dir",
                   "give runtime python its code as 'working_dir' (a directory), not also "
                   "'artifact'"};
  }
  for (const std::string& entry : d.python_path) {
    if (entry.empty() || entry.find('\0') != std::string::npos || !IsValidUtf8(entry)) {
      return Problem{"python_path",
                     "python_path entries must be non-empty UTF-8 text without NUL bytes, got " +
                         Quote(entry)};
    }
    // Relative entries are inside the working directory, and stay there.
    if (entry[0] != '/') {
      const std::string_view path(entry);
      for (size_t start = 0; start <= path.size();) {
        size_t end = std::min(path.find('/', start), path.size());
        if (path.substr(start, end - start) == "..") {
          return Problem{"python_path", "python_path entry " + Quote(entry) +
                                            " leaves working_dir ('..'); give a path inside it, "
                                            "or an absolute path on the nodes"};
        }
        start = end + 1;
      }
    }
  }
  return std::nullopt;
}

std::optional<Problem> FindProblem(const Deployment& d, const Limits& limits) {
  // name
  if (d.name.empty()) {
    return Problem{"name",
                   "name is required; add e.g. 'name: my-app' (1 to 63 letters, digits, '_' "
                   "or '-')"};
  }
  if (d.name.size() > kMaxNameLength || !std::all_of(d.name.begin(), d.name.end(), IsNameChar) ||
      !std::isalnum(static_cast<unsigned char>(d.name[0]))) {
    return Problem{"name",
                   "name must be 1 to 63 letters, digits, '_' or '-', starting with a letter "
                   "or digit; got " +
                       Quote(d.name)};
  }
  // version
  if (d.version.size() > kMaxVersionLength) {
    return Problem{"version", "version must be at most 128 characters, got " +
                                  std::to_string(d.version.size())};
  }
  if (HasSpaceOrControl(d.version) || !IsValidUtf8(d.version)) {
    return Problem{"version",
                   "version must be UTF-8 text without whitespace, got " + Quote(d.version)};
  }
  // route_prefix
  const std::string& route = d.route_prefix;
  if (route.empty() || route[0] != '/') {
    return Problem{"route_prefix", "route_prefix must start with '/', got " + Quote(route) +
                                       (route.empty() ? "" : "; use " + Quote("/" + route))};
  }
  if (route.size() > 1 && route.back() == '/') {
    std::string fixed = route;
    while (fixed.size() > 1 && fixed.back() == '/') fixed.pop_back();
    return Problem{"route_prefix",
                   "route_prefix must not end with '/' (unless it is just '/'), "
                   "got " +
                       Quote(route) + "; use " + Quote(fixed)};
  }
  if (HasSpaceOrControl(route) || route.find_first_of("?#") != std::string::npos ||
      !IsValidUtf8(route)) {
    return Problem{
        "route_prefix",
        "route_prefix must be a URL path without whitespace, '?' or '#', got " + Quote(route)};
  }
  if (route == kReservedRoutePrefix ||
      route.rfind(std::string(kReservedRoutePrefix) + "/", 0) == 0) {
    return Problem{"route_prefix", "route_prefix " + Quote(route) +
                                       " is reserved: the proxy serves paths under /-/ itself "
                                       "(/-/healthz, /-/metrics, /-/routes); choose another"};
  }
  // runtime
  if (d.runtime.empty()) {
    return Problem{"runtime", "runtime is required; known runtimes: " + KnownRuntimesText()};
  }
  const std::vector<std::string>& runtimes = KnownRuntimes();
  if (std::find(runtimes.begin(), runtimes.end(), d.runtime) == runtimes.end()) {
    return Problem{"runtime", "runtime " + Quote(d.runtime) +
                                  " is not known; known runtimes: " + KnownRuntimesText()};
  }
  // Code.
  const bool is_builtin = d.runtime.rfind("builtin:", 0) == 0;
  if (is_builtin) {
    for (const auto& [option, given] :
         {std::pair<const char*, bool>{"artifact", !d.artifact.empty()},
          {"working_dir", !d.working_dir.empty()},
          {"command", !d.command.empty()},
          {"health_path", !d.health_path.empty()},
          {"import_path", !d.import_path.empty()},
          {"python_path", !d.python_path.empty()}}) {
      if (given) {
        return Problem{option, std::string(option) + " is for runtime native, command or python; " +
                                   d.runtime + " runs code built into Serve"};
      }
    }
  }
  if (d.runtime != "python") {
    for (const auto& [option, given] :
         {std::pair<const char*, bool>{"import_path", !d.import_path.empty()},
          {"python_path", !d.python_path.empty()}}) {
      if (given) {
        return Problem{option, std::string(option) + " is for runtime python; runtime " +
                                   d.runtime + " does not import Python modules"};
      }
    }
  }
  if (d.runtime == "python") {
    if (auto p = CheckPython(d)) return p;
  }
  if (d.runtime == "native") {
    if (d.artifact.empty()) {
      return Problem{"runtime",
                     "runtime native needs 'artifact:', the shared library built with "
                     "sdk/include/serve/deployment.h (e.g. artifact: ./build/libcounter.so)"};
    }
    if (!d.command.empty()) {
      return Problem{"command", "command is for runtime command; runtime native loads 'artifact'"};
    }
    if (!d.working_dir.empty()) {
      return Problem{"working_dir",
                     "working_dir is for runtime command or python; runtime native loads "
                     "'artifact'"};
    }
  }
  if (d.runtime == "command") {
    if (d.command.empty()) {
      return Problem{"runtime",
                     "runtime command needs 'command:', the program and its arguments, e.g. "
                     "command: [\"python3\", \"server.py\"]"};
    }
    for (const std::string& arg : d.command) {
      if (arg.empty() || arg.find('\0') != std::string::npos) {
        return Problem{"command", "command arguments must be non-empty text without NUL bytes"};
      }
    }
    if (!d.artifact.empty() && !d.working_dir.empty()) {
      return Problem{"working_dir",
                     "give runtime command its code as 'working_dir' (a directory), not also "
                     "'artifact'"};
    }
  }
  if (!d.health_path.empty() && (d.health_path[0] != '/' || HasSpaceOrControl(d.health_path))) {
    return Problem{"health_path",
                   "health_path must be a URL path starting with '/', got " + Quote(d.health_path)};
  }
  if (auto p = CheckNumber("startup_timeout_s", d.startup_timeout_s, 0, true, kMaxDurationS)) {
    return p;
  }
  // Counts.
  if (d.num_replicas < 0) {
    return Problem{"num_replicas",
                   "num_replicas must be >= 0, got " + std::to_string(d.num_replicas)};
  }
  if (d.num_replicas > limits.max_replicas) {
    return Problem{"num_replicas", "num_replicas must be at most " +
                                       std::to_string(limits.max_replicas) +
                                       " (serve-controller --max-replicas-per-deployment), got " +
                                       std::to_string(d.num_replicas)};
  }
  if (d.max_concurrent_queries < 1) {
    return Problem{"max_concurrent_queries", "max_concurrent_queries must be >= 1, got " +
                                                 std::to_string(d.max_concurrent_queries)};
  }
  if (d.max_concurrent_queries > limits.max_concurrent_queries) {
    return Problem{"max_concurrent_queries",
                   "max_concurrent_queries must be at most " +
                       std::to_string(limits.max_concurrent_queries) +
                       " (serve-controller --max-concurrent-queries), got " +
                       std::to_string(d.max_concurrent_queries)};
  }
  // user_config: text from the bus must be JSON too, since replicas parse it.
  // Its size first: a huge text is refused before it is parsed.
  if (d.user_config_json.size() > limits.max_user_config_bytes) {
    return Problem{"user_config", "user_config must be at most " +
                                      std::to_string(limits.max_user_config_bytes) +
                                      " bytes as JSON (serve-controller --max-user-config-bytes), "
                                      "got " +
                                      std::to_string(d.user_config_json.size())};
  }
  if (d.runtime == "command" && d.user_config_json.size() > kMaxCommandUserConfigBytes) {
    return Problem{"user_config",
                   "user_config must be at most " + std::to_string(kMaxCommandUserConfigBytes) +
                       " bytes as JSON for runtime command, got " +
                       std::to_string(d.user_config_json.size()) +
                       ": the command receives it in the environment variable "
                       "SERVE_USER_CONFIG, which Linux limits to 128 KiB; pass larger data as a "
                       "file in working_dir"};
  }
  if (!d.user_config_json.empty()) {
    UserConfigKeyCheck check;
    if (!nlohmann::json::sax_parse(d.user_config_json, &check) && check.overlong_key.empty()) {
      return Problem{"user_config",
                     "user_config must be JSON text, got " + Quote(d.user_config_json)};
    }
    if (!check.overlong_key.empty()) {
      return Problem{"user_config", "user_config keys may have at most " +
                                        std::to_string(kMaxUserConfigKeyJsonBytes) +
                                        " bytes as JSON text (YAML reads no longer key back), "
                                        "got " +
                                        Quote(check.overlong_key)};
    }
  }
  // Durations.
  if (auto p = CheckNumber("health_check_period_s", d.health_check_period_s, kMinHealthCheckPeriodS,
                           false, kMaxDurationS, " (every replica heartbeats this often)")) {
    return p;
  }
  if (auto p = CheckNumber("health_check_timeout_s", d.health_check_timeout_s,
                           kMinHealthCheckTimeoutS, false, kMaxDurationS)) {
    return p;
  }
  // A replica heartbeats once a period: a deadline no longer than that passes between two
  // heartbeats of a healthy replica, and every replica would be restarted over and over.
  if (d.health_check_timeout_s <= d.health_check_period_s) {
    return Problem{"health_check_timeout_s",
                   "health_check_timeout_s must be longer than health_check_period_s (got " +
                       FormatNumber(d.health_check_timeout_s) + " and " +
                       FormatNumber(d.health_check_period_s) +
                       "): a replica heartbeats once a period, so a shorter deadline declares "
                       "healthy replicas unhealthy; use at least twice the period, e.g. " +
                       FormatNumber(2 * d.health_check_period_s)};
  }
  if (auto p = CheckNumber("graceful_shutdown_wait_loop_s", d.graceful_shutdown_wait_loop_s, 0,
                           false, kMaxDurationS)) {
    return p;
  }
  if (auto p = CheckNumber("graceful_shutdown_timeout_s", d.graceful_shutdown_timeout_s, 0, false,
                           kMaxDurationS)) {
    return p;
  }
  // Resources.
  if (auto p =
          CheckNumber("resources.num_cpus", d.resources.num_cpus, 0, false, kMaxResourceAmount)) {
    return p;
  }
  if (auto p =
          CheckNumber("resources.num_gpus", d.resources.num_gpus, 0, false, kMaxResourceAmount)) {
    return p;
  }
  for (const auto& [name, amount] : d.resources.custom) {
    if (name.empty() || HasSpaceOrControl(name) || !IsValidUtf8(name)) {
      return Problem{"resources",
                     "resource names must be non-empty UTF-8 text without "
                     "whitespace, got " +
                         Quote(name)};
    }
    if (name.size() > kMaxResourceNameLength) {
      return Problem{"resources", "resource names must be at most " +
                                      std::to_string(kMaxResourceNameLength) + " bytes, got " +
                                      std::to_string(name.size()) + " bytes in " + Quote(name)};
    }
    if (auto p = CheckNumber("resources." + name, amount, 0, false, kMaxResourceAmount)) return p;
  }
  return std::nullopt;
}

std::string DeploymentLabel(const std::string& name) {
  return name.empty() ? "unnamed deployment" : "deployment " + Quote(name);
}

// Where a deployment came from in a file, so set-level errors can point at both lines.
struct Origin {
  int line = 0;                             // The deployment's "- " item.
  std::map<std::string, int> option_lines;  // Line of each option given, by option name.

  int Line(const std::string& option) const {
    auto it = option_lines.find(option);
    return it == option_lines.end() ? line : it->second;
  }
};

// No two deployments may share a name or a route_prefix. With `origins` (one per deployment)
// the message points into `source`; without, it names deployments by position.
Status CheckUnique(const std::vector<Deployment>& ds, const std::vector<Origin>* origins,
                   const std::string& source) {
  auto where = [&](size_t i, const std::string& option) {
    if (origins == nullptr) return "#" + std::to_string(i + 1);
    return "line " + std::to_string((*origins)[i].Line(option));
  };
  auto fail = [&](size_t i, const std::string& option, const std::string& message,
                  ErrorKind kind = ErrorKind::kInvalid) {
    if (origins == nullptr) return Status::Error(message, kind);
    return Status::Error(source + ":" + std::to_string((*origins)[i].Line(option)) + ": " +
                             message,
                         kind);
  };
  std::map<std::string, size_t> by_name;
  std::map<std::string, size_t> by_route;
  for (size_t i = 0; i < ds.size(); ++i) {
    auto [named, name_is_new] = by_name.emplace(ds[i].name, i);
    if (!name_is_new) {
      return fail(i, "name",
                  "deployment name " + Quote(ds[i].name) + " is used twice (" +
                      where(named->second, "name") + " and " + where(i, "name") +
                      "); deployment names must be unique");
    }
    auto [routed, route_is_new] = by_route.emplace(ds[i].route_prefix, i);
    if (!route_is_new) {
      auto describe = [&](size_t k) {
        std::string text = DeploymentLabel(ds[k].name) + " (" + where(k, "route_prefix");
        if (origins != nullptr && (*origins)[k].option_lines.count("route_prefix") == 0) {
          text += ", the default for its name";
        }
        return text + ")";
      };
      return fail(i, "route_prefix",
                  "route_prefix " + Quote(ds[i].route_prefix) + " is used by both " +
                      describe(routed->second) + " and " + describe(i) +
                      "; give each deployment its own route_prefix",
                  ErrorKind::kConflict);
    }
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// The file parser.

class Parser {
 public:
  Parser(const std::string& source, ParseOptions options) : source_(source), options_(options) {}

  Result<ConfigFile> Parse(std::string_view text) {
    const std::string yaml(text);
    YAML::Node root;
    try {
      Result<DocumentSummary> summary = SummarizeDocuments(yaml);
      if (!summary.ok()) return summary.status();
      if (summary->content_documents == 0) {
        return Fail(1,
                    "the file has no content; it needs a 'deployments' list, e.g. "
                    "'deployments: [{name: hello, runtime: builtin:hello}]'");
      }
      if (summary->content_documents > 1 || !summary->first_document_has_content) {
        return Fail(summary->second_content_line,
                    "found a second YAML document (after '---'); put every deployment in the "
                    "one 'deployments' list");
      }
      root = YAML::Load(yaml);
    } catch (const YAML::Exception& e) {
      std::string where = source_;
      if (!e.mark.is_null()) {
        where += ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1);
      }
      return Status::Error(where + ": invalid YAML: " + e.msg);
    }
    try {
      return ParseRoot(root);
    } catch (const YAML::Exception& e) {
      // Node accessors throw only on misuse; turn a bug here into an error, not a crash.
      return Fail(e.mark.is_null() ? 1 : e.mark.line + 1, "could not read the file: " + e.msg);
    }
  }

 private:
  Status Fail(int line, const std::string& message) const {
    return Status::Error(source_ + ":" + std::to_string(std::max(line, 1)) + ": " + message);
  }

  struct DocumentSummary {
    int content_documents = 0;  // Documents that are more than an empty or null node.
    bool first_document_has_content = false;
    int second_content_line = 0;  // Line of the first content after the first document.
  };

  // Notes where each document starts and whether it holds anything but a null.
  struct DocumentWatcher : public YAML::EventHandler {
    void OnDocumentStart(const YAML::Mark& mark) override { document_start = mark; }
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
    void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override { Content(mark); }
    void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                  const std::string&) override {
      Content(mark);
    }
    void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                         YAML::EmitterStyle::value) override {
      Content(mark);
    }
    void OnSequenceEnd() override {}
    void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                    YAML::EmitterStyle::value) override {
      Content(mark);
    }
    void OnMapEnd() override {}

    void Content(const YAML::Mark& mark) {
      if (!has_content) content_start = mark;
      has_content = true;
    }

    YAML::Mark document_start;
    YAML::Mark content_start;
    bool has_content = false;
  };

  // Walks the YAML stream's documents without building them, to tell one document from
  // several. yaml-cpp 0.7's LoadAll never returns on some invalid input (a stray ',' outside
  // [...] or {...} yields empty documents forever without consuming it), so this walk stops
  // once there are more documents than the text has room for: every document after the first
  // needs a 3-character '---' or '...'. Throws YAML::Exception on syntax errors.
  Result<DocumentSummary> SummarizeDocuments(const std::string& yaml) const {
    std::istringstream in(yaml);
    YAML::Parser parser(in);
    DocumentWatcher watcher;
    DocumentSummary summary;
    for (size_t documents = 0; parser.HandleNextDocument(watcher); ++documents) {
      if (documents > yaml.size() / 3 + 1) {
        const YAML::Mark& at = watcher.document_start;
        return Status::Error(source_ + ":" + std::to_string(at.line + 1) + ":" +
                             std::to_string(at.column + 1) +
                             ": invalid YAML: cannot parse past this point (a stray ',' "
                             "outside [...] or {...}?)");
      }
      if (!watcher.has_content) continue;
      ++summary.content_documents;
      if (documents == 0) {
        summary.first_document_has_content = true;
      } else if (summary.second_content_line == 0) {
        summary.second_content_line = watcher.content_start.line + 1;
      }
      watcher.has_content = false;
    }
    return summary;
  }

  Result<ConfigFile> ParseRoot(const YAML::Node& root) {
    if (!root.IsMap()) {
      std::string message =
          "the top level must be a mapping with a 'deployments' list, got " + Describe(root);
      if (root.IsSequence()) {
        message += "; put 'deployments:' on the first line and indent the list under it";
      }
      return Fail(LineOf(root), message);
    }
    std::optional<YAML::Node> deployments;
    int deployments_line = 0;
    for (const auto& entry : root) {
      const YAML::Node& key = entry.first;
      const std::string name = key.IsScalar() ? key.Scalar() : std::string();
      if (name != kTopLevelKey) {
        std::string message =
            "unknown top-level key " + (key.IsScalar() ? Quote(name) : Describe(key));
        if (ClosestName(name, {kTopLevelKey}) == kTopLevelKey) {
          message += "; did you mean 'deployments'?";
        } else {
          message += "; the only top-level key is 'deployments'";
        }
        return Fail(LineOf(key), message);
      }
      if (deployments) {
        return Fail(LineOf(key), "'deployments' is given twice (lines " +
                                     std::to_string(deployments_line) + " and " +
                                     std::to_string(LineOf(key)) + "); merge the two lists");
      }
      deployments = entry.second;
      deployments_line = LineOf(key);
    }
    if (!deployments) {
      return Fail(LineOf(root),
                  "no 'deployments' list; add 'deployments:' followed by at "
                  "least one deployment");
    }
    if (deployments->IsNull() || (deployments->IsSequence() && deployments->size() == 0)) {
      if (options_.allow_empty) return ConfigFile{};
      return Fail(deployments_line,
                  "no deployments listed under 'deployments'; add at least one, e.g. "
                  "'- {name: hello, runtime: builtin:hello}'");
    }
    if (!deployments->IsSequence()) {
      return Fail(deployments_line,
                  "'deployments' must be a list (each item starting with '- '), got " +
                      Describe(*deployments));
    }

    ConfigFile file;
    std::vector<Origin> origins;
    size_t index = 0;
    for (const YAML::Node& item : *deployments) {
      Deployment d;
      Origin origin;
      origin.line = LineOf(item) > 0 ? LineOf(item) : deployments_line;
      if (Status s = ParseDeployment(item, index, &d, &origin); !s.ok()) return s;
      if (std::optional<Problem> p = FindProblem(d, options_.limits)) {
        return Fail(origin.Line(p->option), Label(d.name, index) + ": " + p->detail);
      }
      file.deployments.push_back(std::move(d));
      origins.push_back(std::move(origin));
      ++index;
    }
    if (Status s = CheckUnique(file.deployments, &origins, source_); !s.ok()) return s;
    return file;
  }

  // "deployment 'hello'", or "deployment #2" while it has no usable name.
  static std::string Label(const std::string& name, size_t index) {
    return name.empty() ? "deployment #" + std::to_string(index + 1) : DeploymentLabel(name);
  }

  Status ParseDeployment(const YAML::Node& item, size_t index, Deployment* d, Origin* origin) {
    if (!item.IsMap()) {
      return Fail(origin->line, "deployment #" + std::to_string(index + 1) +
                                    " must be a mapping of options (name: ..., runtime: ...), "
                                    "got " +
                                    Describe(item));
    }
    // Messages about any option name the deployment, wherever its `name:` line is.
    std::string label = Label("", index);
    for (const auto& entry : item) {
      if (entry.first.IsScalar() && entry.first.Scalar() == "name" && entry.second.IsScalar()) {
        label = Label(entry.second.Scalar(), index);
      }
    }

    std::map<std::string_view, std::string> spelled;  // Option -> how the file spelled it.
    for (const auto& entry : item) {
      const YAML::Node& key = entry.first;
      const YAML::Node& value = entry.second;
      const int line = LineOf(key) > 0 ? LineOf(key) : origin->line;
      if (!key.IsScalar()) {
        return Fail(line, label + ": option names must be plain words, got " + Describe(key));
      }
      const std::string& spelling = key.Scalar();
      const OptionSpec* option = FindOption(spelling);
      if (option == nullptr) {
        if (spelling == "<<") {
          return Fail(line, label +
                                ": YAML merge keys ('<<') are not supported; write the "
                                "options out in each deployment");
        }
        return Fail(line, label + ": unknown option " + Quote(spelling) + "; " +
                              UnknownOptionAdvice(spelling));
      }
      const std::string option_name(option->name);
      if (auto [previous, is_new] = spelled.emplace(option->name, spelling); !is_new) {
        const std::string also =
            previous->second == spelling ? "" : " (as " + Quote(previous->second) + ")";
        return Fail(line, label + ": " + option_name + " is given twice" + also + ", on lines " +
                              std::to_string(origin->option_lines[option_name]) + " and " +
                              std::to_string(line) + "; keep one");
      }
      origin->option_lines[option_name] = line;
      d->given.push_back(option_name);
      const std::string where = label + ": " + option_name;

      switch (option->kind) {
        case OptionKind::kText:
          if (!value.IsScalar()) {
            return Fail(line, where + " must be text, got " + Describe(value));
          }
          d->*(option->text_field) = value.Scalar();
          break;
        case OptionKind::kWholeNumber: {
          Result<int> number = ParseWholeNumber(value, where);
          if (!number.ok()) return Fail(line, number.error());
          d->*(option->whole_number_field) = *number;
          break;
        }
        case OptionKind::kNumber: {
          Result<double> number = ParseNumber(value, where);
          if (!number.ok()) return Fail(line, number.error());
          d->*(option->number_field) = *number;
          break;
        }
        case OptionKind::kUserConfig:
          if (Status s = ParseUserConfig(value, line, where, d); !s.ok()) return s;
          break;
        case OptionKind::kResources:
          if (Status s = ParseResources(value, line, label, d, origin); !s.ok()) return s;
          break;
        case OptionKind::kCommand:
          if (!value.IsSequence()) {
            return Fail(line, where + " must be a list of the program and its arguments, e.g. "
                                      "[\"python3\", \"server.py\"], got " +
                                  Describe(value));
          }
          for (const auto& arg : value) {
            if (!arg.IsScalar()) {
              return Fail(line, where + ": every argument must be text, got " + Describe(arg));
            }
            d->command.push_back(arg.Scalar());
          }
          break;
        case OptionKind::kPythonPath:
          if (!value.IsSequence()) {
            return Fail(line, where +
                                  " must be a list of directories, e.g. "
                                  "[\"venv/lib/python3.11/site-packages\"], got " +
                                  Describe(value));
          }
          for (const auto& entry : value) {
            if (!entry.IsScalar()) {
              return Fail(line, where + ": every entry must be text, got " + Describe(entry));
            }
            d->python_path.push_back(entry.Scalar());
          }
          break;
      }
    }
    if (origin->option_lines.count("route_prefix") == 0 && !d->name.empty()) {
      d->route_prefix = "/" + d->name;
    }
    return Status::Ok();
  }

  // A quoted "3" is text in YAML; say so, since the fix (drop the quotes) is not obvious.
  static std::string QuotedNumberAdvice(const YAML::Node& value) {
    if (IsExplicitText(value)) {
      const ScalarType type = ResolvePlain(value.Scalar()).type;
      if (type == ScalarType::kInteger || type == ScalarType::kFloat) {
        return " (quoted, so it is text); remove the quotes";
      }
    }
    return "";
  }

  static Result<int> ParseWholeNumber(const YAML::Node& value, const std::string& where) {
    const TypedScalar scalar = Resolve(value);
    if (scalar.type != ScalarType::kInteger) {
      return Status::Error(where + " must be a whole number, got " + Describe(value) +
                           QuotedNumberAdvice(value));
    }
    if (!scalar.int64 || *scalar.int64 > std::numeric_limits<int>::max() ||
        *scalar.int64 < std::numeric_limits<int>::min()) {
      return Status::Error(where + " is out of range, got " + Describe(value));
    }
    return static_cast<int>(*scalar.int64);
  }

  static Result<double> ParseNumber(const YAML::Node& value, const std::string& where) {
    const TypedScalar scalar = Resolve(value);
    if (scalar.type != ScalarType::kInteger && scalar.type != ScalarType::kFloat) {
      return Status::Error(where + " must be a number, got " + Describe(value) +
                           QuotedNumberAdvice(value));
    }
    if (!std::isfinite(scalar.number)) {
      return Status::Error(where + " must be a finite number, got " + Describe(value));
    }
    return scalar.number;
  }

  Status ParseResources(const YAML::Node& value, int line, const std::string& label, Deployment* d,
                        Origin* origin) {
    if (!value.IsMap()) {
      return Fail(line, label +
                            ": resources must be a mapping of resource name to amount, "
                            "e.g. {num_cpus: 1, num_gpus: 0}, got " +
                            Describe(value));
    }
    for (const auto& entry : value) {
      const YAML::Node& key = entry.first;
      const int key_line = LineOf(key) > 0 ? LineOf(key) : line;
      if (!key.IsScalar()) {
        return Fail(key_line,
                    label + ": resources: resource names must be text, got " + Describe(key));
      }
      const std::string field = "resources." + key.Scalar();
      if (auto [previous, is_new] = origin->option_lines.emplace(field, key_line); !is_new) {
        return Fail(key_line, label + ": " + field + " is given twice, on lines " +
                                  std::to_string(previous->second) + " and " +
                                  std::to_string(key_line) + "; keep one");
      }
      Result<double> amount = ParseNumber(entry.second, label + ": " + field);
      if (!amount.ok()) return Fail(key_line, amount.error());
      if (key.Scalar() == "num_cpus") {
        d->resources.num_cpus = *amount;
      } else if (key.Scalar() == "num_gpus") {
        d->resources.num_gpus = *amount;
      } else {
        d->resources.custom[key.Scalar()] = *amount;
      }
    }
    return Status::Ok();
  }

  Status ParseUserConfig(const YAML::Node& value, int line, const std::string& where,
                         Deployment* d) {
    // A null user_config is the same as none: Ray Serve treats `user_config: null` that way,
    // and replicas then get no reconfigure call.
    if (value.IsNull()) {
      d->user_config_json.clear();
      return Status::Ok();
    }
    // ordered_json keeps the keys in the order the file gives them, for people reading it back.
    nlohmann::ordered_json json;
    size_t values = 0;
    if (Status s = ToJson(value, 0, line, where, &values, &json); !s.ok()) return s;
    try {
      d->user_config_json = json.dump();
    } catch (const nlohmann::ordered_json::exception&) {
      return Fail(line, where +
                            " contains text that is not valid UTF-8; config files must be "
                            "UTF-8");
    }
    return Status::Ok();
  }

  Status ToJson(const YAML::Node& node, int depth, int parent_line, const std::string& where,
                size_t* values, nlohmann::ordered_json* out) {
    const int line = LineOf(node) > 0 ? LineOf(node) : parent_line;
    if (depth > kMaxUserConfigDepth) {
      return Fail(line, where + " is nested more than " + std::to_string(kMaxUserConfigDepth) +
                            " levels deep (a YAML alias that refers to itself?)");
    }
    if (++*values > kMaxUserConfigValues) {
      return Fail(line, where + " has more than " + std::to_string(kMaxUserConfigValues) +
                            " values once YAML aliases are expanded; make it smaller");
    }
    if (node.IsSequence()) {
      *out = nlohmann::ordered_json::array();
      for (const YAML::Node& element_node : node) {
        nlohmann::ordered_json element;
        if (Status s = ToJson(element_node, depth + 1, line, where, values, &element); !s.ok()) {
          return s;
        }
        out->push_back(std::move(element));
      }
      return Status::Ok();
    }
    if (node.IsMap()) {
      *out = nlohmann::ordered_json::object();
      std::map<std::string, int> key_lines;
      for (const auto& entry : node) {
        const YAML::Node& key = entry.first;
        const int key_line = LineOf(key) > 0 ? LineOf(key) : line;
        // JSON object keys are text; a plain 1 or true as a key is fine as "1" or "true".
        if (!key.IsScalar()) {
          return Fail(key_line, where + " keys must be text, got " + Describe(key));
        }
        if (auto [previous, is_new] = key_lines.emplace(key.Scalar(), key_line); !is_new) {
          return Fail(key_line, where + " has key " + Quote(key.Scalar()) + " twice, on lines " +
                                    std::to_string(previous->second) + " and " +
                                    std::to_string(key_line) + "; keep one");
        }
        const size_t key_json_bytes =
            nlohmann::ordered_json(key.Scalar())
                .dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace)
                .size();
        if (key_json_bytes > kMaxUserConfigKeyJsonBytes) {
          return Fail(key_line, where + " has a key of " + std::to_string(key_json_bytes) +
                                    " bytes as JSON text, " + Quote(key.Scalar()) +
                                    "; keys may have at most " +
                                    std::to_string(kMaxUserConfigKeyJsonBytes) +
                                    " (YAML reads no longer key back): shorten it, or make the "
                                    "long text a value");
        }
        nlohmann::ordered_json element;
        if (Status s = ToJson(entry.second, depth + 1, key_line, where, values, &element);
            !s.ok()) {
          return s;
        }
        (*out)[key.Scalar()] = std::move(element);
      }
      return Status::Ok();
    }
    const TypedScalar scalar = Resolve(node);
    switch (scalar.type) {
      case ScalarType::kNull:
        *out = nullptr;
        break;
      case ScalarType::kBool:
        *out = scalar.boolean;
        break;
      case ScalarType::kString:
        *out = node.Scalar();
        break;
      case ScalarType::kInteger:
      case ScalarType::kFloat:
        if (scalar.int64) {
          *out = *scalar.int64;
        } else if (scalar.uint64) {
          *out = *scalar.uint64;
        } else if (std::isfinite(scalar.number)) {
          *out = scalar.number;
        } else {
          return Fail(line, where + ": " + Describe(node) +
                                " is not a finite number, which JSON cannot hold; quote it to "
                                "keep it as text");
        }
        break;
    }
    return Status::Ok();
  }

  const std::string& source_;
  const ParseOptions options_;
};

}  // namespace

const std::vector<std::string>& KnownRuntimes() {
  // Adding a runtime is adding its name here (and its implementation in the replica).
  static const std::vector<std::string> kRuntimes = {"builtin:hello", "builtin:echo", "native",
                                                     "command", "python"};
  return kRuntimes;
}

bool IsArtifactDigest(std::string_view text) {
  constexpr std::string_view kPrefix = "sha256:";
  if (text.size() != kPrefix.size() + 64 || text.substr(0, kPrefix.size()) != kPrefix) {
    return false;
  }
  return std::all_of(text.begin() + kPrefix.size(), text.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

Status ValidateArtifactReference(const Deployment& d) {
  if (!d.artifact.empty() && !IsArtifactDigest(d.artifact)) {
    return Status::Error(DeploymentLabel(d.name) + ": artifact must be the digest of stored " +
                         "code (\"sha256:<64 hex digits>\"), got " + Quote(d.artifact) +
                         "; `serve deploy FILE` uploads local files and fills it in");
  }
  if (!d.working_dir.empty()) {
    return Status::Error(DeploymentLabel(d.name) +
                         ": working_dir is a local path; upload it with `serve deploy FILE`, "
                         "which sends its digest as 'artifact'");
  }
  return Status::Ok();
}

Result<ConfigFile> ParseConfig(std::string_view yaml_text, const std::string& source_name,
                               ParseOptions options) {
  return Parser(source_name, options).Parse(yaml_text);
}

Limits Limits::Widest() {
  Limits widest;
  widest.max_replicas = 1'000'000;
  widest.max_concurrent_queries = 1'000'000;
  widest.max_user_config_bytes = 64 << 20;
  return widest;
}

Result<ConfigFile> LoadConfigFile(const std::string& path, ParseOptions options) {
  auto error = [&path](const std::string& why) {
    return Status::Error("cannot read config file '" + path + "': " + why);
  };
  struct Closer {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  std::unique_ptr<std::FILE, Closer> file(std::fopen(path.c_str(), "rb"));
  if (file == nullptr) return error(std::generic_category().message(errno));
  std::string text;
  char buffer[1 << 16];
  size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof(buffer), file.get())) > 0) {
    text.append(buffer, n);
    if (text.size() > kMaxConfigFileBytes) {
      return error("larger than " + std::to_string(kMaxConfigFileBytes >> 20) +
                   " MiB; is this the right file?");
    }
  }
  if (std::ferror(file.get())) return error(std::generic_category().message(errno));
  return ParseConfig(text, path, options);
}

Status ValidateDeployment(const Deployment& d, const Limits& limits) {
  if (std::optional<Problem> p = FindProblem(d, limits)) {
    return Status::Error(DeploymentLabel(d.name) + ": " + p->detail);
  }
  return Status::Ok();
}

Status ValidateDeployments(const std::vector<Deployment>& ds, const Limits& limits) {
  for (const Deployment& d : ds) {
    if (Status s = ValidateDeployment(d, limits); !s.ok()) return s;
  }
  return CheckUnique(ds, nullptr, "");
}

std::string ConfigToJson(const ConfigFile& config, int indent) {
  using Json = nlohmann::ordered_json;
  Json list = Json::array();
  for (const Deployment& d : config.deployments) {
    Json item = Json::object();
    for (const OptionSpec& option : kOptions) {
      std::string name(option.name);
      switch (option.kind) {
        case OptionKind::kText:
          if (!(d.*option.text_field).empty()) item[name] = d.*option.text_field;
          break;
        case OptionKind::kWholeNumber:
          item[name] = d.*option.whole_number_field;
          break;
        case OptionKind::kNumber:
          item[name] = d.*option.number_field;
          break;
        case OptionKind::kUserConfig:
          if (!d.user_config_json.empty()) {
            Json value = Json::parse(d.user_config_json, nullptr, /*allow_exceptions=*/false);
            if (!value.is_discarded()) item[name] = std::move(value);
          }
          break;
        case OptionKind::kResources: {
          Json resources = {{"num_cpus", d.resources.num_cpus},
                            {"num_gpus", d.resources.num_gpus}};
          for (const auto& [resource, amount] : d.resources.custom) resources[resource] = amount;
          item[name] = std::move(resources);
          break;
        }
        case OptionKind::kCommand:
          if (!d.command.empty()) item[name] = d.command;
          break;
        case OptionKind::kPythonPath:
          if (!d.python_path.empty()) item[name] = d.python_path;
          break;
      }
    }
    list.push_back(std::move(item));
  }
  return Json{{std::string(kTopLevelKey), std::move(list)}}.dump(
      indent, ' ', /*ensure_ascii=*/false, Json::error_handler_t::replace);
}

namespace {

// Emits `value` as block YAML that ParseConfig reads back to the same value: text always double
// quoted (so "12", "true" or "yes" stay text), numbers in their shortest exact form.
void EmitYaml(YAML::Emitter& out, const nlohmann::ordered_json& value) {
  if (value.is_object()) {
    out << YAML::BeginMap;
    for (const auto& [key, item] : value.items()) {
      out << YAML::Key << YAML::DoubleQuoted << key << YAML::Value;
      EmitYaml(out, item);
    }
    out << YAML::EndMap;
  } else if (value.is_array()) {
    out << YAML::BeginSeq;
    for (const auto& item : value) EmitYaml(out, item);
    out << YAML::EndSeq;
  } else if (value.is_string()) {
    out << YAML::DoubleQuoted << value.get<std::string>();
  } else if (value.is_null()) {
    out << YAML::Null;
  } else if (value.is_boolean()) {
    out << value.get<bool>();
  } else {
    out << value.dump();  // a number, as JSON writes it: the shortest exact form
  }
}

}  // namespace

std::string ConfigToYaml(const ConfigFile& config) {
  auto json = nlohmann::ordered_json::parse(ConfigToJson(config));
  YAML::Emitter out;
  out.SetIndent(2);
  // Option names need no quotes; only values and user_config keys get them.
  out << YAML::BeginMap << YAML::Key << std::string(kTopLevelKey) << YAML::Value << YAML::BeginSeq;
  for (const auto& deployment : json[std::string(kTopLevelKey)]) {
    out << YAML::BeginMap;
    for (const auto& [option, value] : deployment.items()) {
      out << YAML::Key << option << YAML::Value;
      EmitYaml(out, value);
    }
    out << YAML::EndMap;
  }
  out << YAML::EndSeq << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace serve::config
