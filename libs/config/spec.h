#pragma once

#include "config/deployment_config.h"
#include "wire/serve_generated.h"

namespace serve::config {

// Conversions between a deployment as a config file states it and as the bus carries it.
wire::DeploymentSpecT ToSpec(const Deployment& deployment);
Deployment FromSpec(const wire::DeploymentSpecT& spec);

}  // namespace serve::config
