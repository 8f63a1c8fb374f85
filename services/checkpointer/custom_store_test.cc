#include <gtest/gtest.h>

TEST(Placeholdercustomstore, Builds) {}
