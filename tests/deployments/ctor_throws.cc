// A deployment whose constructor throws, as one does when its model file is missing.
#include <serve/deployment.h>

#include <stdexcept>

class CtorThrows {
 public:
  explicit CtorThrows(const serve::Config&) {
    throw std::runtime_error("model file missing on purpose");
  }
  serve::Response operator()(const serve::Request&) { return {200, "unreachable"}; }
};

SERVE_DEPLOYMENT(CtorThrows)
