#pragma once

#include <map>
#include <string>
#include <vector>

#include "base/status.h"
#include "cli/client.h"
#include "cli/stop_signals.h"
#include "config/deployment_config.h"

namespace serve::cli {

// The deployment steps `serve deploy`, `serve delete` and `serve run` are made of. Each prints
// its progress on stdout and returns an error a person can act on.

// Checks the local code `config`'s native, command and python deployments name, before
// anything is started or uploaded: the file or directory exists and is of the right kind, and
// a command or python deployment's `artifact` is a tar the nodes can unpack (not compressed:
// see artifact::CheckTar). Paths are taken relative to `config_path`'s directory; digests are
// not checked here.
Status CheckLocalCode(const config::ConfigFile& config, const std::string& config_path);

// Applies what a python deployment's class asks for in its @deployment(...) decorator
// (num_replicas, max_concurrent_queries, the health-check and shutdown durations, as literal
// numbers) to the options the config file leaves out, printing a line per deployment it
// changes. The class's module is read from the local working_dir with Python's ast module
// (/usr/bin/python3; the code never runs), so a class whose module is elsewhere, or a machine
// without that interpreter, keeps Serve's defaults. Values the rules refuse are an error naming the
// decorator.
Status ApplyDecoratorOptions(config::ConfigFile& config, const std::string& config_path);

// Uploads the code of `config`'s native, command and python deployments to the checkpointer
// (once per digest) and replaces their local paths with the digests, printing a line per
// artifact. Paths are taken relative to `config_path`'s directory.
Status UploadCode(Client& client, config::ConfigFile& config, const std::string& config_path);

// What the controller accepted: the version each deployment is headed for, and which run of the
// controller accepted it.
struct Submitted {
  std::map<std::string, std::string> versions;  // by deployment name
  std::string controller_run;                   // empty from controllers that do not say
};

// Sends the deployments of `config` to the controller and prints its answer per deployment.
Result<Submitted> SubmitDeployments(Client& client, const config::ConfigFile& config);

// Follows the deployments of `config` until every one is HEALTHY at the version it was
// submitted for and every proxy routes to it, one line per change. Fails when one reaches
// DEPLOY_FAILED, when another deploy moves one to another version, when `timeout_s` passes, or
// when `stop` (if given) is requested. When a controller restarts meanwhile, its predecessor may
// not have stored the deploy: the deploy is sent again (it is idempotent).
Status WaitUntilHealthy(Client& client, const config::ConfigFile& config, Submitted submitted,
                        double timeout_s, StopSignals* stop = nullptr);

// Deletes `names` (all or none: an unknown name is an error) and prints "deleted NAME" each.
Status RequestDelete(Client& client, const std::vector<std::string>& names);

// Waits until the controller's route table leads to none of `names`, or `timeout_s` passes.
Status WaitUntilUnrouted(Client& client, const std::vector<std::string>& names, double timeout_s);

// The names of the deployments in `config`, in file order.
std::vector<std::string> DeploymentNames(const config::ConfigFile& config);

}  // namespace serve::cli
