// libs/config's loader: ParseConfig on any text (a config file, or the REST API's body), with
// every rule of ValidateDeployments. A config it accepts must also survive what the services
// do with it next: the conversion to and from the bus's DeploymentSpec, and ConfigToJson and
// ConfigToYaml (`serve config`, the REST API's answers), whose text must parse back to the same
// deployments.

#include "config/deployment_config.h"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "config/spec.h"

namespace config = serve::config;

namespace {

void Fail(const char* what, const std::string& detail) {
  fprintf(stderr, "%s: %s\n", what, detail.c_str());
  abort();
}

void CheckReadsBack(const config::ConfigFile& parsed, const std::string& text, const char* form) {
  auto again = config::ParseConfig(text, form, {.allow_empty = true, .limits = {}});
  if (!again.ok()) Fail(form, "does not parse back: " + again.error() + "\n" + text);
  if (config::ConfigToJson(*again) != config::ConfigToJson(parsed)) {
    Fail(form, "parses back to other deployments:\n" + text);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto parsed = config::ParseConfig(text, "fuzz.yaml", {.allow_empty = true, .limits = {}});
  if (!parsed.ok()) {
    if (parsed.error().rfind("fuzz.yaml", 0) != 0) Fail("error", "does not name the file");
    return 0;
  }
  if (!config::ValidateDeployments(parsed->deployments).ok()) {
    Fail("ParseConfig", "accepted deployments ValidateDeployments refuses");
  }
  // The bus carries everything but working_dir, which `serve deploy` replaces with the
  // artifact of its contents before sending.
  config::ConfigFile through_spec;
  config::ConfigFile without_working_dir = *parsed;
  for (config::Deployment& d : without_working_dir.deployments) {
    d.working_dir.clear();
    through_spec.deployments.push_back(config::FromSpec(config::ToSpec(d)));
  }
  if (config::ConfigToJson(through_spec) != config::ConfigToJson(without_working_dir)) {
    Fail("DeploymentSpec", "ToSpec/FromSpec changed the deployments:\n" +
                               config::ConfigToJson(without_working_dir) + "\n" +
                               config::ConfigToJson(through_spec));
  }
  CheckReadsBack(*parsed, config::ConfigToJson(*parsed), "ConfigToJson");
  CheckReadsBack(*parsed, config::ConfigToYaml(*parsed), "ConfigToYaml");
  return 0;
}
