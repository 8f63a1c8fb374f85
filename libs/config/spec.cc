#include "config/spec.h"

namespace serve::config {

wire::DeploymentSpecT ToSpec(const Deployment& d) {
  wire::DeploymentSpecT spec;
  spec.name = d.name;
  spec.version = d.version;
  spec.route_prefix = d.route_prefix;
  spec.runtime = d.runtime;
  spec.num_replicas = d.num_replicas;
  spec.max_concurrent_queries = d.max_concurrent_queries;
  spec.user_config = d.user_config_json;
  spec.health_check_period_s = d.health_check_period_s;
  spec.health_check_timeout_s = d.health_check_timeout_s;
  spec.graceful_shutdown_wait_loop_s = d.graceful_shutdown_wait_loop_s;
  spec.graceful_shutdown_timeout_s = d.graceful_shutdown_timeout_s;
  spec.artifact = d.artifact;
  spec.artifact_name = d.artifact_name;
  spec.command = d.command;
  spec.health_path = d.health_path;
  spec.startup_timeout_s = d.startup_timeout_s;
  spec.import_path = d.import_path;
  spec.python_path = d.python_path;
  spec.resources = std::make_unique<wire::ResourcesT>();
  spec.resources->num_cpus = d.resources.num_cpus;
  spec.resources->num_gpus = d.resources.num_gpus;
  for (const auto& [name, amount] : d.resources.custom) {
    auto resource = std::make_unique<wire::CustomResourceT>();
    resource->name = name;
    resource->amount = amount;
    spec.resources->custom.push_back(std::move(resource));
  }
  return spec;
}

Deployment FromSpec(const wire::DeploymentSpecT& spec) {
  Deployment d;
  d.name = spec.name;
  d.version = spec.version;
  d.route_prefix = spec.route_prefix;
  d.runtime = spec.runtime;
  d.num_replicas = spec.num_replicas;
  d.max_concurrent_queries = spec.max_concurrent_queries;
  d.user_config_json = spec.user_config;
  d.health_check_period_s = spec.health_check_period_s;
  d.health_check_timeout_s = spec.health_check_timeout_s;
  d.graceful_shutdown_wait_loop_s = spec.graceful_shutdown_wait_loop_s;
  d.graceful_shutdown_timeout_s = spec.graceful_shutdown_timeout_s;
  d.artifact = spec.artifact;
  d.artifact_name = spec.artifact_name;
  d.command = spec.command;
  d.health_path = spec.health_path;
  d.startup_timeout_s = spec.startup_timeout_s;
  d.import_path = spec.import_path;
  d.python_path = spec.python_path;
  if (spec.resources != nullptr) {
    d.resources.num_cpus = spec.resources->num_cpus;
    d.resources.num_gpus = spec.resources->num_gpus;
    for (const auto& resource : spec.resources->custom) {
      if (resource != nullptr) d.resources.custom[resource->name] = resource->amount;
    }
  }
  return d;
}

}  // namespace serve::config
