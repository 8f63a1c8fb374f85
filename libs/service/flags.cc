#include "service/flags.h"

#include <spdlog/fmt/fmt.h>

#include <cmath>

namespace serve::service {

CLI::Validator NumberIn(double min, double max, std::string why) {
  auto text = [](double number) { return fmt::format("{:g}", number); };
  std::string range = "from " + text(min) + " to " + text(max);
  return CLI::Validator(
      [range, min, max, why](std::string& value) -> std::string {
        double number = 0;
        if (!CLI::detail::lexical_cast(value, number) || !std::isfinite(number) || number < min ||
            number > max) {
          return "must be a number " + range + " (got '" + value + "')" +
                 (why.empty() ? "" : "; " + why);
        }
        return "";
      },
      "NUMBER " + range);
}

CLI::Validator IdFlag(std::string what) {
  return CLI::Validator(
      [what](std::string& value) -> std::string {
        Status valid = bus::ValidateId(value, what);
        return valid.ok() ? "" : valid.message();
      },
      "ID");
}

void AddCommonFlags(CLI::App& app, CommonFlags& flags) {
  bus::AddBusFlagsNoNamespace(app, flags.bus);
  app.add_option("--namespace", flags.ns, "Namespace: prefix of every subject")
      ->envname("SERVE_NAMESPACE")
      ->capture_default_str();
  app.add_option("--log-format", flags.log_format, "text or json")
      ->envname("SERVE_LOG_FORMAT")
      ->capture_default_str();
  app.add_option("--log-level", flags.log_level, "trace, debug, info, warn or error")
      ->envname("SERVE_LOG_LEVEL")
      ->capture_default_str();
  app.add_option("--log-file", flags.log_file,
                 "Write the log to this file, rotated by size, instead of stderr")
      ->envname("SERVE_LOG_FILE");
  app.add_option("--log-max-size-mb", flags.log_max_size_mb,
                 "Rotate the log file once it reaches this size")
      ->envname("SERVE_LOG_MAX_SIZE_MB")
      ->capture_default_str()
      ->check(NumberIn(0.01, 1e6));
  app.add_option("--log-max-files", flags.log_max_files,
                 "Rotated log files kept besides the current one (the oldest is dropped)")
      ->envname("SERVE_LOG_MAX_FILES")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  app.add_option("--metrics-name-prefix", flags.metrics_name_prefix,
                 "Starts every metric name instead of serve_ (ray_serve_ gives Ray Serve's "
                 "names, for its Grafana boards)")
      ->envname("SERVE_METRICS_NAME_PREFIX")
      ->capture_default_str();
}

}  // namespace serve::service
