#include <gtest/gtest.h>

#include "replica/command_runtime.h"

TEST(CommandRuntimeTest, Placeholder) {}
