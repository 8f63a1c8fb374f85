#pragma once

// The command-line side of service.h, apart because CLI11 is header-only and costly to compile:
// only the executables' main.cc include it.

#include <CLI/CLI.hpp>
#include <string>

#include "bus/flags.h"
#include "service/service.h"

namespace serve::service {

void AddCommonFlags(CLI::App& app, CommonFlags& flags);

// Checks a numeric flag: a finite number from `min` to `max`. Not CLI::Range, which lets NaN
// through (every comparison with NaN is false): a NaN period or timeout would stall whatever it
// measures. `why`, when given, ends the error: what the bound protects.
CLI::Validator NumberIn(double min, double max, std::string why = "");

// Checks an id flag (--node-id, --proxy-id, --controller-id) with bus::ValidateId.
CLI::Validator IdFlag(std::string what);

}  // namespace serve::service
