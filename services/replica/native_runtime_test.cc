#include <gtest/gtest.h>

#include "replica/native_runtime.h"

TEST(NativeRuntimeTest, Placeholder) {}
