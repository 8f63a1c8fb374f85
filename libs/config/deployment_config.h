#pragma once

// Deployment configuration: the options a user writes in a config file (YAML) for each
// deployment, parsed into plain structs and checked against the rules every service relies on.
//
// Option names and defaults follow Ray Serve (see DESIGN.md, "Deployments"):
//
//   deployments:
//     - name: hello
//       route_prefix: /hello
//       runtime: builtin:hello
//       num_replicas: 1
//       user_config: {message: "hello world"}
//       resources: {num_cpus: 0.5, num_gpus: 0, my_accel: 1}
//
// Every error is a value whose message names the file, the 1-based line and the option, and
// where it can, the fix: "config.yaml:4: deployment 'hello': num_replicas must be a whole
// number, got 'two'".

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace serve::config {

// What one replica of a deployment needs from a node. `custom` holds any other key given under
// `resources:` (an accelerator, say), by name.
struct Resources {
  double num_cpus = 1;
  double num_gpus = 0;
  std::map<std::string, double> custom;
};

struct Deployment {
  std::string name;
  std::string version;       // "" = not given.
  std::string route_prefix;  // ParseConfig fills in "/" + name when the file does not give one.
  std::string runtime;       // One of KnownRuntimes(), e.g. "builtin:hello".
  int num_replicas = 1;
  int max_concurrent_queries = 100;
  // `user_config` as compact JSON text; "" = not given (an absent or null `user_config`).
  std::string user_config_json;
  double health_check_period_s = 10;
  double health_check_timeout_s = 30;
  double graceful_shutdown_wait_loop_s = 2;
  double graceful_shutdown_timeout_s = 20;
  Resources resources;
  // The code, for `native`, `command` and `python`. In a config file `artifact` is the path of a
  // shared library and `working_dir` a directory, both relative to the file, uploaded by `serve
  // deploy`; on the bus `artifact` is the stored content's digest ("sha256:<64 hex>") and
  // `working_dir` is empty.
  std::string artifact;
  std::string artifact_name;  // what the digest was made from, for messages
  std::string working_dir;
  // `command`: the program and its arguments; it answers HTTP on $PORT.
  std::vector<std::string> command;
  std::string health_path;  // "" = any answer on PORT counts as healthy
  double startup_timeout_s = 60;
  // `python`: the class to serve, "module:attribute" as in Ray ("model:Iris"), and more
  // directories for sys.path (a virtualenv's site-packages; relative ones inside working_dir).
  std::string import_path;
  std::vector<std::string> python_path;
  // The options a config file gave for this deployment, by name (ParseConfig fills it in; it
  // does not travel on the bus): what a python class's @deployment(...) may not override.
  std::vector<std::string> given;
};

struct ConfigFile {
  std::vector<Deployment> deployments;
};

// Upper bounds on what a deployment may ask for: beyond them a value is a typo or an attack, and
// honouring it would make the controller track replicas without end or a worker hold
// megabytes per request. The defaults are the controller's; its flags (named in each message)
// change them. Widest() is the most any controller accepts: what a file is checked against
// before it is known which controller it goes to.
struct Limits {
  int max_replicas = 10'000;               // per deployment (--max-replicas-per-deployment)
  int max_concurrent_queries = 10'000;     // --max-concurrent-queries
  size_t max_user_config_bytes = 1 << 20;  // as compact JSON (--max-user-config-bytes)

  static Limits Widest();
};

// The most bytes of user_config (as JSON) runtime `command` can pass: it hands user_config to
// the command in the environment variable SERVE_USER_CONFIG, and Linux refuses to start a
// program with any one environment string longer than 128 KiB (MAX_ARG_STRLEN, counting the
// name, '=' and the terminating NUL).
inline constexpr size_t kMaxCommandUserConfigBytes = (128 << 10) - sizeof("SERVE_USER_CONFIG=");

// Parses a config file's text and checks it: every deployment with ValidateDeployment and the
// set with ValidateDeployments. `source_name` (normally the file's path) starts every error
// message. Never throws.
//
// Scalars in `user_config` keep the type YAML gives them (YAML 1.2 core schema): unquoted
// true/false are booleans, 12 an integer, 1.5 or 1e3 a number, null/~ null; quoted text, block
// text and words like `yes` or `on` stay strings.
struct ParseOptions {
  // An empty `deployments` list is a config of nothing (the REST API's "delete everything")
  // rather than an error.
  bool allow_empty = false;
  Limits limits;
};
Result<ConfigFile> ParseConfig(std::string_view yaml_text, const std::string& source_name,
                               ParseOptions options = {});

// The deployments in the config file's shape, as JSON text (`indent` < 0: one line), which
// ParseConfig reads back to the same deployments (YAML is a superset of JSON): every option,
// `user_config` as JSON, custom resources beside num_cpus and num_gpus; text options that are
// empty are left out.
std::string ConfigToJson(const ConfigFile& config, int indent = -1);
// The same as a YAML config file, for `serve config`: block style, text always quoted.
std::string ConfigToYaml(const ConfigFile& config);

// Reads the file at `path` and parses it with ParseConfig. An unreadable file is an error that
// names the path and the reason (e.g. "No such file or directory"). The CLI reads files with
// this before it knows the controller's limits, so it checks against Limits::Widest() unless
// told otherwise; the controller applies its own.
Result<ConfigFile> LoadConfigFile(const std::string& path,
                                  ParseOptions options = {.limits = Limits::Widest()});

// Checks one deployment's values. The controller also calls this for deployments that arrive
// over the bus, so messages make sense without a file:
// "deployment 'x': num_replicas must be >= 0, got -1".
Status ValidateDeployment(const Deployment& d, const Limits& limits = {});

// Checks each deployment with ValidateDeployment, then the set as a whole: no two deployments
// may share a name or a route_prefix. An empty set is valid.
Status ValidateDeployments(const std::vector<Deployment>& ds, const Limits& limits = {});

// The runtimes this build knows, in the order messages list them.
const std::vector<std::string>& KnownRuntimes();

// True for "sha256:" followed by 64 lowercase hex digits: how deployments refer to stored code.
bool IsArtifactDigest(std::string_view text);

// Checks what only a deployment arriving at the controller must satisfy: its code is referred
// to by digest (`serve deploy` uploads local files and fills the digest in).
Status ValidateArtifactReference(const Deployment& d);

}  // namespace serve::config
